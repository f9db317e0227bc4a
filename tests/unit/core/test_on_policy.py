"""On-policy distillation (GKD, `objective.on_policy`) on tiny GPT-2 and BART models (CPU, no
Ray): the branch is a pure function of (seed, step), alike on every rank and across a resume;
fraction 0 trains bit for bit as without the field; the student's samples become a batch
whose divergence counts the sampled positions only (causal: prompt and padding masked;
seq2seq: the samples are the decoder targets; across tokenizers: the teacher re-tokenizes the
text); prompts come from a `prompt` column or each text's prefix; bad input is one line
naming the field."""

from __future__ import annotations

import datasets
import pytest
import torch
from helpers.family_zoo import build_teacher, lm_tokenizer

from distill.core.data import DataSource, load_texts, teacher_view
from distill.core.family_registry import FAMILIES
from distill.core.generative import (
    PROMPT_IDS,
    SAMPLED,
    BatchIds,
    OnPolicySettings,
    causal_targets,
    on_policy_step,
    sample_continuations,
    with_prompts,
)
from distill.core.generative_family import on_policy_record
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.core.teacher import freeze
from distill.core.token_losses import IGNORE_INDEX, token_kd, uld_distance

TEXTS = [
    "Return the number of items in the list.",
    "Close the file.",
    "A new socket object.",
    "Raise an error if the file does not exist.",
]
GKD = "objective.on_policy={fraction: 1.0, max_new_tokens: 6}"


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return lm_tokenizer("gpt2")  # the packaged tiny-gpt2 BPE


@pytest.fixture(scope="module")
def bart_tokenizer():
    return lm_tokenizer("bart")


@pytest.fixture
def gpt2(gpt2_tokenizer):
    return freeze(build_teacher("gpt2", gpt2_tokenizer, seed=3))  # 4 layers x 32


@pytest.fixture
def bart(bart_tokenizer):
    return freeze(build_teacher("bart", bart_tokenizer, seed=4))  # 3 + 3 layers x 32


def _spec(*overrides: str):
    base = ["teacher.name=unused", "student.layers=2", "data.max_length=24", "training.seed=7"]
    return load_spec(None, base + list(overrides))


def _causal(gpt2, tokenizer, *overrides, weights="{lm: 1.0, lm_kl: 1.0}", rows=None):
    """(family, spec, trainable model, a collated batch with prompts) of a GPT-2 student."""
    spec = _spec(f"objective.weights={weights}", *overrides)
    family = FAMILIES["causal"]
    spec = family.resolve_stage(
        spec, "distill", gpt2.config, teacher_has_weights=True, teacher_has_head=False
    )
    model = family.trainable(spec, gpt2, tokenizer)
    texts = rows or datasets.Dataset.from_dict({"text": TEXTS, "prompt": [""] * len(TEXTS)})
    texts = with_prompts(texts, tokenizer, prefix_fraction=0.5, max_length=24)
    tokenize, collate = family.batch_functions(tokenizer)
    return family, spec, model, collate(list(tokenize(texts, tokenizer, 24)))


# --- the branch ------------------------------------------------------------------------------


def test_the_branch_is_a_pure_function_of_seed_and_step():
    state = torch.get_rng_state()
    draws = [on_policy_step(7, step, 0.3) for step in range(1, 2001)]
    assert torch.equal(torch.get_rng_state(), state)  # no random state read or advanced
    torch.manual_seed(99)  # another global RNG state (another rank, a resumed process)
    assert [on_policy_step(7, step, 0.3) for step in range(1, 2001)] == draws
    assert 0.27 < sum(draws) / len(draws) < 0.33
    assert [on_policy_step(8, step, 0.3) for step in range(1, 2001)] != draws  # the seed counts
    assert not any(on_policy_step(7, step, 0.0) for step in range(1, 500))
    assert all(on_policy_step(7, step, 1.0) for step in range(1, 500))
    # Resuming at step 1001 continues the same sequence: the draw never depends on history.
    assert [on_policy_step(7, step, 0.3) for step in range(1001, 2001)] == draws[1000:]


