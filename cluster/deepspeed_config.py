"""DeepSpeed config from the job spec.

`train_batch_size` is left out on purpose: DeepSpeed derives it from the micro-batch,
accumulation and world size, so the same spec runs on any worker count.
"""

from __future__ import annotations

from distill.core.spec import JobSpec


def deepspeed_config(spec: JobSpec, total_steps: int) -> dict:
    t, ds = spec.training, spec.deepspeed
    warmup = min(t.warmup_steps, max(total_steps - 1, 0))
    zero: dict = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        if ds.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer: needs zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.zero_stage == 3:
        # Gather full weights on save so the exported student is a plain fp32 model.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "initial_scale_power": 12},
        "optimizer": {
            "type": "AdamW",
            # torch_adam avoids JIT-building FusedAdam; offload needs DeepSpeed's CPUAdam.
            "params": {
                "lr": t.learning_rate,
                "weight_decay": t.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                **({} if ds.offload_optimizer else {"torch_adam": True}),
            },
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                # No warm-up (warmup_steps 0, which DeepSpeed refuses): one step that
                # already starts at the full learning rate.
                "warmup_min_lr": t.learning_rate if warmup == 0 else 0.0,
                "warmup_max_lr": t.learning_rate,
                "warmup_num_steps": max(warmup, 1),
                "total_num_steps": max(total_steps, 1),
                "warmup_type": "linear",
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
