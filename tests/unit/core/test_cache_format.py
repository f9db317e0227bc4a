"""The teacher-output cache: shards read back equal a live teacher forward (encoder
tensors; LM top-k targets whose sparse KD equals the live KD when k is the vocabulary),
readers open only the shards they need, a manifest never covers a gap, and the key
changes with teacher, data, tensors and settings."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from distill.core.cache_format import (
    MANIFEST_FILE,
    CachePlan,
    ShardedCache,
    assemble_shard,
    build_manifest,
    bypass_reason,
    cache_key,
    encoder_rows,
    length_buckets,
    lm_plan_for,
    plan_for,
    rows_digest,
    shard_name,
    write_shard,
)
from distill.core.data import collate
from distill.core.family_registry import FAMILIES
from distill.core.generative import (
    BatchIds,
    GenerativeDistillationModel,
    TokenObjective,
    TokenSettings,
    generative_collate,
)
from distill.core.outputs import TaskHead, forward_outputs
from distill.core.student import StudentSize, build_student
from distill.core.teacher import freeze, resolve_teacher

pytestmark = pytest.mark.unit

TEXTS = ["the cat sat on the mat", "a dog", "the very good movie was not bad at all", "fire"]


def _rows(tokenizer, texts=TEXTS):
    return [dict(tokenizer(t)) for t in texts]


def _write_cache(folder, split_rows: dict, rows_fn, pad, *, per_shard: int, plan) -> ShardedCache:
    """Shards of `per_shard` rows per split (each computed in length-bucketed batches of 2
    and written back in row order), then the manifest, as the Ray Data build writes them; a
    reader over the folder."""
    (folder / "shards").mkdir(parents=True)
    entries = []
    for split, rows in split_rows.items():
        for start in range(0, len(rows), per_shard):
            chunk = rows[start : start + per_shard]
            buckets = length_buckets([len(r["input_ids"]) for r in chunk], 2)
            parts = [rows_fn(pad([dict(chunk[i]) for i in bucket])) for bucket in buckets]
            tensors = assemble_shard(parts, order=[i for bucket in buckets for i in bucket])
            file = shard_name(split, start)
            facts = write_shard(folder / file, tensors)
            entries.append(
                {"split": split, "start": start, "rows": len(chunk), "file": file, **facts}
            )
    counts = {split: len(rows) for split, rows in split_rows.items()}
    manifest = build_manifest("k", plan, counts, entries)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return ShardedCache(manifest, lambda file: str(folder / file))


def test_length_buckets_restore_row_order_for_every_tensor(tiny_bert, tiny_tokenizer):
    """Rows computed longest-first (little padding per forward) are written in row order:
    the same shard as a forward over the rows in order, per-row and per-token tensors alike."""
    plan = CachePlan((0, 2), pooled=True)
    pad = collate(tiny_tokenizer)
    rows = _rows(tiny_tokenizer, TEXTS + ["a cat", "the dog sat on a very good mat"])
    buckets = length_buckets([len(r["input_ids"]) for r in rows], 2)
    lengths = [[len(rows[i]["input_ids"]) for i in b] for b in buckets]
    assert lengths == sorted(lengths, reverse=True) and sorted(sum(buckets, [])) == list(range(6))
    bucketed = assemble_shard(
        [encoder_rows(tiny_bert, None, pad([dict(rows[i]) for i in b]), plan) for b in buckets],
        order=[i for b in buckets for i in b],
    )
    in_order = assemble_shard([encoder_rows(tiny_bert, None, pad([dict(r) for r in rows]), plan)])
    assert bucketed.keys() == in_order.keys()
    assert torch.equal(bucketed["offsets"], in_order["offsets"])
    for key in in_order:
        torch.testing.assert_close(bucketed[key], in_order[key], atol=2e-3, rtol=2e-3)


def test_plan_reads_only_what_the_losses_need():
    pairs = [(1, 2), (2, 4)]
    assert plan_for({"hidden_mse": 1, "pooled_cosine": 1}, pairs) == CachePlan((2, 4), pooled=True)
    assert plan_for({"embedding_mse": 1, "logit_kl": 1}, pairs) == CachePlan((0,), logits=True)
    assert plan_for({"hidden_mse": 0, "hard_label": 1}, pairs).empty
    plan = CachePlan((2,), pooled=True).union(CachePlan((4,), logits=True))
    assert plan == CachePlan((2, 4), pooled=True, logits=True)
    assert plan.covers(CachePlan((4,), pooled=True)) and not CachePlan((2,)).covers(plan)
    lm = lm_plan_for({"lm": 1, "lm_kl": 1}, 16, 2.0)
    assert lm == CachePlan(topk=16, temperature=2.0) and lm_plan_for({"lm": 1}, 16, 1.0).empty
    assert not lm.covers(CachePlan(topk=16, temperature=1.0))  # the lse depends on T
    assert CachePlan.from_dict({"layers": [2], "pooled": True}) == CachePlan((2,), pooled=True)


def test_inputs_that_change_every_step_bypass_the_cache():
    assert "Q/K/V" in bypass_reason({"minilmv2_relations": 1}, mixup=False)
    assert "MixKD" in bypass_reason({"pooled_mse": 1}, mixup=True)
    assert "mlm" in bypass_reason({"mlm": 1, "hidden_mse": 1}, mixup=False)
    assert "infilling" in bypass_reason({"lm_kl": 1}, mixup=False, infilling=True)
    assert "generations" in bypass_reason({"lm_kl": 1}, mixup=False, sequence_kd=True)
    assert "uld" in bypass_reason({"lm": 1, "uld": 1}, mixup=False)  # whole distributions
    assert bypass_reason({"hidden_mse": 1, "pooled_mse": 1}, mixup=False) is None


def test_encoder_shards_read_back_equal_a_live_forward(tmp_path, tiny_bert, tiny_tokenizer):
    head = TaskHead(32, 3, "classification").eval()
    plan = CachePlan((0, 2, 4), pooled=True, logits=True)
    pad = collate(tiny_tokenizer)
    rows = _rows(tiny_tokenizer, TEXTS * 2)  # 8 rows: shards of 3, 3 and 2 rows
    cache = _write_cache(
        tmp_path, {"train": rows, "eval": rows[:2]},
        lambda b: encoder_rows(tiny_bert, head, b, plan), pad, per_shard=3, plan=plan,
    )  # fmt: skip
    assert cache.rows("train") == 8 and cache.plan == plan
    index = torch.tensor([4, 0, 3])  # another order and padding than the shards were built with
    batch = pad([rows[i] for i in index])
    looked_up = cache.encoder_outputs("train", index, batch["attention_mask"], torch.float32)
    assert cache.opened == {shard_name("train", 0), shard_name("train", 3)}  # not train-6
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
    shorter = pad([tiny_tokenizer(TEXTS[0], truncation=True, max_length=3)])
    with pytest.raises(ValueError, match="stale cache"):
        cache.encoder_outputs("train", torch.tensor([0]), shorter["attention_mask"], torch.float32)
    with pytest.raises(IndexError, match="eval row 2 of 2"):
        cache.take("eval", [2])


def test_a_student_with_its_own_tokenizer_reads_the_teachers_rows(
    tmp_path, tiny_bert, tiny_tokenizer
):
    """Across tokenizers the cache holds the teacher's tokenization; the encoder family
    looks rows up by the batch's `teacher_*` mask, and the pooled targets equal a live
    teacher forward on the teacher's own token ids."""
    import datasets
    from helpers.family_zoo import lm_tokenizer

    from distill.core.data import collate_for_both, teacher_view, tokenize_for_both

    plan = CachePlan((), pooled=True)
    rows = _rows(tiny_tokenizer)
    cache = _write_cache(
        tmp_path, {"train": rows}, lambda b: encoder_rows(tiny_bert, None, b, plan),
        collate(tiny_tokenizer), per_shard=3, plan=plan,
    )  # fmt: skip
    bpe = lm_tokenizer("gpt2")
    both = tokenize_for_both(
        datasets.Dataset.from_dict({"text": TEXTS}), bpe, 64, teacher_tokenizer=tiny_tokenizer
    )
    index = torch.tensor([2, 0, 3])
    batch = collate_for_both(bpe, tiny_tokenizer)([both[int(i)] for i in index])
    assert batch["input_ids"].shape != batch["teacher_input_ids"].shape  # two tokenizations
    looked_up = FAMILIES["encoder"].cached_outputs(cache, "train", index, batch, torch.float32)
    live = forward_outputs(tiny_bert, teacher_view(batch))
    torch.testing.assert_close(looked_up.pooled, live.pooled, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="stale cache"):  # the student's mask does not match
        cache.encoder_outputs("train", index, batch["attention_mask"], torch.float32)


