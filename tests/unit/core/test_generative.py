"""Generative students and objectives on tiny GPT-2 and BART models (CPU, no Ray): student
building and teacher-layer init, the LM head / target positions matching HF's own loss,
text infilling, export + reload with identical logits, and preflight errors naming fields."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
)

from distill.core.family_registry import FAMILIES, family_of, model_family
from distill.core.generative import (
    BatchIds,
    GenerativeDistillationModel,
    TokenObjective,
    TokenSettings,
    generative_collate,
    lm_head,
    prepare_seq2seq_batch,
    probe_logits,
    target_hidden,
    text_infilling,
)
from distill.core.student import StudentSize, build_student, layer_stacks
from distill.core.teacher import freeze, resolve_teacher
from distill.core.token_losses import IGNORE_INDEX

TEXTS = ["Return the number of items in the list.", "Close the file.", "A new socket object."]


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_teacher("builtin:tiny-gpt2"))


@pytest.fixture(scope="module")
def bart_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_teacher("builtin:tiny-bart"))


def _seeded(make):
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return freeze(make())


@pytest.fixture
def gpt2():
    config = GPT2Config(
        vocab_size=2048,
        n_positions=64,
        n_embd=32,
        n_layer=4,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return _seeded(lambda: GPT2LMHeadModel(config))


@pytest.fixture
def bart():
    config = BartConfig(
        vocab_size=2048,
        max_position_embeddings=64,
        d_model=32,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        dropout=0.0,
    )
    return _seeded(lambda: BartForConditionalGeneration(config))


def test_families():
    assert model_family(GPT2Config()) == "causal"
    assert model_family(BartConfig()) == "seq2seq"
    from transformers import BertConfig

    assert model_family(BertConfig()) == "encoder"
    assert family_of(GPT2Config()) is FAMILIES["causal"]
    assert FAMILIES["seq2seq"].auto_class is AutoModelForSeq2SeqLM


def build_generative_student(teacher, size, init):
    return build_student(teacher, size, init=init, auto_class=family_of(teacher.config).auto_class)


def test_gpt2_student_copies_chosen_teacher_layers(gpt2):
    student = build_generative_student(gpt2, StudentSize(2, 32, 4, 128), init="every_other_layer")
    assert isinstance(student, GPT2LMHeadModel) and student.config.n_layer == 2
    (s_blocks,), (t_blocks,) = layer_stacks(student), layer_stacks(gpt2)
    for s_block, t in zip(s_blocks, [0, 2]):
        for (name, p), q in zip(s_block.named_parameters(), t_blocks[t].parameters()):
            assert torch.equal(p, q), name
    assert torch.equal(student.transformer.wte.weight, gpt2.transformer.wte.weight)
    # The LM head stays tied to the (copied) token embeddings.
    assert student.lm_head.weight.data_ptr() == student.transformer.wte.weight.data_ptr()


def test_narrower_gpt2_student_slices_q_k_v_separately(gpt2):
    student = build_generative_student(gpt2, StudentSize(1, 16, 2, 64), init="first_k")
    s, t = student.transformer.h[0].attn.c_attn.weight, gpt2.transformer.h[0].attn.c_attn.weight
    assert s.shape == (16, 48)
    for third in range(3):  # q, k and v each keep their own leading 16 columns
        assert torch.equal(
            s[:, 16 * third : 16 * (third + 1)], t[:16, 32 * third : 32 * third + 16]
        )


def test_bart_student_has_fewer_encoder_and_decoder_layers_from_the_teacher(bart):
    student = build_generative_student(bart, StudentSize(2, 32, 4, 64, 1), init="uniform_map")
    assert isinstance(student, BartForConditionalGeneration)
    assert (student.config.encoder_layers, student.config.decoder_layers) == (2, 1)
    (s_enc, s_dec), (t_enc, t_dec) = layer_stacks(student), layer_stacks(bart)
    for s_block, t in [(s_enc[0], t_enc[0]), (s_enc[1], t_enc[2]), (s_dec[0], t_dec[2])]:
        for p, q in zip(s_block.parameters(), t.parameters()):
            assert torch.equal(p, q)


def test_gpt2_lm_loss_matches_hf_and_kd_to_itself_is_zero(gpt2, gpt2_tokenizer):
    batch = generative_collate(gpt2_tokenizer)([dict(gpt2_tokenizer(t)) for t in TEXTS])
    assert (batch["attention_mask"] == 0).any()  # the batch has padding
    hf_labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    student = build_generative_student(gpt2, StudentSize(4, 32, 4, 128), init="first_k").eval()
    expected = student(**batch, labels=hf_labels).loss
    ids = BatchIds.from_model(gpt2.config, gpt2_tokenizer)
    model = GenerativeDistillationModel(
        student,
        TokenObjective({"lm": 1.0, "lm_kl": 1.0, "lm_jsd": 1.0}, TokenSettings(num_chunks=3)),
        ids,
    )
    loss, parts = model(batch, FAMILIES["causal"].teacher_outputs(model, gpt2, None, batch))
    assert parts["lm"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["lm_kl"].item() == pytest.approx(0.0, abs=1e-5)  # identical copy
    assert parts["lm_jsd"].item() == pytest.approx(0.0, abs=1e-5)


def test_every_token_loss_runs_and_says_whether_it_crosses_tokenizers(gpt2, gpt2_tokenizer):
    """The registry: each loss builds and runs, and either works across tokenizers (`lm`,
    `uld`), compares one vocabulary or compares self-attention position by position; a
    teacher copy scores 0 on every KD term."""
    from distill.core.attention_terms import ATTENTION_LOSSES, AttentionSettings
    from distill.core.generative import (
        CROSS_TOKENIZER_LOSSES,
        SHARED_VOCABULARY_LOSSES,
        TOKEN_LOSSES,
    )

    kinds = (CROSS_TOKENIZER_LOSSES, SHARED_VOCABULARY_LOSSES, ATTENTION_LOSSES)
    assert set().union(*kinds) == set(TOKEN_LOSSES)
    assert sum(len(k) for k in kinds) == len(TOKEN_LOSSES)  # disjoint
    batch = generative_collate(gpt2_tokenizer)([dict(gpt2_tokenizer(t)) for t in TEXTS])
    student = build_generative_student(gpt2, StudentSize(4, 32, 4, 128), init="first_k").eval()
    attention = AttentionSettings(4, 4, attention_heads=4, relation_heads=4, causal=True)
    settings = TokenSettings(num_chunks=2, attention=attention)
    model = GenerativeDistillationModel(
        student,
        TokenObjective(dict.fromkeys(TOKEN_LOSSES, 1.0), settings),
        BatchIds.from_model(gpt2.config, gpt2_tokenizer),
    )
    _, parts = model(batch, FAMILIES["causal"].teacher_outputs(model, gpt2, None, batch))
    assert set(parts) == set(TOKEN_LOSSES)
    for name in set(TOKEN_LOSSES) - {"lm"}:
        assert parts[name].item() == pytest.approx(0.0, abs=1e-5), name


def test_bart_lm_loss_matches_hf_on_pairs(bart, bart_tokenizer):
    rows = [
        dict(bart_tokenizer(t)) | {"labels": bart_tokenizer(t.lower())["input_ids"]} for t in TEXTS
    ]
    batch = generative_collate(bart_tokenizer)(rows)
    ids = BatchIds.from_model(bart.config, bart_tokenizer)
    batch = prepare_seq2seq_batch(batch, ids, torch.Generator().manual_seed(0))
    expected = bart(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss  # HF shifts labels right itself
    hidden, targets = target_hidden(bart, batch)
    keep = targets != IGNORE_INDEX
    ours = torch.nn.functional.cross_entropy(lm_head(bart)(hidden[keep]), targets[keep])
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)


def test_text_infilling_masks_spans_and_keeps_bos_eos():
    ids = [0] + list(range(10, 50)) + [2]
    out = text_infilling(
        ids,
        mask_id=4,
        ratio=0.3,
        mean_span=3.0,
        generator=torch.Generator().manual_seed(0),
        keep=[0, 2],
    )
    assert out[0] == 0 and out[-1] == 2
    kept = [t for t in out if t != 4]
    assert kept == [t for t in ids if t in kept]  # order preserved, nothing invented
    assert 40 - 12 - 3 <= len(kept) - 2 <= 40 - 12 + 3  # ~30% of 40 body tokens removed
    assert 4 in out and all(not (a == b == 4) for a, b in zip(out, out[1:]))  # one mask per span
    again = text_infilling(
        ids,
        mask_id=4,
        ratio=0.3,
        mean_span=3.0,
        generator=torch.Generator().manual_seed(0),
        keep=[0, 2],
    )
    assert again == out


def test_denoising_batch_targets_the_original_text(bart, bart_tokenizer):
    batch = generative_collate(bart_tokenizer)([dict(bart_tokenizer(t)) for t in TEXTS])
    ids = BatchIds.from_model(bart.config, bart_tokenizer)
    noisy = prepare_seq2seq_batch(batch, ids, torch.Generator().manual_seed(0))
    assert torch.equal(
        noisy["labels"][noisy["labels"] != IGNORE_INDEX],
        batch["input_ids"][batch["attention_mask"] == 1],
    )
    assert (noisy["input_ids"] == bart_tokenizer.mask_token_id).any()
    assert (noisy["decoder_input_ids"][:, 0] == bart.config.decoder_start_token_id).all()


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_export_reloads_with_auto_classes_to_identical_logits(
    tmp_path, gpt2, bart, gpt2_tokenizer, bart_tokenizer, family
):
    from distill.core.export import export_student

    teacher, tokenizer, auto = (
        (gpt2, gpt2_tokenizer, AutoModelForCausalLM)
        if family == "causal"
        else (bart, bart_tokenizer, AutoModelForSeq2SeqLM)
    )
    size = StudentSize(2, 32, 4, 64, 1 if family == "seq2seq" else None)
    student = build_generative_student(teacher, size, init="uniform_map").eval()
    expected = probe_logits(student, tokenizer, TEXTS, 32)
    out = export_student(student, tokenizer, tmp_path / "student")
    reloaded = auto.from_pretrained(out).eval()
    assert type(reloaded) is type(student)
    torch.testing.assert_close(
        probe_logits(reloaded, tokenizer, TEXTS, 32), expected, atol=0, rtol=0
    )
    assert torch.equal(
        probe_logits(family_of(teacher.config).load_model(out), tokenizer, TEXTS, 32), expected
    )
    again = AutoTokenizer.from_pretrained(out)
    assert again(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]
    assert tokenizer.unk_token_id not in tokenizer(TEXTS[0])["input_ids"]


# --- preflight: one-line errors naming the field ---------------------------------------------


@pytest.fixture
def teacher_dir(tmp_path, gpt2, gpt2_tokenizer):
    folder = tmp_path / "gpt2-teacher"
    gpt2.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(f"{t} {i}" for i in range(40) for t in TEXTS[:1]) + "\n")
    return path


def _preflight(teacher, text_file, overrides):
    from distill.core.spec_loading import load_spec
    from distill.jobs.preflight import preflight_stages

    base = [
        f"teacher.name={teacher}",
        f"data.train.path={text_file}",
        "training.batch_size=4",
        "student.layers=2",
        "objective.weights={lm: 1.0, lm_kl: 1.0}",
    ]
    return preflight_stages(load_spec(None, base + overrides))


def test_preflight_resolves_a_gpt2_student(teacher_dir, text_file):
    (stage,) = _preflight(teacher_dir, text_file, ["student.hidden=16"])
    s = stage.spec.student
    assert (s.layers, s.hidden, s.heads, s.ffn, s.decoder_layers) == (2, 16, 2, 64, None)
    assert s.freeze_word_embeddings is False  # narrower: the embeddings are sliced and train


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["objective.weights={hidden_mse: 1.0}"],
            "objective.weights: ['hidden_mse'] do not apply to a causal teacher",
        ),
        (
            ["objective.weights={lm: 1.0, minilmv2_relations: 1.0}", "objective.relation_heads=3"],
            "objective.relation_heads: 3 does not divide the teacher's Q/K/V width 32",
        ),
        (["task={type: classification}"], "task.type: a causal teacher (gpt2) takes no task"),
        (["student.decoder_layers=1"], "student.decoder_layers: only for seq2seq"),
        (["student.init=width_slice"], "student.init: width_slice supports BERT-family"),
        (["student.layers=3"], "student.init=every_other_layer: 3 student layers"),
        (["student.hidden=64"], "student.hidden: 64 > the teacher's 32"),
        (["objective.jsd_beta=1.5"], "objective.jsd_beta"),
        (["objective.mixup={alpha: 0.4}"], "objective.mixup: MixKD needs an encoder teacher"),
    ],
)
def test_bad_generative_specs_fail_naming_the_field(teacher_dir, text_file, overrides, message):
    from distill.core.spec import SpecError

    with pytest.raises(SpecError) as err:
        _preflight(teacher_dir, text_file, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_weightless_architecture_must_be_pretrained_first(text_file):
    from distill.core.spec import SpecError

    with pytest.raises(
        SpecError, match="teacher.name: builtin:tiny-gpt2 is an architecture without weights"
    ):
        _preflight("builtin:tiny-gpt2", text_file, [])
    # A pretrain stage trains it; a later stage may then name it as its teacher.
    from distill.core.spec_loading import load_spec
    from distill.jobs.preflight import preflight_stages

    spec = load_spec(
        None,
        [
            "teacher.name=builtin:tiny-gpt2",
            f"data.train.path={text_file}",
            "training.batch_size=4",
            "stages=[{name: lm, kind: pretrain, objective: {weights: {lm: 1.0}}}, "
            "{name: kd, teacher: {name: 'stage:lm'}, student: {layers: 2}, objective: {weights: {lm_kl: 1.0}}}]",
        ],
    )
    lm, kd = preflight_stages(spec)
    assert (lm.spec.student.layers, lm.spec.student.init) == (4, "random")
    assert kd.spec.student.layers == 2 and kd.spec.student.hidden == 128


def test_sequence_kd_generations_are_cached_in_storage_and_replace_targets(
    tmp_path, bart, bart_tokenizer, monkeypatch
):
    import distill.cluster.teacher_generations as tg
    from distill.cluster.storage import LocalStorage
    from distill.core.spec_loading import load_spec

    teacher = tmp_path / "bart-teacher"
    bart.save_pretrained(teacher)
    bart_tokenizer.save_pretrained(teacher)
    data = tmp_path / "pairs.csv"
    data.write_text(
        "text,target\n" + "".join(f"Close file number {i}.,close file {i}\n" for i in range(30))
    )
    spec = load_spec(
        None,
        [
            f"teacher.name={teacher}",
            f"data.train.path={data}",
            "task={type: seq2seq}",
            "objective.weights={lm: 1.0}",
            "objective.sequence_kd={num_beams: 2, max_new_tokens: 4}",
        ],
    )
    storage = LocalStorage(tmp_path / "run")
    ref = tg.cache_teacher_targets(spec, storage, str(teacher), "teacher-v1")
    rows = [json.loads(line) for line in storage.read_text(ref["path"]).splitlines()]
    train, _ = tg.train_eval_texts(spec)
    assert sorted(r["source"] for r in rows) == sorted(train["text"])
    # The cache is reused: a second call generates nothing.
    monkeypatch.setattr(tg, "generate_texts", lambda *a, **k: pytest.fail("generated again"))
    assert tg.cache_teacher_targets(spec, storage, str(teacher), "teacher-v1") == ref
    swapped = tg.with_teacher_targets(train, ref, spec)
    by_source = {r["source"]: r["target"] for r in rows}
    for source, target, reference in zip(swapped["text"], swapped["target"], train["target"]):
        assert target == (by_source[source] or reference)
    # Another teacher gets its own file.
    monkeypatch.undo()
    assert (
        tg.cache_teacher_targets(spec, storage, str(teacher), "teacher-v2")["path"] != ref["path"]
    )


def test_sequence_kd_takes_a_causal_teacher_and_prefix_fraction_only_there(
    teacher_dir, text_file, gpt2, bart
):
    from distill.core.spec import SpecError
    from distill.core.spec_loading import load_spec

    kd = "objective.sequence_kd={num_beams: 1, prefix_fraction: 0.25}"
    (stage,) = _preflight(teacher_dir, text_file, [kd])
    assert stage.spec.objective.sequence_kd.prefix_fraction == 0.25
    causal = load_spec(None, ["teacher.name=unused", kd])
    with pytest.raises(SpecError, match=r"^objective.sequence_kd: needs a distill stage"):
        FAMILIES["causal"].resolve_stage(
            causal, "finetune", gpt2.config, teacher_has_weights=True, teacher_has_head=False
        )
    pairs = load_spec(None, ["teacher.name=unused", "task={type: seq2seq}", kd])
    with pytest.raises(SpecError, match=r"^objective.sequence_kd.prefix_fraction: only for causal"):
        FAMILIES["seq2seq"].resolve_stage(
            pairs, "distill", bart.config, teacher_has_weights=True, teacher_has_head=False
        )


class _ScriptedLM:
    """A stand-in decoder whose `generate` appends fixed token ids to every prompt."""

    device = torch.device("cpu")

    def __init__(self, new_ids: list[int]) -> None:
        self.new_ids, self.calls = new_ids, []

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, **options):
        self.calls.append((input_ids, attention_mask, options))
        new = torch.tensor(self.new_ids).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new], dim=1)


def test_continue_texts_keeps_the_rows_prefix_and_appends_the_decoded_continuation(
    tiny_tokenizer,
):
    from distill.core.generative_eval import continue_texts

    model = _ScriptedLM(tiny_tokenizer("by the dog", add_special_tokens=False)["input_ids"])
    texts = ["The cat sat on the mat", "a good movie", ""]
    out = continue_texts(model, tiny_tokenizer, texts, prefix_fraction=0.5, num_beams=2)
    # 6 words -> the first 3 ([CLS] kept, not counted); 1 word -> itself; no tokens -> as is.
    assert out == ["The cat sat by the dog", "a by the dog", ""]
    ((ids, mask, options),) = model.calls  # one batch of the two texts with tokens
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]  # left-padded: prompts end together
    assert ids[1, :2].tolist() == [tiny_tokenizer.pad_token_id] * 2
    assert options["num_beams"] == 2 and options["do_sample"] is False


def test_continue_texts_matches_one_prompt_at_a_time_generation(gpt2, gpt2_tokenizer):
    from distill.core.generative_eval import continue_texts

    batched = continue_texts(gpt2, gpt2_tokenizer, TEXTS, max_new_tokens=4, batch_size=3)
    single = continue_texts(gpt2, gpt2_tokenizer, TEXTS, max_new_tokens=4, batch_size=1)
    assert batched == single
    ids = gpt2_tokenizer(TEXTS[0])["input_ids"]
    prefix = ids[: len(ids) // 2]
    new = gpt2.generate(torch.tensor([prefix]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    head = gpt2_tokenizer.decode(prefix)
    assert batched[0] == head + gpt2_tokenizer.decode(
        new[0, len(prefix) :], skip_special_tokens=True
    )
    assert batched[0] != TEXTS[0] and batched[0].startswith(head)


def test_causal_sequence_kd_continuations_are_cached_and_replace_the_texts(
    tmp_path, teacher_dir, text_file, monkeypatch
):
    import distill.cluster.teacher_generations as tg
    from distill.cluster.storage import LocalStorage
    from distill.core.spec_loading import load_spec

    spec = load_spec(
        None,
        [
            f"teacher.name={teacher_dir}",
            f"data.train.path={text_file}",
            "objective.sequence_kd={num_beams: 1, max_new_tokens: 3}",
        ],
    )
    storage = LocalStorage(tmp_path / "run")
    ref = tg.cache_teacher_targets(spec, storage, str(teacher_dir), "teacher-v1")
    rows = [json.loads(line) for line in storage.read_text(ref["path"]).splitlines()]
    train, _ = tg.train_eval_texts(spec)
    assert sorted(r["source"] for r in rows) == sorted(set(train["text"]))
    for row in rows:  # the first half of the row's 10 BPE tokens, then the teacher's words
        assert row["target"].startswith("Return the number of") and row["target"] != row["source"]
    monkeypatch.setattr(tg, "continue_texts", lambda *a, **k: pytest.fail("generated again"))
    assert tg.cache_teacher_targets(spec, storage, str(teacher_dir), "teacher-v1") == ref
    swapped = tg.with_teacher_targets(train, ref, spec)
    by_source = {r["source"]: r["target"] for r in rows}
    assert swapped["text"] == [by_source[t] for t in train["text"]]
    monkeypatch.undo()
    g = spec.objective.sequence_kd.model_copy(update={"prefix_fraction": 0.25})
    other = spec.model_copy(
        update={"objective": spec.objective.model_copy(update={"sequence_kd": g})}
    )
    assert tg.cache_teacher_targets(other, storage, str(teacher_dir), "teacher-v1") != ref


def test_config_yaml_keeps_every_generative_loss_and_field():
    """The secret filter of config.yaml (`redacted`) drops keys that look like credentials
    (`token_...`): no loss name or generative field may look like one, or a resumed run
    would see a different objective."""
    import yaml

    from distill.core.generative import TOKEN_LOSSES
    from distill.core.spec_loading import dump_spec, load_spec

    weights = dict.fromkeys(TOKEN_LOSSES, 1.0)
    spec = load_spec(
        None,
        [
            f"objective.weights={weights}",
            "objective.sequence_kd={num_beams: 2}",
            "student.decoder_layers=1",
            "task={type: seq2seq, target_column: summary}",
        ],
    )
    assert yaml.safe_load(dump_spec(spec)) == spec.model_dump(mode="json")
