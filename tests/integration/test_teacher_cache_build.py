"""Integration: the teacher-output cache built by a real Ray Data job (2 teacher actors),
streamed by 2 Ray Train + DeepSpeed workers, hit by a second run without loading the
teacher, on a local folder and on S3 (moto); a teacher actor that dies mid-build is
restarted and the manifest still covers every row."""

from __future__ import annotations

import json
import os
import sys

import pytest
import ray.cloudpickle
import torch
from helpers.s3_fixtures import list_keys, s3_client

from distill.cluster.cache_store import CACHE_DIR, build_cache, resolve_cache
from distill.cluster.storage import LocalStorage, open_storage
from distill.cluster.teacher_inference import TeacherInference
from distill.core.cache_format import MANIFEST_FILE
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the dying actor below

SMALL = [
    "student.layers=2",
    "training.steps=6",
    "training.batch_size=8",
    "training.log_every=2",
    "training.eval_every=6",
    "training.checkpoint_every=6",
    "training.warmup_steps=1",
    "training.learning_rate=5e-4",
    "data.max_length=32",
    "data.max_train_samples=96",
    "data.max_eval_samples=16",
    "evaluation.throughput_texts=16",
    "evaluation.throughput_rounds=1",
    "teacher.cache.mode=auto",
    "teacher.inference.actors=2",
    "teacher.inference.rows_per_shard=32",
    "teacher.inference.batch_size=16",
]