def test_ranks_take_the_same_branch_and_sample_their_own_tokens(gpt2, gpt2_tokenizer):
    family, spec, model, batch = _causal(
        gpt2, gpt2_tokenizer, "objective.on_policy={fraction: 0.5, max_new_tokens: 6}"
    )
    branches, samples = {}, {}
    for rank in (0, 1, 2):
        for step in range(1, 9):
            out = family.on_policy_batch(model, batch, spec, step=step, stream=(rank, 0))
            branches.setdefault(step, set()).add(SAMPLED in out)
            if SAMPLED in out:
                samples.setdefault(step, []).append(out["input_ids"])
            else:
                assert out is batch  # the data's batch, untouched
    assert all(len(taken) == 1 for taken in branches.values())  # every rank alike
    taken = {step: next(iter(t)) for step, t in branches.items()}
    assert taken == {s: on_policy_step(7, s, 0.5) for s in range(1, 9)}
    assert True in taken.values() and False in taken.values()
    step = min(samples)
    first, second, _ = samples[step]
    assert not torch.equal(first, second)  # each rank's stream samples its own tokens
    # The same (step, stream) samples the same tokens again: a resumed step repeats itself.
    again = family.on_policy_batch(model, batch, spec, step=step, stream=(0, 0))
    assert torch.equal(again["input_ids"], first)


def test_fraction_zero_trains_bit_for_bit_as_without_the_field(gpt2, gpt2_tokenizer, tmp_path):
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS * 4) + "\n")
    from distill.cluster.job_data import train_eval_texts

    losses = {}
    for name, extra in (("without", []), ("zero", ["objective.on_policy={fraction: 0.0}"])):
        spec = _spec(f"data.train.path={data}", "objective.weights={lm: 1.0, lm_jsd: 1.0}", *extra)
        family = FAMILIES["causal"]
        spec = family.resolve_stage(
            spec, "distill", gpt2.config, teacher_has_weights=True, teacher_has_head=False
        )
        train, _ = train_eval_texts(spec)
        assert train.column_names == ["text"]  # no prompts are read
        torch.manual_seed(0)
        model = family.trainable(spec, gpt2, gpt2_tokenizer)
        tokenize, collate = family.batch_functions(gpt2_tokenizer)
        batch = collate(list(tokenize(train, gpt2_tokenizer, 24))[:4])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[name] = []
        for step in range(1, 4):
            state = torch.get_rng_state()
            step_batch = family.on_policy_batch(model, batch, spec, step=step, stream=(0, 0))
            assert step_batch is batch and torch.equal(torch.get_rng_state(), state)
            loss, _ = model(step_batch, family.teacher_outputs(model, gpt2, None, step_batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
    assert losses["zero"] == losses["without"]


# --- the sampled batch -----------------------------------------------------------------------


def test_causal_samples_train_the_divergence_on_sampled_positions_only(gpt2, gpt2_tokenizer):
    family, spec, model, batch = _causal(gpt2, gpt2_tokenizer, GKD)
    state = torch.get_rng_state()
    sampled = family.on_policy_batch(model, batch, spec, step=1, stream=(0, 0))
    assert torch.equal(torch.get_rng_state(), state)  # sampled under a forked RNG
    assert model.student.training  # back in training mode after sampling in eval mode
    ids, mask, labels = sampled["input_ids"], sampled["attention_mask"], sampled["labels"]
    prompts = batch["prompt_attention_mask"].sum(1)
    for row in range(ids.shape[0]):
        n = int(prompts[row])
        real = batch["prompt_input_ids"][row, -n:]
        assert torch.equal(ids[row, :n], real)  # right-padded: the prompt comes first
        assert (labels[row, :n] == IGNORE_INDEX).all()  # the prompt is never a target
        new = labels[row, n:][mask[row, n:].bool()]
        assert 1 <= len(new) <= 6 and (new != IGNORE_INDEX).all()
        assert (labels[row][mask[row] == 0] == IGNORE_INDEX).all()  # nor is padding
    assert ids.shape[1] <= batch["prompt_input_ids"].shape[1] + 6

    teacher_out = family.teacher_outputs(model, gpt2, None, sampled)
    model.eval()
    with torch.no_grad():
        _, parts = model(sampled, teacher_out)
        s = model.student(input_ids=ids, attention_mask=mask).logits
        t = gpt2(input_ids=ids, attention_mask=mask).logits
    assert set(parts) == {"lm_kl"}  # `lm` learns the data's tokens: not on samples
    on_samples = causal_targets(sampled) != IGNORE_INDEX
    assert on_samples.sum() == (labels != IGNORE_INDEX).sum()
    assert parts["lm_kl"].item() == pytest.approx(token_kd(s, t, on_samples).item(), rel=1e-5)
    everywhere = token_kd(s, t, mask.bool()).item()
    assert parts["lm_kl"].item() != pytest.approx(everywhere, rel=1e-3)  # the mask matters


def test_samples_stop_at_eos_and_are_padded_to_max_new_tokens(gpt2_tokenizer):
    class Scripted(torch.nn.Module):
        """Appends fixed tokens (row 0 stops at EOS 0 after two)."""

        def generate(self, input_ids, attention_mask, **options):
            assert options["do_sample"] and options["top_k"] == 0
            assert options["max_new_tokens"] == 5 and options["synced_gpus"] is False
            new = torch.tensor([[7, 8, 0, 0], [9, 10, 11, 12]])
            return torch.cat([input_ids, new], dim=1)

    batch = {
        "prompt_input_ids": torch.tensor([[0, 5, 6], [4, 5, 6]]),
        "prompt_attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
    }
    ids = BatchIds(seq2seq=False, pad=0, eos=0)
    out = sample_continuations(Scripted(), batch, ids, OnPolicySettings(5, max_length=24), seed=1)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 0, 0, 0, 0], [4, 5, 6, 9, 10, 11, 12, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1] * 7 + [0]]
    x = IGNORE_INDEX
    assert out["labels"].tolist() == [[x, x, 7, 8, 0, x, x, x], [x, x, x, 9, 10, 11, 12, x]]