@pytest.fixture
def gpt2_dir(tmp_path):
    config = GPT2Config(
        vocab_size=2048, n_positions=64, n_embd=32, n_layer=4, n_head=4,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = freeze(GPT2LMHeadModel(config))
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(resolve_teacher("builtin:tiny-gpt2"))
    tokenizer.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2", model, tokenizer


@pytest.mark.parametrize("divergence", ["lm_kl", "lm_reverse_kl", "lm_jsd"])
def test_lm_topk_cache_with_k_equal_to_vocab_gives_the_live_kd(tmp_path, gpt2_dir, divergence):
    _, teacher, tokenizer = gpt2_dir
    family = FAMILIES["causal"]
    texts = ["Return the number of items in the list.", "Close the file.", "A new socket."]
    rows = _rows(tokenizer, texts)
    pad = generative_collate(tokenizer)
    full = CachePlan(topk=2048, temperature=2.0)
    cache = _write_cache(
        tmp_path / "c", {"train": rows},
        lambda b: family.cache_rows(teacher, None, tokenizer, b, full), pad, per_shard=2, plan=full,
    )  # fmt: skip
    student = build_student(
        teacher, StudentSize(2, 32, 4, 128), init="first_k", auto_class=AutoModelForCausalLM
    ).eval()
    settings = TokenSettings(temperature=2.0, num_chunks=2)
    model = GenerativeDistillationModel(
        student,
        TokenObjective({divergence: 1.0}, settings),
        BatchIds.from_model(teacher.config, tokenizer),
    )
    index = torch.tensor([2, 0, 1])
    batch = pad([dict(rows[i]) for i in index])
    live, _ = model(batch, family.teacher_outputs(model, teacher, None, batch))
    cached_out = family.cached_outputs(cache, "train", index, batch, torch.float32)
    cached, _ = model(batch, cached_out)
    torch.testing.assert_close(cached, live, atol=1e-4, rtol=1e-4)
    # A small k keeps 8k + 4 bytes per target token and a lower bound of the live loss.
    small = CachePlan(topk=8, temperature=2.0)
    cache8 = _write_cache(
        tmp_path / "c8", {"train": rows},
        lambda b: family.cache_rows(teacher, None, tokenizer, b, small), pad, per_shard=3, plan=small,
    )  # fmt: skip
    ids, logits, lse = family.cached_outputs(cache8, "train", index, batch, torch.float32).topk
    assert ids.dtype == torch.int32 and ids.shape[1] == logits.shape[1] == 8 and lse.ndim == 1
    approx, _ = model(batch, family.cached_outputs(cache8, "train", index, batch, torch.float32))
    assert 0 < approx.item() <= live.item() + 1e-5


def test_a_manifest_never_covers_a_missing_or_short_shard():
    entry = {"split": "train", "start": 0, "rows": 4, "file": "a", "bytes": 1, "sha256": "x"}
    with pytest.raises(ValueError, match="rows 4..8 have no shard"):
        build_manifest("k", CachePlan((1,)), {"train": 12}, [entry, {**entry, "start": 8}])
    with pytest.raises(ValueError, match="hold 4 of 6 rows"):
        build_manifest("k", CachePlan((1,)), {"train": 6}, [entry])
    done = build_manifest("k", CachePlan((1,)), {"train": 4}, [entry])
    assert done["splits"]["train"]["shards"][0]["file"] == "a" and done["format"] == 2


def test_key_changes_with_teacher_data_and_tensors(tiny_tokenizer):
    rows = rows_digest([r["input_ids"] for r in _rows(tiny_tokenizer)])
    fewer = rows_digest([r["input_ids"] for r in _rows(tiny_tokenizer)[:-1]])

    layer2 = CachePlan((2,))

    def key(teacher="t", rows=rows, plan=layer2, max_length=64):
        return cache_key(teacher=teacher, rows=rows, plan=plan, settings={"max_length": max_length})

    assert key() == key()
    variants = {
        key(),
        key(teacher="t2"),
        key(rows=fewer),
        key(plan=CachePlan((2, 4))),
        key(max_length=32),
        key(plan=CachePlan(topk=8)),
        key(plan=CachePlan(topk=16)),
        key(plan=CachePlan(topk=8, temperature=2.0)),
    }
    assert len(variants) == 8


def test_driver_finds_the_cache_by_key_before_ray(tmp_path, teacher_dir):
    """`resolve_cache` (no Ray, no teacher weights): a miss, then a hit once a manifest is
    there, a new key for other rows, and one-line refusals for `required` and for a
    location that cannot be written."""
    from distill.cluster.cache_store import CACHE_DIR, resolve_cache
    from distill.cluster.storage import LocalStorage
    from distill.core.spec import SpecError
    from distill.core.spec_loading import load_spec

    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS * 5) + "\n")

    def spec(*extra):
        return load_spec(
            None,
            [f"teacher.name={teacher_dir}", f"data.train.path={data}", "data.eval_fraction=0.2",
             "student.layers=2", "teacher.cache.mode=auto", *extra],
        )  # fmt: skip

    storage = LocalStorage(tmp_path / "run")
    request, reason = resolve_cache(spec(), storage)
    assert reason is None and not request.hit and request.plan.pooled
    assert len(request.rows["train"]) + len(request.rows["eval"]) == 20
    (tmp_path / "run" / CACHE_DIR / request.key).mkdir(parents=True)
    (tmp_path / "run" / CACHE_DIR / request.key / MANIFEST_FILE).write_text("{}")
    again, _ = resolve_cache(spec("teacher.cache.mode=required"), storage)
    assert again.hit and again.key == request.key
    other, _ = resolve_cache(spec("data.max_length=4"), storage)
    assert other.key != request.key and not other.hit
    with pytest.raises(SpecError, match="teacher.cache: mode required, but .* holds no complete"):
        resolve_cache(spec("teacher.cache.mode=required", "data.max_length=4"), storage)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SpecError, match="teacher.cache.location"):
        resolve_cache(spec(f"teacher.cache.location={blocker}"), storage)
    _, why = resolve_cache(spec("objective.mixup.alpha=0.4"), storage)
    assert "MixKD" in why
