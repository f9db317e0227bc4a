"""Sampled LM targets in the teacher-output cache (`teacher.cache.targets: sampled`): shards
read back what was written, a rebuild draws the same ids whatever the batching, the
training path's loss through the cache is an unbiased estimate of the live KD, a cache of
one target kind never serves a run asking for the other, caches written before the field
existed read (and hash) as top-k, and bad settings fail in one line naming the field."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from distill.core import token_losses
from distill.core.cache_format import (
    MANIFEST_FILE,
    SAMPLED_KEYS,
    CachePlan,
    ShardedCache,
    assemble_shard,
    build_manifest,
    cache_key,
    length_buckets,
    lm_plan_for,
    lm_rows,
    row_seeds,
    shard_name,
    write_shard,
)
from distill.core.family_registry import FAMILIES
from distill.core.generative import (
    BatchIds,
    GenerativeDistillationModel,
    TokenObjective,
    TokenSettings,
    causal_targets,
    generative_collate,
    lm_head,
    target_hidden,
)
from distill.core.spec import JobSpec, SpecError
from distill.core.spec_loading import load_spec
from distill.core.student import StudentSize, build_student
from distill.core.teacher import freeze, resolve_teacher

pytestmark = pytest.mark.unit

TEXTS = [
    "Return the number of items in the list.",
    "Close the file.",
    "A new socket listens on the port it was given.",
    "Sort the keys.",
    "The parser reads one line at a time and stops at the end.",
]
SAMPLED = CachePlan(temperature=2.0, targets="sampled", samples=12)


@pytest.fixture
def gpt2_dir(tmp_path):
    """A tiny GPT-2 teacher (vocabulary 2048) saved with the packaged tiny-gpt2 tokenizer;
    its final layer norm is scaled up so its next-token distributions are far from
    uniform, as a trained LM's are."""
    config = GPT2Config(
        vocab_size=2048, n_positions=64, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = GPT2LMHeadModel(config)
        with torch.no_grad():
            model.transformer.ln_f.weight.mul_(25.0)
        model = freeze(model)
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(resolve_teacher("builtin:tiny-gpt2"))
    tokenizer.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2", model, tokenizer


def _rows(tokenizer):
    return [dict(tokenizer(t)) for t in TEXTS]


def _build(folder, rows, rows_fn, pad, plan, per_shard=2) -> tuple[ShardedCache, list[dict]]:
    """Shards as the Ray Data build writes them (length-bucketed batches of 2, written back
    in row order), the manifest last; the reader and each shard's tensors."""
    (folder / "shards").mkdir(parents=True)
    entries, shards = [], []
    for start in range(0, len(rows), per_shard):
        chunk = rows[start : start + per_shard]
        buckets = length_buckets([len(r["input_ids"]) for r in chunk], 2)
        parts = [rows_fn(pad([dict(chunk[i]) for i in bucket])) for bucket in buckets]
        tensors = assemble_shard(parts, order=[i for bucket in buckets for i in bucket])
        file = shard_name("train", start)
        entries.append(
            {"split": "train", "start": start, "rows": len(chunk), "file": file,
             **write_shard(folder / file, tensors)}
        )  # fmt: skip
        shards.append(tensors)
    manifest = build_manifest("k", plan, {"train": len(rows)}, entries)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return ShardedCache(manifest, lambda file: str(folder / file)), shards


def test_sampled_targets_round_trip_through_the_shards(tmp_path, gpt2_dir):
    _, teacher, tokenizer = gpt2_dir
    family, pad = FAMILIES["causal"], generative_collate(tokenizer)
    rows = _rows(tokenizer)
    cache, shards = _build(
        tmp_path / "c", rows, lambda b: family.cache_rows(teacher, None, tokenizer, b, SAMPLED),
        pad, SAMPLED,
    )  # fmt: skip
    manifest = json.loads((tmp_path / "c" / MANIFEST_FILE).read_text())
    assert manifest["plan"]["targets"] == "sampled" and manifest["plan"]["samples"] == 12
    assert cache.plan == SAMPLED
    for shard in shards:
        assert shard["sampled_ids"].dtype == torch.int32
        assert shard["sampled_logp"].dtype == torch.float32
        assert shard["sampled_ids"].shape[1] == 12 and not any(k.startswith("topk") for k in shard)
    written = []  # per row, in row order: what its shard holds for it
    for shard in shards:
        o = shard["offsets"].tolist()
        written += [{k: shard[k][o[r] : o[r + 1]] for k in SAMPLED_KEYS} for r in range(len(o) - 1)]
    index = torch.tensor([3, 0, 4, 1, 2])
    batch = pad([dict(rows[i]) for i in index])
    looked_up = family.cached_outputs(cache, "train", index, batch, torch.float32)
    assert looked_up.topk is None
    for key, got in zip(SAMPLED_KEYS, looked_up.samples):
        assert torch.equal(got, torch.cat([written[i][key] for i in index.tolist()]))
    # The cached log-probabilities are the teacher's at the cache temperature of those ids.
    hidden, targets = target_hidden(teacher, batch)
    logits = lm_head(teacher)(hidden[targets != token_losses.IGNORE_INDEX])
    log_p = torch.log_softmax(logits.float() / 2.0, -1)
    ids, logp = looked_up.samples
    torch.testing.assert_close(logp, log_p.gather(-1, ids.long()), atol=1e-5, rtol=1e-5)


def test_a_rebuild_draws_the_same_ids_whatever_the_batching(tmp_path, gpt2_dir):
    _, teacher, tokenizer = gpt2_dir
    family, pad = FAMILIES["causal"], generative_collate(tokenizer)
    rows = _rows(tokenizer)

    def build(name, per_shard):
        _, shards = _build(
            tmp_path / name, rows,
            lambda b: family.cache_rows(teacher, None, tokenizer, b, SAMPLED), pad, SAMPLED,
            per_shard=per_shard,
        )  # fmt: skip
        return torch.cat([s["sampled_ids"] for s in shards])

    first = build("a", 2)
    assert torch.equal(build("b", 2), first)  # same seeds, same draws
    assert torch.equal(build("c", 5), first)  # other shards, batches and padding
    one_by_one = torch.cat(
        [family.cache_rows(teacher, None, tokenizer, pad([dict(r)]), SAMPLED)["sampled_ids"]
         for r in rows]
    )  # fmt: skip
    assert torch.equal(one_by_one, first)

    # A row's seed is its tokens', not its padding's or its neighbours'.
    def seeds(batch):
        return row_seeds(batch["input_ids"], batch["attention_mask"], causal_targets(batch))

    alone = [seeds(pad([dict(r)]))[0] for r in rows]
    together = pad([dict(r) for r in rows])
    assert seeds(together) == alone
    assert len(set(alone)) == len(rows)
    # Without seeds there are no sampled targets (a draw must be reproducible).
    hidden, targets = target_hidden(teacher, together)
    with pytest.raises(ValueError, match="one seed per row"):
        lm_rows(hidden, targets, lm_head(teacher), SAMPLED)


def test_the_cached_sampled_loss_is_an_unbiased_estimate_of_the_live_kd(tmp_path, gpt2_dir):
    """Through the training path (`GenerativeDistillationModel` on `cached_outputs`): the
    loss is the sampled estimate, within Z = 5 standard errors (of its own draws) of the
    live full-vocabulary KD; reverse KL refuses sampled targets."""
    _, teacher, tokenizer = gpt2_dir
    family, pad = FAMILIES["causal"], generative_collate(tokenizer)
    rows = _rows(tokenizer)
    plan = CachePlan(temperature=2.0, targets="sampled", samples=2048)
    cache, _ = _build(
        tmp_path / "c", rows, lambda b: family.cache_rows(teacher, None, tokenizer, b, plan),
        pad, plan, per_shard=3,
    )  # fmt: skip
    student = build_student(
        teacher, StudentSize(1, 32, 4, 64), init="random", auto_class=AutoModelForCausalLM
    ).eval()
    settings = TokenSettings(temperature=2.0, num_chunks=2)
    ids = BatchIds.from_model(teacher.config, tokenizer)
    model = GenerativeDistillationModel(student, TokenObjective({"lm_kl": 1.0}, settings), ids)
    index = torch.tensor([4, 1, 0, 2, 3])
    batch = pad([dict(rows[i]) for i in index])
    cached_out = family.cached_outputs(cache, "train", index, batch, torch.float32)
    with torch.no_grad():
        live, _ = model(batch, family.teacher_outputs(model, teacher, None, batch))
        cached, parts = model(batch, cached_out)
    assert set(parts) == {"lm_kl"}
    # The loss's standard error from its own draws: per-token means of S terms, averaged.
    hidden, targets = target_hidden(student, batch)
    with torch.no_grad():
        log_q = torch.log_softmax(
            lm_head(student)(hidden[targets != token_losses.IGNORE_INDEX]).float() / 2.0, -1
        )
    s_ids, s_logp = cached_out.samples
    terms = 4.0 * (s_logp - log_q.gather(-1, s_ids.long()))  # [tokens, S], T^2 = 4
    assert cached.item() == pytest.approx(terms.mean().item(), rel=1e-5)
    se = math.sqrt((terms.var(1) / terms.shape[1]).sum().item()) / terms.shape[0]
    assert 0 < se < 0.05 * live.item()  # the comparison below has power
    assert abs(cached.item() - live.item()) <= 5 * se
    reverse = GenerativeDistillationModel(
        student, TokenObjective({"lm_reverse_kl": 1.0}, settings), ids
    )
    with pytest.raises(ValueError, match="sampled targets estimate forward KL"):
        reverse(batch, cached_out)


def test_one_target_kind_never_serves_the_other():
    topk, sampled = CachePlan(topk=12), CachePlan(targets="sampled", samples=12)
    assert not topk.covers(sampled) and not sampled.covers(topk)
    assert sampled.covers(CachePlan(targets="sampled", samples=12))
    assert not sampled.covers(CachePlan(targets="sampled", samples=24))
    assert not sampled.covers(CachePlan(targets="sampled", samples=12, temperature=2.0))
    assert sampled.covers(CachePlan((), pooled=False))  # no LM targets asked for
    with pytest.raises(ValueError, match="one kind of LM targets"):
        topk.union(sampled)
    assert CachePlan((1,)).union(sampled) == CachePlan((1,), targets="sampled", samples=12)

    def key(plan):
        return cache_key(teacher="t", rows="r", plan=plan, settings={"max_length": 64})

    assert len({key(topk), key(sampled), key(CachePlan(targets="sampled", samples=24))}) == 3
    weights = {"lm": 1.0, "lm_kl": 1.0}
    assert lm_plan_for(weights, 64, 1.0, targets="sampled", samples=12) == CachePlan(
        targets="sampled", samples=12
    )
    assert lm_plan_for(weights, 64, 1.0) == CachePlan(topk=64)
    assert lm_plan_for({"lm": 1.0}, 64, 1.0, targets="sampled", samples=12).empty
    with pytest.raises(ValueError, match="targets 'random'"):
        CachePlan(targets="random")


def test_a_cache_written_before_sampled_targets_reads_and_hashes_as_topk():
    # The manifest plan and the key of a top-k cache as they were written before `targets`
    # existed: the same plan now hashes to the same key, so such caches still hit.
    old_plan = {"layers": [], "pooled": False, "logits": False, "topk": 8, "temperature": 2.0}
    plan = CachePlan.from_dict(old_plan)
    assert plan == CachePlan(topk=8, temperature=2.0) and plan.targets == "topk"
    assert json.loads(json.dumps(plan.as_dict())) == old_plan
    settings = {"format": 2, "max_length": 64}
    blob = json.dumps(
        {"teacher": "t", "rows": "r", "plan": old_plan, "settings": settings}, sort_keys=True
    )
    old_key = hashlib.sha256(blob.encode()).hexdigest()[:24]
    assert cache_key(teacher="t", rows="r", plan=plan, settings=settings) == old_key
    manifest = {"format": 2, "plan": old_plan, "splits": {"train": {"rows": 0, "shards": []}}}
    assert ShardedCache(manifest, str).plan.targets == "topk"


def test_the_driver_never_serves_a_topk_cache_to_a_sampled_run(tmp_path, gpt2_dir):
    from distill.cluster.cache_store import CACHE_DIR, resolve_cache
    from distill.cluster.storage import LocalStorage

    folder, _, _ = gpt2_dir
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS * 4) + "\n")

    def spec(*extra):
        return load_spec(
            None,
            [f"teacher.name={folder}", f"data.train.path={data}", "data.eval_fraction=0.2",
             "objective.weights={lm: 1.0, lm_kl: 1.0}", "teacher.cache.mode=auto", *extra],
        )  # fmt: skip

    storage = LocalStorage(tmp_path / "run")
    topk, _ = resolve_cache(spec(), storage)
    sampled, _ = resolve_cache(spec("teacher.cache.targets=sampled"), storage)
    assert topk.plan == CachePlan(topk=64) and sampled.plan == CachePlan(
        targets="sampled", samples=12
    )
    assert sampled.key != topk.key and sampled.info()["plan"]["targets"] == "sampled"
    (tmp_path / "run" / CACHE_DIR / topk.key).mkdir(parents=True)
    (tmp_path / "run" / CACHE_DIR / topk.key / MANIFEST_FILE).write_text("{}")
    assert resolve_cache(spec("teacher.cache.mode=required"), storage)[0].hit
    with pytest.raises(SpecError, match="teacher.cache: mode required, but .* holds no complete"):
        resolve_cache(spec("teacher.cache.mode=required", "teacher.cache.targets=sampled"), storage)
    more, _ = resolve_cache(
        spec("teacher.cache.targets=sampled", "teacher.cache.samples=24"), storage
    )
    assert more.key not in (sampled.key, topk.key)


