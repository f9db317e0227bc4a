"""Teacher and student with different tokenizers (`student.init: pretrained` with
`student.name`): each model tokenizes the text itself; sentence-level encoder objectives
(pooled vectors through a projection) train across tokenizers, and a causal student
trains on the LM loss and ULD (target positions aligned by their order); token-aligned
objectives, MixKD, one-vocabulary token KD and seq2seq students are refused in one line; a
pretrained student of the same tokenizer takes every objective. Preflight checks the
student folder like a teacher's."""

from __future__ import annotations

import datasets
import pytest
import torch
from helpers.family_zoo import build_teacher, lm_tokenizer, save_teacher
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.core.data import (
    collate_for_both,
    teacher_view,
    tokenize_for_both,
    tokenizers_differ,
)
from distill.core.export import PROBE_TEXTS, load_encoder
from distill.core.family_registry import FAMILIES
from distill.core.generative import causal_targets, probe_logits
from distill.core.generative_eval import shared_prefixes
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.core.teacher import freeze
from distill.core.token_losses import IGNORE_INDEX, uld_distance

TEXTS = ["the cat sat on the mat", "a good movie and a great story", "it was a dark night"]


@pytest.fixture
def bpe_student(tmp_path):
    """A pretrained DistilBERT-type student (hidden 32 -> 16 via its own config) with a
    byte-level BPE tokenizer of 2,048 tokens: a different model type and vocabulary."""
    tokenizer = lm_tokenizer("gpt2")
    model = build_teacher("distilbert", tokenizer, seed=5)
    folder = tmp_path / "student"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _train(model, family, teacher, batch, *, steps: int, lr: float, parts: set) -> list[float]:
    """`steps` AdamW steps of `model` on one batch (each returning exactly the loss terms
    `parts`); the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, terms = model(batch, family.teacher_outputs(model, teacher, None, batch))
        assert set(terms) == parts
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _resolve(teacher_dir, tiny_bert, overrides, cross=True):
    spec = load_spec(None, [f"teacher.name={teacher_dir}", *overrides])
    return FAMILIES["encoder"].resolve_stage(
        spec,
        "distill",
        tiny_bert.config,
        teacher_has_weights=True,
        teacher_has_head=False,
        cross_tokenizer=cross,
    )


def test_batches_carry_each_models_own_token_ids(tiny_tokenizer):
    bpe = lm_tokenizer("gpt2")
    assert tokenizers_differ(bpe, tiny_tokenizer) and not tokenizers_differ(bpe, bpe)
    rows = tokenize_for_both(
        datasets.Dataset.from_dict({"text": TEXTS}), bpe, 32, teacher_tokenizer=tiny_tokenizer
    )
    batch = collate_for_both(bpe, tiny_tokenizer)(list(rows))
    own = tiny_tokenizer(TEXTS, padding=True, return_tensors="pt")
    theirs = bpe(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(batch["teacher_input_ids"], own["input_ids"])
    assert torch.equal(batch["input_ids"], theirs["input_ids"])
    view = teacher_view(batch)
    assert torch.equal(view["input_ids"], own["input_ids"])
    assert torch.equal(view["attention_mask"], own["attention_mask"])
    plain = {"input_ids": own["input_ids"], "attention_mask": own["attention_mask"]}
    assert teacher_view(plain) is plain


def test_sentence_objectives_train_across_tokenizers_and_export_the_students_tokenizer(
    teacher_dir, tiny_bert, tiny_tokenizer, bpe_student, tmp_path
):
    spec = _resolve(
        teacher_dir, tiny_bert, ["student.init=pretrained", f"student.name={bpe_student}"]
    )
    assert spec.objective.weights == {"pooled_mse": 1.0, "pooled_cosine": 1.0}  # the default
    assert (spec.student.layers, spec.student.hidden) == (4, 32)  # the student's own shape
    family = FAMILIES["encoder"]
    student_tok = AutoTokenizer.from_pretrained(bpe_student)
    model = family.trainable(spec, tiny_bert, student_tok).eval()
    assert type(model.student).__name__ == "DistilBertModel"
    tokenize, collate = family.batch_functions(student_tok, tiny_tokenizer)
    rows = tokenize(datasets.Dataset.from_dict({"text": TEXTS}), student_tok, 32)
    batch = collate(list(rows))
    losses = _train(
        model, family, tiny_bert, batch, steps=5, lr=1e-3, parts={"pooled_mse", "pooled_cosine"}
    )
    assert losses[-1] < losses[0]

    out = tmp_path / "export"
    probe = family.export(model, student_tok, out, max_length=32, st_teacher=None)
    exported = load_encoder(out)
    ids = exported.tokenizer(TEXTS)["input_ids"]  # its own tokenizer, not the teacher's
    assert ids == student_tok(TEXTS)["input_ids"] != tiny_tokenizer(TEXTS)["input_ids"]
    assert torch.allclose(exported.encode(PROBE_TEXTS, max_length=32), probe, atol=1e-5)


def test_a_narrower_student_trained_on_similarities_exports_its_own_space(
    teacher_dir, tiny_bert, tiny_tokenizer, bpe_student, tmp_path
):
    """`pooled_similarity` alone needs no projection: a 16-wide pretrained student with its
    own tokenizer learns the 32-wide teacher's in-batch similarities in its own space, and its
    export is that space (no 2_Dense), reproducing the trained outputs."""
    from transformers import DistilBertConfig, DistilBertModel

    bpe = AutoTokenizer.from_pretrained(bpe_student)
    config = DistilBertConfig(
        vocab_size=len(bpe), dim=16, hidden_dim=32, n_layers=2, n_heads=2, pad_token_id=0
    )
    torch.manual_seed(3)
    folder = tmp_path / "narrow"
    DistilBertModel(config).save_pretrained(folder)
    bpe.save_pretrained(folder)
    spec = _resolve(
        teacher_dir,
        tiny_bert,
        [
            "student.init=pretrained",
            f"student.name={folder}",
            "objective.weights={pooled_similarity: 1}",
        ],
    )
    family = FAMILIES["encoder"]
    model = family.trainable(spec, tiny_bert, bpe).eval()
    assert len(model.objective.projections) == 0
    tokenize, collate = family.batch_functions(bpe, tiny_tokenizer)
    rows = tokenize(datasets.Dataset.from_dict({"text": TEXTS * 2}), bpe, 32)
    batch = collate(list(rows))
    losses = _train(model, family, tiny_bert, batch, steps=8, lr=1e-2, parts={"pooled_similarity"})
    assert losses[-1] < losses[0]
    out = tmp_path / "export"
    probe = family.export(model, bpe, out, max_length=32, st_teacher=None)
    assert not (out / "2_Dense").exists()
    exported = load_encoder(out)
    vectors = exported.encode(PROBE_TEXTS, max_length=32)
    assert vectors.shape[-1] == 16
    assert torch.allclose(vectors, probe, atol=1e-5)


def test_pretrained_student_must_be_of_the_teachers_family(teacher_dir, tiny_bert, tmp_path):
    tokenizer = lm_tokenizer("gpt2")
    narrow = build_teacher("llama", tokenizer)  # a decoder cannot be an encoder's student
    folder = tmp_path / "decoder"
    narrow.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(SpecError, match=r"^student.name: .* is a causal model \(llama\)"):
        _resolve(teacher_dir, tiny_bert, ["student.init=pretrained", f"student.name={folder}"])

    small = save_teacher("bert", tmp_path / "small", tokenizer)  # 4 x 32, BPE vocabulary
    spec = _resolve(teacher_dir, tiny_bert, ["student.init=pretrained", f"student.name={small}"])
    model = FAMILIES["encoder"].trainable(spec, tiny_bert, tokenizer)
    assert "pooled" not in model.objective.projections  # same width: none needed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.weights={hidden_mse: 1}"], r"^objective.weights: \['hidden_mse'\] compare"),
        (["objective.weights={minilmv2_relations: 1}"], r"^objective.weights: \['minilmv2_"),
        (
            ["objective.weights={pooled_mse: 1}", "objective.mixup={alpha: 0.4}"],
            r"^objective.mixup",
        ),
        (["student.hidden=16"], r"^student.hidden: a pretrained student keeps its own shape"),
    ],
)
def test_token_aligned_objectives_are_refused_across_tokenizers(
    teacher_dir, tiny_bert, bpe_student, overrides, message
):
    with pytest.raises(SpecError, match=message) as err:
        _resolve(
            teacher_dir,
            tiny_bert,
            ["student.init=pretrained", f"student.name={bpe_student}", *overrides],
        )
    assert "\n" not in str(err.value)


def test_same_tokenizer_pretrained_student_takes_token_objectives(teacher_dir, tiny_bert, tmp_path):
    folder = tmp_path / "same"
    build_teacher("distilbert", _wordpiece(teacher_dir)).save_pretrained(folder)
    _wordpiece(teacher_dir).save_pretrained(folder)
    spec = _resolve(
        teacher_dir, tiny_bert, ["student.init=pretrained", f"student.name={folder}"], cross=False
    )
    assert spec.objective.weights == {"hidden_mse": 1.0, "pooled_cosine": 1.0}


def _wordpiece(teacher_dir):
    return AutoTokenizer.from_pretrained(teacher_dir)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["student.init=pretrained"], r"^student.name: student.init: pretrained needs"),
        (["student.name=/somewhere"], r"^student.name: only with student.init: pretrained"),
    ],
)
def test_pretrained_needs_a_name_and_a_name_needs_pretrained(
    teacher_dir, tiny_bert, overrides, message
):
    with pytest.raises(SpecError, match=message):
        _resolve(teacher_dir, tiny_bert, overrides, cross=False)


@pytest.fixture
def causal_pair(tiny_tokenizer, tmp_path):
    """A Llama teacher on the packaged 2,048-token byte-level BPE and a pretrained Qwen2
    student on the 99-word WordPiece (lower-cased words, [CLS]/[SEP]): two tokenizations
    that differ in vocabulary, segmentation and special tokens."""
    bpe = lm_tokenizer("llama")
    teacher = freeze(build_teacher("llama", bpe, seed=1))
    folder = tmp_path / "qwen2"
    build_teacher("qwen2", tiny_tokenizer, seed=2).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return teacher, bpe, str(folder), AutoTokenizer.from_pretrained(folder)


def _resolve_causal(teacher, student_dir, overrides=(), cross=True, family="causal"):
    spec = load_spec(
        None,
        ["teacher.name=unused", "student.init=pretrained", f"student.name={student_dir}"]
        + list(overrides),
    )
    return FAMILIES[family].resolve_stage(
        spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False,
        cross_tokenizer=cross,
    )  # fmt: skip


def test_causal_batches_carry_both_tokenizations(causal_pair):
    _, bpe, _, wordpiece = causal_pair
    tokenize, collate = FAMILIES["causal"].batch_functions(wordpiece, bpe)
    rows = tokenize(datasets.Dataset.from_dict({"text": TEXTS}), wordpiece, 32)
    batch = collate(list(rows))
    own = wordpiece(TEXTS, padding=True, return_tensors="pt")
    theirs = bpe(TEXTS, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(batch[key], own[key])  # the student reads its own ids
        assert torch.equal(batch[f"teacher_{key}"], theirs[key])  # the teacher its own
    assert torch.equal(teacher_view(batch)["input_ids"], theirs["input_ids"])
    assert batch["input_ids"].shape != batch["teacher_input_ids"].shape  # 8 vs 9 tokens
    plain_tokenize, plain_collate = FAMILIES["causal"].batch_functions(wordpiece)
    plain = plain_collate(
        list(plain_tokenize(datasets.Dataset.from_dict({"text": TEXTS}), wordpiece, 32))
    )
    assert set(plain) == {"input_ids", "attention_mask"}


def test_causal_student_with_another_tokenizer_trains_on_lm_and_uld(causal_pair, tmp_path):
    teacher, bpe, student_dir, wordpiece = causal_pair
    spec = _resolve_causal(teacher, student_dir)
    assert spec.objective.weights == {"lm": 1.0, "uld": 1.0}  # the default across tokenizers
    family = FAMILIES["causal"]
    model = family.trainable(spec, teacher, wordpiece)
    assert type(model.student).__name__ == "Qwen2ForCausalLM"
    tokenize, collate = family.batch_functions(wordpiece, bpe)
    batch = collate(list(tokenize(datasets.Dataset.from_dict({"text": TEXTS}), wordpiece, 32)))

    # The `uld` part is ULD of the two models' own logits on their own tokenizations.
    model.eval()
    with torch.no_grad():
        _, parts = model(batch, family.teacher_outputs(model, teacher, None, batch))
        s_logits = model.student(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_logits = teacher(
            batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
        ).logits
    s_mask = causal_targets(batch) != IGNORE_INDEX
    t_mask = causal_targets(teacher_view(batch)) != IGNORE_INDEX
    expected = uld_distance(s_logits, t_logits, s_mask, t_mask)
    assert parts["uld"].item() == pytest.approx(expected.item(), abs=1e-5)

    model.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    losses = _train(model, family, teacher, batch, steps=6, lr=1e-2, parts={"lm", "uld"})
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())

    out = tmp_path / "export"
    probe = family.export(model, wordpiece, out, max_length=32, st_teacher=None)
    reloaded = AutoTokenizer.from_pretrained(out)
    assert reloaded(TEXTS)["input_ids"] == wordpiece(TEXTS)["input_ids"] != bpe(TEXTS)["input_ids"]
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(probe_logits(exported, reloaded, PROBE_TEXTS, 32), probe, atol=1e-5)


def test_sequence_kd_applies_across_tokenizers(causal_pair):
    """The teacher's continuations are text: each model tokenizes them itself."""
    teacher, _, student_dir, _ = causal_pair
    spec = _resolve_causal(teacher, student_dir, ["objective.sequence_kd={num_beams: 1}"])
    assert spec.objective.weights == {"lm": 1.0, "uld": 1.0}
    assert spec.objective.sequence_kd.prefix_fraction == 0.5


