"""The teacher-output cache: what it stores equals a live teacher forward, its key changes
with teacher, data and requested tensors, and storage finds it (hit) or builds it (miss)."""

from __future__ import annotations

import torch
from transformers import BertModel

from distill.cluster.storage import LocalStorage
from distill.cluster.teacher_cache import CACHE_DIR, cache_summary, open_cache, prepare_cache
from distill.core.data import collate
from distill.core.outputs import TaskHead, forward_outputs
from distill.core.spec import load_spec
from distill.core.teacher_cache import (
    CachePlan,
    TeacherCache,
    bypass_reason,
    cache_key,
    compute_teacher_outputs,
    plan_for,
    rows_digest,
)

TEXTS = ["the cat sat on the mat", "a dog", "the very good movie was not bad at all", "fire"]


def _rows(tokenizer):
    return [tokenizer(t) for t in TEXTS]


def test_plan_reads_only_what_the_losses_need():
    pairs = [(1, 2), (2, 4)]
    assert plan_for({"hidden_mse": 1, "pooled_cosine": 1}, pairs) == CachePlan((2, 4), pooled=True)
    assert plan_for({"embedding_mse": 1, "logit_kl": 1}, pairs) == CachePlan((0,), logits=True)
    assert plan_for({"hidden_mse": 0, "hard_label": 1}, pairs).empty
    plan = CachePlan((2,), pooled=True).union(CachePlan((4,), logits=True))
    assert plan == CachePlan((2, 4), pooled=True, logits=True)
    assert plan.covers(CachePlan((4,), pooled=True)) and not CachePlan((2,)).covers(plan)


def test_attention_mixup_and_mlm_bypass_the_cache():
    assert "Q/K/V" in bypass_reason({"minilmv2_relations": 1}, mixup=False)
    assert "MixKD" in bypass_reason({"pooled_mse": 1}, mixup=True)
    assert "mlm" in bypass_reason({"mlm": 1, "hidden_mse": 1}, mixup=False)
    assert bypass_reason({"hidden_mse": 1, "pooled_mse": 1}, mixup=False) is None