def test_seq2seq_student_samples_the_decoder_targets_of_each_source(bart, bart_tokenizer):
    family = FAMILIES["seq2seq"]
    spec = _spec(
        "task={type: seq2seq}", "objective.weights={lm: 1.0, lm_jsd: 1.0}", GKD, "student.layers=1"
    )
    spec = family.resolve_stage(
        spec, "distill", bart.config, teacher_has_weights=True, teacher_has_head=False
    )
    model = family.trainable(spec, bart, bart_tokenizer)
    pairs = datasets.Dataset.from_dict({"text": TEXTS, "target": ["close file"] * len(TEXTS)})
    assert with_prompts(pairs, bart_tokenizer, prefix_fraction=0.5, max_length=24) is pairs
    tokenize, collate = family.batch_functions(bart_tokenizer)
    batch = family.prepare_batch(
        model, collate(list(tokenize(pairs, bart_tokenizer, 24))), torch.Generator()
    )
    sampled = family.on_policy_batch(model, batch, spec, step=3, stream=(0, 0))
    assert torch.equal(sampled["input_ids"], batch["input_ids"])  # the source is the prompt
    labels = sampled["labels"]
    assert labels.shape == (len(TEXTS), 6)  # padded to max_new_tokens on every rank
    for row in labels.tolist():
        real = [t for t in row if t != IGNORE_INDEX]
        assert real == row[: len(real)] and 2 not in real[:-1]  # stops at its first EOS
    assert torch.equal(sampled["decoder_input_ids"][:, 0], torch.full((len(TEXTS),), 2))
    assert torch.equal(sampled["decoder_input_ids"][:, 1:2], labels[:, :1].clamp(min=1))
    loss, parts = model(sampled, family.teacher_outputs(model, bart, None, sampled))
    assert set(parts) == {"lm_jsd"} and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in bart.parameters())