@pytest.mark.parametrize("loss", ["lm_kl", "lm_reverse_kl", "lm_jsd"])
def test_one_vocabulary_losses_are_refused_across_tokenizers(causal_pair, loss):
    teacher, _, student_dir, _ = causal_pair
    with pytest.raises(SpecError) as err:
        _resolve_causal(teacher, student_dir, [f"objective.weights={{lm: 1, {loss}: 1}}"])
    message = str(err.value)
    assert message.startswith(f"objective.weights: ['{loss}'] compare next-token distributions")
    assert "use ['lm', 'uld']" in message and "\n" not in message


def test_attention_relations_are_refused_across_tokenizers(causal_pair):
    """Relations compare seq x seq maps position by position: one tokenization only."""
    teacher, _, student_dir, _ = causal_pair
    with pytest.raises(SpecError) as err:
        _resolve_causal(teacher, student_dir, ["objective.weights={lm: 1, minilmv2_relations: 1}"])
    message = str(err.value)
    assert message.startswith(
        "objective.weights: ['minilmv2_relations'] compare self-attention position by position"
    )
    assert "use ['lm', 'uld']" in message and "\n" not in message


def test_a_batch_with_two_tokenizations_refuses_one_vocabulary_losses(causal_pair):
    teacher, bpe, student_dir, wordpiece = causal_pair
    spec = _resolve_causal(teacher, student_dir)
    spec = spec.model_copy(
        update={"objective": spec.objective.model_copy(update={"weights": {"lm_kl": 1.0}})}
    )
    family = FAMILIES["causal"]
    model = family.trainable(spec, teacher, wordpiece)
    tokenize, collate = family.batch_functions(wordpiece, bpe)
    batch = collate(list(tokenize(datasets.Dataset.from_dict({"text": TEXTS}), wordpiece, 32)))
    with pytest.raises(ValueError, match=r"objective.weights: \['lm_kl'\] need the teacher's"):
        model(batch, family.teacher_outputs(model, teacher, None, batch))


