"""The service teacher's answers (`cluster/teacher_service.py`) equal the in-worker teacher's
outputs for each request however requests are batched together: rows of different lengths
right-padded into one forward, MixKD requests mixed within their own rows, a task head's
logits, the Q/K/V of the layers asked for. The replica's answering code runs here without
Ray Serve on the packaged teacher (a real BERT); the deployment itself is exercised by
tests/integration/test_teacher_service.py."""

from __future__ import annotations

import torch

from distill.cluster.teacher_service import TeacherService, request_rows
from distill.core.family_registry import FAMILIES
from distill.core.mixup import mixup
from distill.core.outputs import TaskHead, forward_outputs
from distill.core.teacher import PACKAGED_TEACHER, freeze, resolve_teacher

TOL = 1e-5


def _replica(head: TaskHead | None = None) -> TeacherService:
    from transformers import AutoModel

    replica = object.__new__(TeacherService)  # the answering code, no Serve
    replica.family = FAMILIES["encoder"]
    replica.teacher = freeze(AutoModel.from_pretrained(resolve_teacher(PACKAGED_TEACHER)))
    replica.head = head
    replica.batch_rows = []
    return replica


def _request(rows: int, length: int, seed: int, **extra) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, length - 2 :] = 0  # a padded row of its own
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "qkv_layers": (),
        "head": False,
        **extra,
    }


def _close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if mask is not None:  # padded positions carry no meaning
        a, b = a[mask.bool()], b[mask.bool()]
    assert torch.allclose(a, b, atol=TOL, rtol=1e-4), (a - b).abs().max()


def test_requests_batched_together_get_what_each_would_get_alone():
    replica = _replica()
    short, long = _request(2, 7, 0, qkv_layers=(6,)), _request(3, 12, 1, qkv_layers=(6,))
    answers = replica._answer([short, long])
    assert replica.batch_rows == [5]  # one forward for both
    for request, answer in zip([short, long], answers, strict=True):
        alone = forward_outputs(replica.teacher, request, qkv_layers=(6,))
        mask = request["attention_mask"]
        assert answer["hidden"].shape[:3] == (7, *request["input_ids"].shape)
        for layer, hidden in enumerate(alone.hidden):
            _close(answer["hidden"][layer], hidden, mask)
        _close(answer["pooled"], alone.pooled)
        for got, want in zip(answer["qkv"][6], alone.qkv[6], strict=True):
            _close(got, want, mask)


def test_mixkd_requests_are_mixed_within_their_own_rows():
    replica = _replica()
    perm = torch.tensor([2, 0, 1])
    mixed = _request(3, 9, 2, mix=(perm, 0.3))
    plain = _request(2, 11, 3)
    answers = replica._answer([mixed, plain])
    assert sorted(replica.batch_rows) == [2, 3]  # a mixed and a plain forward
    embeds, mask = mixup(
        replica.teacher.get_input_embeddings()(mixed["input_ids"]),
        mixed["attention_mask"],
        perm,
        0.3,
    )
    alone = forward_outputs(
        replica.teacher, {**mixed, "attention_mask": mask}, inputs_embeds=embeds
    )
    _close(answers[0]["hidden"][-1], alone.hidden[-1], mask)
    _close(answers[0]["pooled"], alone.pooled)


def test_the_task_head_answers_only_when_asked():
    torch.manual_seed(0)
    head = freeze(TaskHead(384, 3, "classification"))
    replica = _replica(head)
    with_head, without = _request(2, 6, 4, head=True), _request(2, 6, 5)
    answers = replica._answer([with_head, without])
    alone = forward_outputs(replica.teacher, with_head, head=head)
    _close(answers[0]["logits"], alone.logits)
    assert answers[1]["logits"] is None


def test_batches_are_sized_by_rows_not_requests():
    assert request_rows([_request(2, 4, 0), _request(5, 3, 1)]) == 7