def test_across_tokenizers_the_teacher_scores_the_sampled_text_with_its_own_tokens(
    tiny_tokenizer, tmp_path
):
    """A Qwen2 student on a WordPiece vocabulary, a Llama teacher on byte-level BPE: the
    student's samples are decoded and re-tokenized for the teacher; `uld` pairs the sampled
    positions of both in order."""
    bpe = lm_tokenizer("llama")
    teacher = freeze(build_teacher("llama", bpe, seed=1))
    folder = tmp_path / "qwen2"
    build_teacher("qwen2", tiny_tokenizer, seed=2).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    family = FAMILIES["causal"]
    spec = load_spec(
        None,
        ["teacher.name=unused", "student.init=pretrained", f"student.name={folder}", GKD,
         "data.max_length=24"],
    )  # fmt: skip
    spec = family.resolve_stage(
        spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False,
        cross_tokenizer=True,
    )  # fmt: skip
    assert spec.objective.weights == {"lm": 1.0, "uld": 1.0}
    model = family.trainable(spec, teacher, tiny_tokenizer)
    texts = ["the cat sat on the mat", "a good movie and a great story", "it was a dark night"]
    rows = datasets.Dataset.from_dict({"text": texts, "prompt": [""] * 3})
    rows = with_prompts(rows, tiny_tokenizer, prefix_fraction=0.5, max_length=24)
    assert rows[0][PROMPT_IDS] == tiny_tokenizer("the cat sat")["input_ids"][:-1]  # no [SEP]
    tokenize, collate = family.batch_functions(tiny_tokenizer, bpe)
    batch = collate(list(tokenize(rows, tiny_tokenizer, 24)))
    assert "teacher_prompt_input_ids" not in batch  # prompts are the student's only
    sampled = family.on_policy_batch(
        model, batch, spec, step=1, stream=(0, 0), tokenizer=tiny_tokenizer, teacher_tokenizer=bpe
    )
    view = teacher_view(sampled)
    for row in range(3):
        words = sampled["input_ids"][row][sampled["attention_mask"][row].bool()].tolist()
        text = tiny_tokenizer.decode(words, skip_special_tokens=True)
        assert (
            view["input_ids"][row][view["attention_mask"][row].bool()].tolist()
            == bpe(text)["input_ids"][:24]
        )
        sampled_text = bpe.decode(
            [t for t in view["labels"][row].tolist() if t != IGNORE_INDEX]
        ).strip()
        prompt = tiny_tokenizer.decode(batch["prompt_input_ids"][row], skip_special_tokens=True)
        assert text.startswith(prompt) and sampled_text in text[len(prompt) :]
    model.eval()
    with torch.no_grad():
        _, parts = model(sampled, family.teacher_outputs(model, teacher, None, sampled))
        s = model.student(sampled["input_ids"], attention_mask=sampled["attention_mask"]).logits
        t = teacher(view["input_ids"], attention_mask=view["attention_mask"]).logits
    assert set(parts) == {"uld"}
    expected = uld_distance(
        s, t, causal_targets(sampled) != IGNORE_INDEX, causal_targets(view) != IGNORE_INDEX
    )
    assert parts["uld"].item() == pytest.approx(expected.item(), abs=1e-5)


# --- prompts ---------------------------------------------------------------------------------