@pytest.mark.parametrize(
    ("overrides", "field", "detail"),
    [
        (["teacher.cache.targets=random"], "teacher.cache.targets", "got 'random'"),
        (["teacher.cache.targets=sampled", "teacher.cache.samples=0"], "teacher.cache.samples",
         "greater than or equal to 1"),
        (["teacher.cache.targets=sampled", "teacher.cache.samples=5000"],
         "teacher.cache.samples", "less than or equal to 4096"),
        (["teacher.cache.samples=32"], "teacher.cache.samples",
         "32 draws per token apply to targets: sampled; targets is topk"),
        (["teacher.cache.targets=sampled", "teacher.cache.topk=32"], "teacher.cache.topk",
         "32 logits per token apply to targets: topk"),
    ],
)  # fmt: skip
def test_bad_cache_target_settings_fail_in_one_line_naming_the_field(overrides, field, detail):
    with pytest.raises(SpecError) as err:
        load_spec(None, overrides)
    message = str(err.value)
    assert message.startswith(f"{field}: ") and detail in message and "\n" not in message


def test_sampled_targets_take_forward_kl_only_and_survive_a_resolved_config(gpt2_dir):
    _, teacher, _ = gpt2_dir
    good = load_spec(
        None,
        ["teacher.cache.mode=auto", "teacher.cache.targets=sampled", "teacher.cache.samples=32"],
    )
    assert (good.teacher.cache.targets, good.teacher.cache.samples) == ("sampled", 32)
    # A resolved config writes every field out (topk 64 included) and must read back.
    assert JobSpec.model_validate_json(good.model_dump_json()) == good
    for loss in ("lm_reverse_kl", "lm_jsd"):
        spec = load_spec(
            None,
            ["teacher.name=unused", "teacher.cache.mode=auto", "teacher.cache.targets=sampled",
             f"objective.weights={{lm: 1.0, {loss}: 1.0}}"],
        )  # fmt: skip
        with pytest.raises(SpecError) as err:
            FAMILIES["causal"].resolve_stage(
                spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
            )
        message = str(err.value)
        assert message.startswith("teacher.cache.targets: sampled estimates the forward KL")
        assert loss in message and "\n" not in message
    # With the cache off, the targets setting is inert: reverse KL runs on the live teacher.
    off = load_spec(
        None,
        ["teacher.name=unused", "teacher.cache.targets=sampled", "student.layers=1",
         "objective.weights={lm: 1.0, lm_reverse_kl: 1.0}"],
    )  # fmt: skip
    FAMILIES["causal"].resolve_stage(
        off, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
    )
