"""Adapts `distill_core` to Ray Train, DeepSpeed ZeRO and run storage."""
