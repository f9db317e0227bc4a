"""The teacher as a shared Ray Serve deployment (`teacher.placement: service`,
cluster/teacher_service.py), on real 2-worker Ray Train jobs with a real 1-replica
deployment on the shared local Ray:

- a MixKD run (its teacher inputs are made during training, so no cache can serve them)
  whose teacher is the service logs the same first-step losses as the same run with the
  teacher in every worker; the report says where the teacher ran, how many forwards its
  replica ran for how many requests, and each rank's calls; the fingerprint of the served
  teacher is unchanged; the deployment the run started is gone afterwards;
- attaching by name to a deployment that is not running is one line naming the field.
"""

from __future__ import annotations

import json

import pytest
from test_fault_tolerance import TINY

from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.jobs.run import run_job

pytestmark = pytest.mark.ray

SHORT = [
    *[o for o in TINY if not o.startswith(("training.steps", "training.eval_every"))],
    "training.steps=3",
    "training.eval_every=3",
    "training.checkpoint_every=3",
    "objective.mixup.alpha=0.4",  # MixKD: the teacher also runs on mixed embeddings
]


def _history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_service_teacher_trains_as_the_in_worker_teacher_does(ray_session, tmp_path):
    from ray import serve

    local = run_job(load_spec(None, [*SHORT, "teacher.placement=replicate"]), str(tmp_path / "a"))
    served = run_job(
        load_spec(
            None, [*SHORT, "teacher.placement=service", "teacher.service.cpus_per_replica=0"]
        ),
        str(tmp_path / "b"),
    )
    want, got = _history(tmp_path / "a"), _history(tmp_path / "b")
    assert [h["step"] for h in got] == [h["step"] for h in want] == [1, 2, 3]
    for a, b in zip(want, got, strict=True):  # the same batches, mixes and teacher outputs
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5), (a, b)
    assert local["teacher"]["placement"]["partition"] == "replicate"

    placement = served["teacher"]["placement"]
    assert placement["partition"] == "service"
    assert placement["parameters_per_rank"] == [0, 0]  # no worker holds the teacher
    service = placement["service"]
    assert service["started_here"] and service["replicas"] == 1
    # 3 steps x 2 ranks x (batch + mixed batch) at least, batched into forwards of >= 1 request
    assert service["requests"] >= 12 and 1 <= service["forwards"] <= service["requests"]
    calls = placement["service_calls"]
    assert len(calls) == 2 and all(c["calls"] >= 6 and c["retries"] == 0 for c in calls)
    assert served["teacher_check"]["unchanged"]  # the served weights, hashed in the replica
    assert service["app"] not in serve.status().applications  # deleted after the run


def test_attaching_to_a_deployment_that_is_not_running_is_one_line(ray_session, tmp_path):
    spec = load_spec(
        None, [*SHORT, "teacher.placement=service", "teacher.service.name=nobody-runs-this"]
    )
    with pytest.raises(SpecError) as err:
        run_job(spec, str(tmp_path / "c"))
    line = str(err.value)
    assert line.startswith("teacher.service.name: no running deployment named nobody-runs-this")
    assert "\n" not in line
    assert not (tmp_path / "c" / "train").exists()  # no trial, no worker started


@pytest.mark.slow(
    reason="two more 2-worker Ray Train jobs (about 100 s); the default suite's MixKD run "
    "covers the deployment, and tests/unit/cluster/test_served_lm_teacher.py the LM answers"
)
def test_a_served_causal_teacher_trains_on_policy_as_the_in_worker_teacher_does(
    ray_session, tmp_path
):
    """A GPT-2-style teacher served by the deployment: the replica returns hidden states,
    each worker applies the LM head it read alone from the checkpoint. With on-policy
    batches (the student's own samples, made during training), the logged losses equal the
    in-worker teacher's and no worker holds more of the teacher than its LM head."""
    from helpers.family_zoo import tiny_lm_job

    common = [
        *tiny_lm_job(tmp_path),
        "training.steps=3",
        "training.eval_every=3",
        "training.checkpoint_every=3",
        "objective.weights={lm: 1.0, lm_jsd: 1.0}",
        "objective.on_policy={fraction: 1.0, max_new_tokens: 6}",
    ]
    local = run_job(load_spec(None, [*common, "teacher.placement=replicate"]), str(tmp_path / "a"))
    served = run_job(
        load_spec(
            None, [*common, "teacher.placement=service", "teacher.service.cpus_per_replica=0"]
        ),
        str(tmp_path / "b"),
    )
    want, got = _history(tmp_path / "a"), _history(tmp_path / "b")
    assert [h["step"] for h in got] == [h["step"] for h in want] == [1, 2, 3]
    for a, b in zip(want, got, strict=True):  # the same samples and teacher distributions
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5), (a, b)
    assert local["teacher"]["placement"]["partition"] == "replicate"
    placement = served["teacher"]["placement"]
    assert placement["partition"] == "service"
    # Each worker holds the LM head alone (tied to the token embeddings: vocabulary x width).
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "gpt2")
    head = config.vocab_size * config.n_embd
    assert placement["parameters_per_rank"] == [head, head] and head < placement["parameters"]
    assert placement["service"]["requests"] >= 6
    assert served["teacher_check"]["unchanged"]