def test_uld_with_one_tokenizer_compares_the_same_positions(causal_pair):
    """Allowed (a weaker loss than lm_kl: sorting forgets which token is which): one
    tokenization aligns every target position with itself."""
    teacher, bpe, _, _ = causal_pair
    family = FAMILIES["causal"]
    spec = load_spec(
        None, ["teacher.name=unused", "student.layers=2", "objective.weights={uld: 1}"]
    )
    spec = family.resolve_stage(
        spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
    )
    model = family.trainable(spec, teacher, bpe).eval()
    batch = family.batch_functions(bpe)[1](
        list(family.batch_functions(bpe)[0](datasets.Dataset.from_dict({"text": TEXTS}), bpe, 32))
    )
    with torch.no_grad():
        _, parts = model(batch, family.teacher_outputs(model, teacher, None, batch))
        s_logits = model.student(**batch).logits
        t_logits = teacher(**batch).logits
    mask = causal_targets(batch) != IGNORE_INDEX
    assert parts["uld"].item() == pytest.approx(
        uld_distance(s_logits, t_logits, mask, mask).item(), abs=1e-5
    )


def test_report_scores_each_model_with_its_own_tokenizer_per_character(causal_pair, tmp_path):
    teacher, bpe, student_dir, wordpiece = causal_pair
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir)
    bpe.save_pretrained(teacher_dir)
    texts = shared_prefixes(TEXTS * 4, [bpe, wordpiece], 6)
    for tokenizer in (bpe, wordpiece):  # every model scores all of the same characters
        assert all(len(ids) <= 6 for ids in tokenizer(texts)["input_ids"])
    assert all(t.startswith(c) and c for t, c in zip(TEXTS * 4, texts))
    assert texts[0] != TEXTS[0]  # cut: 6 tokens do not hold the whole sentence

    spec = _resolve_causal(
        teacher,
        student_dir,
        ["evaluation.throughput_texts=4", "evaluation.throughput_rounds=1",
         "evaluation.generation_length=2", "data.max_length=16"],
    )  # fmt: skip
    family = FAMILIES["causal"]
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    probe = probe_logits(student, wordpiece, PROBE_TEXTS, 16)
    rows = datasets.Dataset.from_dict({"text": TEXTS * 2})
    report = family.evaluate(spec, str(teacher_dir), student_dir, rows, probe)
    q = report["quality"]
    assert q["metric"] == "char_perplexity" and q["teacher"] > 1 and q["student"] > 1
    assert q["retention"] == pytest.approx(q["teacher"] / q["student"])
    assert report["export_check"]["max_abs_diff"] < 1e-5
    assert report["speed"]["teacher"] > 0 and report["speed"]["student"] > 0


