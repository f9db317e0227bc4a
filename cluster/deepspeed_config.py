"""DeepSpeed config from the job spec, with the user's own config merged over it.

`train_batch_size` is left out on purpose: DeepSpeed derives it from the micro-batch,
accumulation and world size, so the same spec runs on any worker count.

`deepspeed.config` (a JSON/YAML file, read by `load_user_config`, or an inline mapping) is
deep-merged over the generated config, so any DeepSpeed setting can be passed through
(communication buckets, offload details, activation checkpointing, another optimizer or
scheduler). The fields distill itself reads or derives (`OWNED`: batch sizes, gradient
accumulation, the ZeRO stage, precision, gradient clipping) must agree with the spec: a
different value is one `SpecError` naming the field and the spec field that sets it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from distill.core.spec import JobSpec, SpecError
from distill.core.spec_loading import parse_yaml_mapping

# DeepSpeed config field (dotted) -> the spec field that sets it.
OWNED = {
    "train_micro_batch_size_per_gpu": "training.batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "zero_optimization.stage": "deepspeed.zero_stage",
    "bf16.enabled": "deepspeed.precision",
    "fp16.enabled": "deepspeed.precision",
    "gradient_clipping": "training.grad_clip",
}
_OFFLOADED = ("cpu", "nvme")


def generated_config(spec: JobSpec, total_steps: int) -> dict:
    """The DeepSpeed config distill writes from the spec alone."""
    t, ds = spec.training, spec.deepspeed
    warmup = min(t.warmup_steps, max(total_steps - 1, 0))
    zero: dict = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        if ds.zero_stage == 0:
            raise SpecError("deepspeed.offload_optimizer: needs deepspeed.zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.offload_parameters:
        if ds.zero_stage != 3:
            raise SpecError("deepspeed.offload_parameters: needs deepspeed.zero_stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if ds.zero_stage == 3:
        # Gather full weights on save so the exported student is a plain fp32 model.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
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


def load_user_config(path: str) -> dict:
    """A `deepspeed.config` file (JSON, or YAML) as a mapping; every way it can be unusable
    is one SpecError naming `deepspeed.config`."""
    file = Path(path).expanduser()
    where = f"deepspeed.config {path}"
    if not file.is_file():
        raise SpecError(f"{where}: file not found" + (" (a folder)" if file.is_dir() else ""))
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{where}: cannot read it ({type(exc).__name__})") from None
    if file.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{where}: invalid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        return raw
    return parse_yaml_mapping(text, where)


def deepspeed_config(spec: JobSpec, total_steps: int) -> dict:
    """The engine's config: the generated one with `deepspeed.config` merged over it."""
    config = generated_config(spec, total_steps)
    user = spec.deepspeed.config
    if user is None:
        return config
    if isinstance(user, str):
        user = load_user_config(user)
    check_owned(user, config, spec)
    merged = _merge(config, user)
    params = merged.get("optimizer", {}).get("params", {})
    offloaded = (merged["zero_optimization"].get("offload_optimizer") or {}).get("device")
    if offloaded in _OFFLOADED and "torch_adam" not in _get(user, "optimizer.params", {}):
        params.pop("torch_adam", None)  # offload runs DeepSpeed's CPUAdam
    return merged


def check_owned(user: dict, generated: dict, spec: JobSpec) -> None:
    """Every field distill owns that `user` sets must equal what the spec gives, and a
    `train_batch_size` must equal micro-batch x accumulation x workers."""
    for field, owner in OWNED.items():
        value = _get(user, field, _MISSING)
        if value is _MISSING:
            continue
        ours = _get(generated, field)
        if value != ours:
            raise SpecError(
                f"deepspeed.config.{field}: {value!r} conflicts with {owner} "
                f"({_spec_value(spec, owner)!r} gives {ours!r}); set {owner} instead"
            )
    if "train_batch_size" in user:
        t = spec.training
        total = t.batch_size * t.gradient_accumulation_steps * spec.scaling.num_workers
        if user["train_batch_size"] != total:
            raise SpecError(
                f"deepspeed.config.train_batch_size: {user['train_batch_size']!r} is not "
                f"training.batch_size x training.gradient_accumulation_steps x "
                f"scaling.num_workers = {total}; leave it out (DeepSpeed derives it)"
            )


_MISSING = object()


def _get(tree: dict, dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _spec_value(spec: JobSpec, dotted: str) -> Any:
    node: Any = spec
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def skip_inference_comm_op() -> None:
    """Keep DeepSpeed from building its CPU shared-memory communication op on this process.

    On the CPU accelerator, every `deepspeed.initialize` (through `deepspeed.comm`'s
    `TorchBackend`) JIT-compiles `deepspeed_shm_comm` with ninja, or loads it from
    `~/.cache/torch_extensions`. Only `inference_all_reduce` uses it (DeepSpeed's tensor-
    parallel inference layers); ZeRO training and a ZeRO-3 teacher's gathers use
    torch.distributed (gloo) and never call it. The compile took 80 s on 2 cores in the
    first run on a machine, and again whenever another virtual environment had built it
    last (its build file names the environment's include paths). Marking the op
    incompatible makes DeepSpeed skip it, as it does on an accelerator without it.
    `tests/unit/cluster/test_deepspeed_config.py` checks DeepSpeed then builds nothing."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
