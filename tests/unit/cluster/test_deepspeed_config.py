"""DeepSpeed passthrough: `deepspeed.config` (a file or an inline mapping) is merged over the
generated config; the fields distill owns must agree with the spec (one line naming both
fields otherwise); gradient accumulation and ZeRO-3 parameter offload come from the spec."""

from __future__ import annotations

import json

import pytest

from distill.cluster.deepspeed_config import deepspeed_config, generated_config
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec, load_spec_dict
from distill.jobs import cli
from distill.jobs.preflight import preflight, resolve_deepspeed


def _spec(**deepspeed):
    return load_spec_dict({"deepspeed": deepspeed, "training": {"batch_size": 16}})


def test_an_inline_mapping_is_merged_over_the_generated_config():
    user = {
        "zero_optimization": {"reduce_bucket_size": 5e7, "overlap_comm": False},
        "activation_checkpointing": {"partition_activations": True},
        "optimizer": {"params": {"betas": [0.9, 0.98]}},
    }
    config = deepspeed_config(_spec(config=user), 100)
    assert config["zero_optimization"] == {
        "stage": 2,
        "reduce_bucket_size": 5e7,
        "overlap_comm": False,
    }
    assert config["activation_checkpointing"] == {"partition_activations": True}
    assert config["optimizer"]["params"]["betas"] == [0.9, 0.98]
    assert config["optimizer"]["params"]["lr"] == 2e-4  # the rest of the section stays
    assert "train_batch_size" not in config


def test_without_a_user_config_the_generated_one_is_used_as_is():
    spec = _spec()
    assert deepspeed_config(spec, 10) == generated_config(spec, 10)


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (
            {"train_micro_batch_size_per_gpu": 8},
            "deepspeed.config.train_micro_batch_size_per_gpu: 8 conflicts with training.batch_size (16 gives 16)",
        ),
        (
            {"bf16": {"enabled": True}},
            "deepspeed.config.bf16.enabled: True conflicts with deepspeed.precision ('fp32' gives False)",
        ),
        (
            {"zero_optimization": {"stage": 3}},
            "deepspeed.config.zero_optimization.stage: 3 conflicts with deepspeed.zero_stage (2 gives 2)",
        ),
        (
            {"gradient_accumulation_steps": 4},
            "deepspeed.config.gradient_accumulation_steps: 4 conflicts with training.gradient_accumulation_steps",
        ),
        (
            {"train_batch_size": 64},
            "deepspeed.config.train_batch_size: 64 is not training.batch_size x training.gradient_accumulation_steps x scaling.num_workers = 32",
        ),
    ],
)
def test_a_conflict_on_a_field_distill_owns_is_one_line(user, message):
    with pytest.raises(SpecError) as err:
        deepspeed_config(_spec(config=user), 100)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_owned_fields_that_agree_are_accepted():
    user = {
        "train_micro_batch_size_per_gpu": 16,
        "train_batch_size": 32,
        "bf16": {"enabled": False},
    }
    config = deepspeed_config(_spec(config=user), 100)
    assert config["train_batch_size"] == 32 and config["bf16"] == {"enabled": False}


def test_gradient_accumulation_and_parameter_offload_come_from_the_spec():
    spec = load_spec(
        None,
        [
            "training.gradient_accumulation_steps=4",
            "deepspeed.zero_stage=3",
            "deepspeed.offload_parameters=true",
        ],
    )
    config = deepspeed_config(spec, 10)
    assert config["gradient_accumulation_steps"] == 4
    assert config["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": False}
    with pytest.raises(
        SpecError, match="^deepspeed.offload_parameters: needs deepspeed.zero_stage 3"
    ):
        deepspeed_config(_spec(offload_parameters=True), 10)


def test_an_optimizer_offload_in_the_user_config_drops_torch_adam():
    user = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}
    config = deepspeed_config(_spec(config=user), 10)
    assert "torch_adam" not in config["optimizer"]["params"]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_preflight_reads_the_file_into_the_spec(tmp_path, suffix):
    user = {"zero_optimization": {"allgather_bucket_size": 1000000}}
    path = tmp_path / f"ds{suffix}"
    path.write_text(json.dumps(user))  # JSON is YAML too
    spec = resolve_deepspeed(load_spec(None, [f"deepspeed.config={path}"]))
    assert spec.deepspeed.config == user
    assert deepspeed_config(spec, 10)["zero_optimization"]["allgather_bucket_size"] == 1000000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "file not found"),
        ("[1, 2]", "expected a JSON object, got list"),
        ("{not json", "invalid JSON"),
    ],
)
def test_an_unusable_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "ds.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SpecError, match=f"^deepspeed.config {path}: {message}"):
        resolve_deepspeed(load_spec(None, [f"deepspeed.config={path}"]))


def test_accumulation_counts_in_the_rows_one_step_needs(teacher_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"line {i} of the corpus" for i in range(100)) + "\n")
    sets = [f"teacher.name={teacher_dir}", f"data.train.path={corpus}", "student.layers=2"]
    sets += ["training.batch_size=16", "training.gradient_accumulation_steps=4"]
    with pytest.raises(SpecError, match="x 2 workers x 4 accumulated"):
        preflight(load_spec(None, sets))
    sets += ["training.batch_size=4", "training.gradient_accumulation_steps=2", "training.epochs=2"]
    epochs = preflight(load_spec(None, sets))
    assert epochs.training.steps == 2 * 95 // (4 * 2 * 2)  # 95 train rows after the eval split


def test_run_refuses_a_conflicting_config_before_ray(tmp_path, capsys):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"fp16": {"enabled": True}}))
    assert cli.main(["run", "--set", f"deepspeed.config={path}"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("distill: error: deepspeed.config.fp16.enabled: True conflicts")


_ENGINE_WITHOUT_THE_OP = """
import os, sys, torch, torch.distributed as dist
dist.init_process_group("gloo", rank=0, world_size=1)
import deepspeed
from deepspeed.accelerator import get_accelerator
from distill.cluster.deepspeed_config import skip_inference_comm_op
assert get_accelerator().create_op_builder("ShareMemCommBuilder") is not None  # CPU: it exists
if sys.argv[1] == "skip":
    skip_inference_comm_op()
model = torch.nn.Linear(4, 2)
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={
    "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2},
    "optimizer": {"type": "AdamW", "params": {"lr": 0.1, "torch_adam": True}}})
before = model.weight.detach().clone()
loss = engine(torch.ones(2, 4)).sum()
engine.backward(loss)
engine.step()
import deepspeed.comm.comm as ds_comm
print("OP", ds_comm.cdb.shm_comm_op is not None, "MOVED", bool((model.weight != before).any()))
"""


def test_a_worker_engine_trains_without_building_the_shared_memory_op(tmp_path):
    """skip_inference_comm_op: a ZeRO engine initialises and steps with the op absent, and
    nothing is compiled into an empty extensions folder (the build itself takes 80 s here,
    so the opposite case is shown only by the op being available before the skip)."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29731",
        "DS_ACCELERATOR": "cpu",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", _ENGINE_WITHOUT_THE_OP, "skip"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OP False MOVED True" in out.stdout
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").rglob("*.so"))