def test_prompts_come_from_a_prompt_column_else_the_texts_prefix(gpt2_tokenizer, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,text\nOpen the,Open the file now.\n,Close the file at once.\n")
    rows = load_texts(DataSource(str(path)), prompts=True)
    assert set(rows.column_names) == {"text", "prompt"} and rows["prompt"] == ["Open the", ""]
    assert load_texts(DataSource(str(path))).column_names == ["text"]  # only when asked
    plain = tmp_path / "plain.txt"
    plain.write_text("Close the file at once.\n")
    assert load_texts(DataSource(str(plain)), prompts=True)["prompt"] == [""]

    out = with_prompts(rows, gpt2_tokenizer, prefix_fraction=0.5, max_length=24)
    ids = gpt2_tokenizer("Close the file at once.")["input_ids"]
    assert out[0][PROMPT_IDS] == gpt2_tokenizer("Open the")["input_ids"]
    assert out[1][PROMPT_IDS] == ids[: len(ids) // 2]
    family = FAMILIES["causal"]
    tokenize, collate = family.batch_functions(gpt2_tokenizer)
    batch = collate(list(tokenize(out, gpt2_tokenizer, 24)))
    own = gpt2_tokenizer("Open the file now.")["input_ids"]
    assert batch["input_ids"][0].tolist()[: len(own)] == own  # the text trains as it is
    mask = batch["prompt_attention_mask"]
    assert mask[:, -1].all() and mask.sum(1).tolist() == [2, len(ids) // 2]  # left-padded


# --- preflight, cache and report -------------------------------------------------------------


@pytest.fixture
def gpt2_dir(tmp_path, gpt2, gpt2_tokenizer):
    folder = tmp_path / "gpt2-teacher"
    gpt2.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    text = tmp_path / "texts.txt"
    text.write_text("\n".join(TEXTS * 10) + "\n")
    return folder, text


def _preflight(gpt2_dir, *overrides):
    from distill.jobs.preflight import preflight_stages

    teacher, text = gpt2_dir
    base = [f"teacher.name={teacher}", f"data.train.path={text}", "training.batch_size=4"]
    return preflight_stages(load_spec(None, base + ["student.layers=2", *overrides]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.on_policy={fraction: 1.5}"], "objective.on_policy.fraction: "),
        (["objective.on_policy={fraction: -0.1}"], "objective.on_policy.fraction: "),
        (["objective.on_policy={max_new_tokens: 0}"], "objective.on_policy.max_new_tokens: "),
        (["objective.on_policy={top_p: 0}"], "objective.on_policy.top_p: "),
        (
            [GKD, "data.max_length=6"],
            "objective.on_policy.max_new_tokens: 6 does not fit data.max_length 6",
        ),
        (
            [GKD, "objective.weights={lm: 1.0}"],
            "objective.on_policy: trains the student's samples on a divergence",
        ),
        ([GKD, "teacher.cache.mode=required"], "teacher.cache.mode: required, but objective."),
    ],
)
def test_bad_on_policy_specs_fail_naming_the_field(gpt2_dir, overrides, message):
    with pytest.raises(SpecError) as err:
        _preflight(gpt2_dir, *overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_on_policy_needs_a_generative_distill_stage_with_prompts(
    gpt2, bart, tiny_bert, teacher_dir
):
    spec = _spec(GKD)
    cases = [
        (FAMILIES["encoder"], tiny_bert.config, "distill", False, "needs a causal or seq2seq"),
        (FAMILIES["causal"], gpt2.config, "finetune", False, "needs a distill stage"),
        (FAMILIES["causal"], gpt2.config, "distill", True, "the teacher has a task head"),
        (FAMILIES["seq2seq"], bart.config, "distill", False, "no prompts: a seq2seq teacher"),
    ]
    for family, config, kind, head, message in cases:
        one = spec if kind == "distill" else _spec(GKD, "objective.weights={lm: 1.0}")
        with pytest.raises(SpecError) as err:
            family.resolve_stage(one, kind, config, teacher_has_weights=True, teacher_has_head=head)
        assert str(err.value).startswith("objective.on_policy: ") and message in str(err.value)


def test_a_cache_in_auto_mode_is_bypassed_and_the_report_counts_on_policy_steps(gpt2_dir, gpt2):
    (stage,) = _preflight(
        gpt2_dir,
        "objective.on_policy={fraction: 0.5, max_new_tokens: 8}",
        "objective.weights={lm: 1.0, lm_kl: 1.0}",
        "teacher.cache.mode=auto",
        "training.steps=40",
    )
    plan, reason = FAMILIES["causal"].cache_plan(stage.spec, gpt2.config, ["input_ids"])
    assert plan is None and reason.startswith("objective.on_policy: the teacher scores")
    record = on_policy_record(stage.spec)["on_policy"]
    drawn = sum(on_policy_step(stage.spec.training.seed, s, 0.5) for s in range(1, 41))
    assert record["steps"] == drawn and record["of_steps"] == 40 and 0 < drawn < 40
    assert record["fraction_of_steps"] == drawn / 40
    assert (record["fraction"], record["max_new_tokens"], record["top_p"]) == (0.5, 8, 1.0)
    assert on_policy_record(_spec()) == {}