def test_seq2seq_student_with_another_tokenizer_is_refused(tmp_path):
    teacher = build_teacher("bart", lm_tokenizer("bart"))
    folder = tmp_path / "bart-gpt2-bpe"
    build_teacher("bart", lm_tokenizer("gpt2"), seed=3).save_pretrained(folder)
    lm_tokenizer("gpt2").save_pretrained(folder)
    with pytest.raises(
        SpecError, match=r"^student.name: the student's tokenizer .* a seq2seq student"
    ):
        _resolve_causal(teacher, folder, family="seq2seq")


def test_generative_student_of_another_model_type_sharing_the_vocabulary(tmp_path):
    """A Llama teacher into a pretrained Qwen2 student with the same tokenizer: token KD."""
    tokenizer = lm_tokenizer("llama")
    teacher = build_teacher("llama", tokenizer, seed=1)
    student_dir = tmp_path / "qwen2"
    build_teacher("qwen2", tokenizer, seed=2).save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    spec = load_spec(
        None, ["teacher.name=unused", "student.init=pretrained", f"student.name={student_dir}"]
    )
    family = FAMILIES["causal"]
    spec = family.resolve_stage(
        spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
    )
    assert spec.objective.weights == {"lm_kl": 1.0, "lm": 1.0}
    model = family.trainable(spec, teacher, tokenizer)
    assert type(model.student).__name__ == "Qwen2ForCausalLM"
    assert family.output_config(spec, "distill", teacher.config).model_type == "qwen2"
