"""Export: the folder reloads (ours and sentence-transformers) to the in-memory embeddings."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from distill.core.export import SentenceEncoder, export_student, load_encoder
from distill.core.student import StudentSize, build_student

TEXTS = ["the cat sat on the mat", "a very good movie", "not bad", "zebra quux dog"]


@pytest.fixture
def st_teacher_dir(tmp_path):
    folder = tmp_path / "teacher"
    folder.mkdir()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


@pytest.fixture
def student(tiny_bert):
    return build_student(tiny_bert, StudentSize(layers=2, hidden=32, heads=4, ffn=64)).eval()


def _projection() -> torch.nn.Linear:
    with torch.random.fork_rng():
        torch.manual_seed(5)
        return torch.nn.Linear(32, 48)


@pytest.mark.parametrize("with_dense", [False, True], ids=["no-dense", "dense"])
def test_export_reloads_to_the_same_embeddings(
    tmp_path, student, tiny_tokenizer, st_teacher_dir, with_dense
):
    from sentence_transformers import SentenceTransformer

    projection = _projection() if with_dense else None
    out = export_student(
        student,
        tiny_tokenizer,
        tmp_path / "export",
        projection=projection,
        sentence_transformer_teacher=st_teacher_dir,
        max_seq_length=32,
    )
    expected = SentenceEncoder(student, tiny_tokenizer, projection).encode(TEXTS)
    assert expected.shape == (len(TEXTS), 48 if with_dense else 32)

    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", *(["Dense"] if with_dense else []), "Normalize"]

    ours = load_encoder(out)
    assert (ours.projection is not None) == with_dense
    torch.testing.assert_close(ours.encode(TEXTS), expected, atol=1e-5, rtol=0)

    st = SentenceTransformer(str(out), device="cpu")
    st_embeddings = torch.as_tensor(st.encode(TEXTS, convert_to_numpy=True))
    torch.testing.assert_close(st_embeddings, F.normalize(expected, dim=-1), atol=1e-5, rtol=0)


def test_exported_tokenizer_gives_the_original_ids(tmp_path, student, tiny_tokenizer):
    out = export_student(student, tiny_tokenizer, tmp_path / "export")
    reloaded = AutoTokenizer.from_pretrained(out)
    assert len(reloaded) == len(tiny_tokenizer) == 99
    original = tiny_tokenizer(TEXTS)["input_ids"]
    assert reloaded(TEXTS)["input_ids"] == original
    # Guard against the transformers-5 empty-vocabulary fallback: real words are not [UNK].
    assert original[0][1:-1] != [tiny_tokenizer.unk_token_id] * (len(original[0]) - 2)


def test_export_without_sentence_transformer_teacher_is_plain_hf(tmp_path, student, tiny_tokenizer):
    out = export_student(student, tiny_tokenizer, tmp_path / "export", projection=_projection())
    assert not (out / "modules.json").exists() and (out / "2_Dense" / "config.json").is_file()
    expected = SentenceEncoder(student, tiny_tokenizer, _projection()).encode(TEXTS)
    torch.testing.assert_close(load_encoder(out).encode(TEXTS), expected, atol=1e-5, rtol=0)


def test_the_sentence_transformers_folder_is_written_by_sentence_transformers(
    tmp_path, student, tiny_tokenizer, st_teacher_dir
):
    import sentence_transformers

    out = export_student(
        student, tiny_tokenizer, tmp_path / "export", sentence_transformer_teacher=st_teacher_dir
    )
    written = json.loads((out / "config_sentence_transformers.json").read_text())
    assert written["__version__"]["sentence_transformers"] == sentence_transformers.__version__
    types = [m["type"] for m in json.loads((out / "modules.json").read_text())]
    assert all(t.startswith("sentence_transformers.") for t in types)
    assert (out / "README.md").is_file()  # its own card (a run replaces it with distill's)


def _head(task_type: str, labels: int):
    from distill.core.outputs import TaskHead

    with torch.random.fork_rng():
        torch.manual_seed(7)
        return TaskHead(32, labels, task_type).eval()


@pytest.mark.parametrize("with_st", [False, True], ids=["plain", "sentence-transformers"])
def test_a_task_student_loads_through_the_auto_class_and_pipeline(
    tmp_path, student, tiny_tokenizer, st_teacher_dir, with_st
):
    from transformers import AutoModel, AutoModelForSequenceClassification, pipeline

    from distill.core.outputs import TaskHead, forward_outputs

    head = _head("classification", 3)
    out = export_student(
        student,
        tiny_tokenizer,
        tmp_path / "export",
        sentence_transformer_teacher=st_teacher_dir if with_st else None,
        head=head,
    )
    batch = tiny_tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = head(forward_outputs(student, batch).pooled)
        model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
        torch.testing.assert_close(model.eval()(**batch).logits, expected, atol=1e-5, rtol=0)
        # The encoder alone still loads as before, and distill's own head reader too.
        encoder = AutoModel.from_pretrained(out).eval()
        torch.testing.assert_close(
            encoder(**batch).last_hidden_state, student(**batch).last_hidden_state
        )
    assert TaskHead.load(out) is not None
    classify = pipeline("text-classification", model=str(out), trust_remote_code=True)
    best = expected.softmax(-1)[0]
    [result] = classify(TEXTS[:1])
    assert result["label"] == f"LABEL_{int(best.argmax())}"
    assert result["score"] == pytest.approx(float(best.max()), abs=1e-5)


def test_a_regression_student_says_so_in_its_config(tmp_path, student, tiny_tokenizer):
    from transformers import AutoConfig

    out = export_student(student, tiny_tokenizer, tmp_path / "e", head=_head("regression", 1))
    config = AutoConfig.from_pretrained(out)
    assert (config.problem_type, config.num_labels) == ("regression", 1)


def test_encode_batches_by_length_and_returns_rows_in_input_order(tiny_bert, tiny_tokenizer):
    """Rows of similar length share a batch (less padding); each row's embedding is the one
    it gets encoded alone, in the order given."""
    texts = ["not bad", "the cat sat on the mat a very good movie", "zebra", "a very good movie"]
    encoder = SentenceEncoder(tiny_bert, tiny_tokenizer)
    widths: list[int] = []
    model = encoder.model
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        batched = encoder.encode(texts, batch_size=2)
    finally:
        hook.remove()
    alone = torch.cat([encoder.encode([t], batch_size=1) for t in texts])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    lengths = sorted((len(tiny_tokenizer(t)["input_ids"]) for t in texts), reverse=True)
    assert widths == [lengths[0], lengths[2]]  # the two longest together, then the two shortest