@pytest.mark.slow(
    reason=(
        "two jobs (about 63 s): a two-actor Ray Data cache build streamed by two workers, then "
        "a second run that hits the cache; the default causal-LM job builds and streams a cache"
    )
)
def test_two_actors_build_two_workers_stream_and_a_second_run_hits(ray_session, tmp_path):
    first_dir = tmp_path / "first"
    first = run_job(load_spec(None, SMALL), str(first_dir))
    cache = first["teacher_cache"]
    assert cache["used"] and not cache["hit"] and cache["actors"] == 2
    folder = first_dir / CACHE_DIR / cache["key"]
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    train_shards = manifest["splits"]["train"]["shards"]
    assert manifest["splits"]["train"]["rows"] == 96 and len(train_shards) >= 3  # 32-row calls
    assert all((folder / s["file"]).is_file() for s in train_shards)
    history = [json.loads(x) for x in (first_dir / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"]
    # The training workers never loaded the teacher: a weightless skeleton stood in for it.
    assert first["teacher"]["placement"]["partition"] == "cache"
    assert first["teacher"]["placement"]["parameters_per_rank"] == [0, 0]

    # A second run elsewhere reads the first run's cache: a hit, no Ray Data build.
    second = run_job(
        load_spec(
            None, SMALL + [f"teacher.cache.location={first_dir}", "teacher.cache.mode=required"]
        ),
        str(tmp_path / "second"),
    )
    assert second["teacher_cache"]["hit"] and second["teacher_cache"]["key"] == cache["key"]
    assert not (tmp_path / "second" / CACHE_DIR).exists()
    # Same rows, same teacher targets, same seed: the same training.
    assert second["training"]["final_loss"] == pytest.approx(
        first["training"]["final_loss"], rel=1e-4
    )


def test_required_cache_that_is_missing_stops_before_training(tmp_path):
    spec = load_spec(
        None, SMALL + ["teacher.cache.mode=required", f"teacher.cache.location={tmp_path}"]
    )
    with pytest.raises(
        SpecError, match="teacher.cache: mode required, but .* holds no complete cache"
    ):
        run_job(spec, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "train").exists()


class _DiesOnce(TeacherInference):
    """A teacher actor whose process dies on its first batch (once per test folder)."""

    def __call__(self, batch):
        marker = os.path.join(os.path.dirname(self.storage.uri.rstrip("/")), "died")
        if not os.path.exists(marker):
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            open(marker, "w").close()
            os._exit(1)
        return super().__call__(batch)


@pytest.mark.slow(
    reason=(
        "a Ray Data cache build whose teacher actor dies and is restarted; the default "
        "causal-LM job builds a cache with Ray Data"
    )
)
def test_a_teacher_actor_that_dies_is_restarted_and_the_cache_completes(ray_session, tmp_path):
    spec = load_spec(None, SMALL)
    storage = LocalStorage(tmp_path / "run")
    request, reason = resolve_cache(spec, storage)
    assert reason is None and not request.hit
    info = build_cache(request, actor_class=_DiesOnce)
    assert (tmp_path / "run" / CACHE_DIR / "died").exists()  # an actor did die
    manifest = json.loads(storage.read_text(f"{CACHE_DIR}/{info['key']}/{MANIFEST_FILE}"))
    assert manifest["splits"]["train"]["rows"] == 96 and manifest["splits"]["eval"]["rows"] == 16
    again, _ = resolve_cache(spec, storage)
    assert again.hit


@pytest.mark.slow(
    reason=(
        "a job that builds and streams its cache through S3 (moto); the default suite builds "
        "and streams a local cache, and test_s3_ray.py runs a job on S3"
    )
)
def test_cache_on_s3_is_built_and_streamed(ray_session, moto_endpoint, bucket):
    s3 = [f"output.s3.endpoint_url={moto_endpoint}", "output.s3.addressing_style=path"]
    uri = f"s3://{bucket}/runs/cached"
    report = run_job(load_spec(None, SMALL + s3), uri)
    assert (
        report["teacher_cache"]["used"] and report["teacher"]["placement"]["partition"] == "cache"
    )
    keys = list_keys(moto_endpoint, bucket, "runs/cached/teacher_cache/")
    assert any(k.endswith(MANIFEST_FILE) for k in keys)
    (key,) = [k for k in keys if k.endswith(MANIFEST_FILE)]
    manifest = json.loads(
        s3_client(moto_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    )
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    assert sum(k.endswith(".safetensors") for k in keys) == len(shards) >= 4
    storage = open_storage(uri, load_spec(None, s3).output.s3)
    assert storage.exists("student/model.safetensors")
    assert s3_client(moto_endpoint).head_object(Bucket=bucket, Key="runs/cached/report.json")


CACHE_TARGETS = {
    "topk": ["teacher.cache.topk=8"],
    "sampled": ["teacher.cache.targets=sampled", "teacher.cache.samples=6"],
}


@pytest.mark.parametrize(
    "targets",
    [
        "topk",
        pytest.param(
            "sampled",
            marks=pytest.mark.slow(
                reason=(
                    "the same Ray Data build and 2-worker job with sampled targets (about 75 s); "
                    "the default suite covers them in unit tests through the real cache shards "
                    "and the training loss (tests/unit/core/test_sampled_cache_targets.py)"
                )
            ),
        ),
    ],
)
def test_causal_lm_job_streams_top_k_targets(ray_session, tmp_path, targets):
    """A GPT-2 teacher's top-k (or sampled) targets: built by Ray Data, streamed by 2
    workers whose training never loads the teacher, KD loss from the sparse divergence (or
    the sampled estimate of the forward KL)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from distill.core.teacher import resolve_teacher

    arch = resolve_teacher("builtin:tiny-gpt2")
    teacher = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config.from_pretrained(arch)).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(arch).save_pretrained(teacher)
    spec = load_spec(
        None,
        [
            f"teacher.name={teacher}",
            "student.layers=1",
            "objective.weights={lm: 0.5, lm_kl: 0.5}",
            "teacher.cache.mode=auto",
            *CACHE_TARGETS[targets],
            "teacher.inference.rows_per_shard=64",
            "training.steps=6",
            "training.batch_size=8",
            "training.log_every=2",
            "training.eval_every=6",
            "training.checkpoint_every=6",
            "training.warmup_steps=1",
            "data.max_length=32",
            "data.max_train_samples=128",
            "data.max_eval_samples=16",
        ],
    )
    report = run_job(spec, str(tmp_path / "lm"))
    cache = report["teacher_cache"]
    assert (
        cache["used"]
        and not cache["hit"]
        and report["teacher"]["placement"]["partition"] == "cache"
    )
    manifest = json.loads((tmp_path / "lm" / CACHE_DIR / cache["key"] / MANIFEST_FILE).read_text())
    assert manifest["tokens"]["train"] > 128
    if targets == "topk":
        assert manifest["plan"]["topk"] == 8 and "targets" not in manifest["plan"]
    else:
        assert manifest["plan"]["targets"] == "sampled" and manifest["plan"]["samples"] == 6
        from safetensors import safe_open

        shard = next((tmp_path / "lm" / CACHE_DIR / cache["key"]).rglob("*.safetensors"))
        with safe_open(str(shard), "pt") as f:
            assert {"sampled_ids", "sampled_logp"} <= set(f.keys())
            assert f.get_tensor("sampled_ids").shape[1] == 6
    history = [json.loads(x) for x in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()]
    # The sampled estimate of a random student's KL is positive with overwhelming odds.
    assert all(h["loss_lm_kl"] > 0 for h in history) and history[-1]["loss"] < history[0]["loss"]