def test_lookup_equals_a_live_teacher_forward(tiny_bert, tiny_tokenizer):
    head = TaskHead(32, 3, "classification").eval()
    plan = CachePlan((0, 2, 4), pooled=True, logits=True)
    pad = collate(tiny_tokenizer)
    rows = _rows(tiny_tokenizer)
    tensors = compute_teacher_outputs(tiny_bert, head, [pad(rows[:3]), pad(rows[3:])], plan)
    assert tensors["hidden_2"].dtype == torch.float16  # hidden states stored in half precision
    cache = TeacherCache(tensors, plan)
    # A batch in another order and padding than the one the cache was built from.
    index = torch.tensor([3, 0, 2])
    batch = pad([rows[i] for i in index])
    looked_up = cache.lookup(index, batch["attention_mask"])
    live = forward_outputs(tiny_bert, batch, head=head)
    real = batch["attention_mask"].bool()
    for layer in plan.layers:
        torch.testing.assert_close(
            looked_up.hidden[layer][real], live.hidden[layer][real], atol=2e-3, rtol=2e-3
        )
        assert (looked_up.hidden[layer][~real] == 0).all()  # padding stays zero
    assert looked_up.hidden[1] is None  # not in the plan
    torch.testing.assert_close(looked_up.pooled, live.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(looked_up.logits, live.logits, atol=1e-5, rtol=1e-5)


def test_lookup_refuses_rows_tokenized_differently(tiny_bert, tiny_tokenizer):
    pad = collate(tiny_tokenizer)
    rows = _rows(tiny_tokenizer)
    cache = TeacherCache(
        compute_teacher_outputs(tiny_bert, None, [pad(rows)], CachePlan((1,))), CachePlan((1,))
    )
    shorter = pad([tiny_tokenizer(TEXTS[0], truncation=True, max_length=3)])
    try:
        cache.lookup(torch.tensor([0]), shorter["attention_mask"])
    except ValueError as exc:
        assert "stale cache" in str(exc)
    else:
        raise AssertionError("a mismatched batch must not read the cache")


def test_key_changes_with_teacher_data_and_tensors(tiny_tokenizer):
    rows = rows_digest([r["input_ids"] for r in _rows(tiny_tokenizer)])
    key = cache_key(teacher="t", rows=rows, plan=CachePlan((2,)), settings={"max_length": 64})
    assert key == cache_key(
        teacher="t", rows=rows, plan=CachePlan((2,)), settings={"max_length": 64}
    )
    fewer = rows_digest([r["input_ids"] for r in _rows(tiny_tokenizer)[:-1]])
    assert (
        len(
            {
                key,
                cache_key(
                    teacher="t2", rows=rows, plan=CachePlan((2,)), settings={"max_length": 64}
                ),
                cache_key(
                    teacher="t", rows=fewer, plan=CachePlan((2,)), settings={"max_length": 64}
                ),
                cache_key(
                    teacher="t", rows=rows, plan=CachePlan((2, 4)), settings={"max_length": 64}
                ),
                cache_key(
                    teacher="t", rows=rows, plan=CachePlan((2,)), settings={"max_length": 32}
                ),
            }
        )
        == 5
    )


def _teacher_folder(tmp_path, tiny_bert, tiny_tokenizer, seed: int):
    folder = tmp_path / f"teacher{seed}"
    model = tiny_bert if seed == 0 else BertModel(tiny_bert.config)
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_storage_hit_miss_and_invalidation(tmp_path, tiny_bert, tiny_tokenizer):
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS * 5) + "\n")
    teacher = _teacher_folder(tmp_path, tiny_bert, tiny_tokenizer, 0)

    def spec(teacher_dir, *extra):
        return load_spec(
            None,
            [
                f"teacher.name={teacher_dir}",
                f"data.train.path={data}",
                "data.eval_fraction=0.2",
                *extra,
            ],
        )

    storage = LocalStorage(tmp_path / "sweep")
    plan = CachePlan((2,), pooled=True)
    logs: list[str] = []
    first = prepare_cache(spec(teacher), storage, plan, log=logs.append)
    assert not first["hit"] and "built" in logs[-1]
    assert storage.list(CACHE_DIR) == [first["key"]]
    again = prepare_cache(spec(teacher), storage, plan, log=logs.append)
    assert again["hit"] and again["key"] == first["key"] and "hit" in logs[-1]
    # Different weights, different rows, more tensors: each a new key, built anew.
    other_teacher = _teacher_folder(tmp_path, tiny_bert, tiny_tokenizer, 1)
    keys = {
        prepare_cache(spec(other_teacher), storage, plan, log=logs.append)["key"],
        prepare_cache(spec(teacher, "data.max_length=4"), storage, plan, log=logs.append)["key"],
        prepare_cache(spec(teacher), storage, CachePlan((2, 4), pooled=True), log=logs.append)[
            "key"
        ],
    }
    assert len(keys | {first["key"]}) == 4 and len(storage.list(CACHE_DIR)) == 4
    # An incomplete folder (no meta.json, written last) is not a hit.
    storage.delete(f"{CACHE_DIR}/{first['key']}/meta.json")
    assert not prepare_cache(spec(teacher), storage, plan, log=logs.append)["hit"]
    # Workers open what the driver built; the report says which cache served the run.
    loaded = open_cache(again, spec(teacher))
    assert loaded.rows == again["rows"] and loaded.plan == plan
    assert cache_summary(again, None) == {
        "used": True,
        "key": again["key"],
        "hit": True,
        "rows": again["rows"],
    }
    assert cache_summary(None, "MixKD ...") == {"used": False, "reason": "MixKD ..."}
