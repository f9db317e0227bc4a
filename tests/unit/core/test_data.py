"""Text data: file formats, text-column choice, DataError messages, tokenizing and splitting."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import BertTokenizerFast

import distill.core.data
from distill.core.data import (
    DataError,
    DataSource,
    collate,
    load_examples,
    load_texts,
    split_eval,
    tokenize,
)

SST2_TRAIN = Path(__file__).resolve().parents[4] / "shared/data/sst2/train.tsv"
ROWS = ["the cat sat on the mat", 'it \'s a "good" movie', "not bad"]


def _write(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "csv":
        path.write_text(
            "text,label\n" + "".join(f'"{r.replace(chr(34), 2 * chr(34))}",1\n' for r in ROWS)
        )
    elif fmt == "tsv":  # GLUE style: bare quotes inside sentences, no quoting
        path.write_text("label\tsentence\n" + "".join(f"1\t{r}\n" for r in ROWS))
    elif fmt == "jsonl":
        path.write_text(
            "".join(json.dumps({"id": i, "content": r}) + "\n" for i, r in enumerate(ROWS))
        )
    elif fmt == "parquet":
        datasets.Dataset.from_dict({"document": ROWS, "n": [1, 2, 3]}).to_parquet(str(path))
    elif fmt == "txt":
        path.write_text("\n".join(ROWS[:2]) + "\n\n   \n" + ROWS[2] + "\n")
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "txt"])
def test_each_format_loads_its_text_column(tmp_path, fmt):
    texts = load_texts(DataSource(str(_write(tmp_path, fmt))))
    assert texts.column_names == ["text"]
    assert texts["text"] == ROWS  # blank txt lines are dropped, quotes kept verbatim


def test_guesses_the_only_string_column(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("stars,review\n5,great film\n1,awful plot\n")
    assert load_texts(DataSource(str(path)))["text"] == ["great film", "awful plot"]


def test_explicit_columns_flatten_and_drop_empty_texts(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("title,body,n\na cat,the dog,1\nan end,,2\n")
    texts = load_texts(DataSource(str(path), text_columns=["title", "body"]))["text"]
    assert sorted(texts) == ["a cat", "an end", "the dog"]
    assert load_texts(DataSource(str(path), text_columns=["body"]))["text"] == ["the dog"]


def test_ambiguous_columns_ask_for_text_columns(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("title,body\na,b\n")
    with pytest.raises(DataError, match="set data.text_columns"):
        load_texts(DataSource(str(path)))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="not found") as err:
        load_texts(DataSource(str(path)))
    assert str(path) in str(err.value)


def test_unknown_extension(tmp_path):
    path = tmp_path / "corpus.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unknown extension"):
        load_texts(DataSource(str(path)))


def test_missing_column_names_it_and_lists_the_columns(tmp_path):
    path = _write(tmp_path, "csv")
    with pytest.raises(DataError) as err:
        load_texts(DataSource(str(path), text_columns=["sentence"], where="data.eval"))
    message = str(err.value)
    assert message.startswith("data.eval:") and "'sentence'" in message
    assert "['text', 'label']" in message


def test_only_empty_texts_is_an_error(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("text,label\n,1\n   ,2\n")
    with pytest.raises(DataError, match="no non-empty text rows"):
        load_texts(DataSource(str(path)))


@pytest.mark.parametrize(("name", "content"), [("header.csv", "text,label\n"), ("empty.txt", "")])
def test_file_without_rows_is_a_data_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=name):
        load_texts(DataSource(str(path)))


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.csv", b"", "empty file (0 bytes)"),
        ("empty.jsonl", b"", "empty file (0 bytes)"),
        ("latin1.csv", b"text\ncaf\xe9 au lait\n", "not UTF-8 text (byte 0xe9 at offset 8)"),
        ("latin1.txt", b"na\xefve\n", "not UTF-8 text (byte 0xef at offset 2)"),
        (
            "broken.jsonl",
            b'{"text": "a"}\n{bad json\n',
            "cannot read it as json (JSON parse error: Missing a name",
        ),
        ("fake.parquet", b"not parquet", "cannot read it as parquet (Parquet magic bytes"),
    ],
)
def test_an_unreadable_file_gets_its_reason_not_a_generic_one(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_texts(DataSource(str(path)))
    assert str(err.value).startswith(f"data.train: data file {path}: {reason}"), str(err.value)
    assert "An error occurred while generating the dataset" not in str(err.value)


def test_datasets_logs_nothing_for_an_unreadable_file(tmp_path, capfd):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n{bad json\n')
    with pytest.raises(DataError):
        load_texts(DataSource(str(path)))
    out, err = capfd.readouterr()
    assert "Failed to load JSON" not in out + err


def test_an_unknown_builtin_corpus_lists_the_known_ones():
    with pytest.raises(DataError, match=r"builtin:nope: no such built-in corpus; choose from"):
        load_texts(DataSource("builtin:nope"))


def test_the_packaged_wiki_sentences_are_general_domain_english_with_their_notice():
    texts = load_texts(DataSource("builtin:wiki-sentences"))["text"]
    assert len(texts) == 6472 and len(set(texts)) == 6472  # deduplicated
    assert all(4 <= len(t.split()) <= 64 for t in texts)
    notice = (Path(distill.core.data.__file__).parent / "samples" / "LICENSE.txt").read_text()
    assert "wiki-sentences.txt.gz" in notice and "CC BY-SA 3.0" in notice


def test_a_folder_is_not_a_data_file(tmp_path):
    (tmp_path / "corpus.csv").mkdir()
    with pytest.raises(DataError, match=r"corpus\.csv: is a folder, expected a file"):
        load_texts(DataSource(str(tmp_path / "corpus.csv")))


def test_a_hub_dataset_while_the_hub_is_unreachable_fails_at_once(monkeypatch):
    import time

    import distill.core.hub as hub

    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    started = time.monotonic()
    with pytest.raises(DataError, match=r"^data\.train: 'nosuchorg/nosuchdata' is not a local"):
        load_texts(DataSource("nosuchorg/nosuchdata"))
    assert time.monotonic() - started < 5


# --- tokenizing and batching ------------------------------------------------------


def test_tokenize_and_collate_pad_to_the_longest_row(tiny_tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["the cat sat on the mat", "good", "a very bad film"]})
    tokens = tokenize(ds, tiny_tokenizer, max_length=16)
    assert sorted(tokens.column_names) == ["attention_mask", "input_ids"]
    lengths = [len(ids) for ids in tokens["input_ids"]]
    assert lengths == [8, 3, 6]  # [CLS] + words + [SEP]

    batch = collate(tiny_tokenizer)([tokens[i] for i in range(len(tokens))])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 8)
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row, n:].eq(0).all()
        assert batch["input_ids"][row, n:].eq(tiny_tokenizer.pad_token_id).all()
        assert batch["input_ids"][row, :n].tolist() == tokens[row]["input_ids"]
    assert int(batch["input_ids"].max()) < 99


def test_tokenize_truncates_to_max_length(tiny_tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["the cat sat on the mat"]})
    ids = tokenize(ds, tiny_tokenizer, max_length=4)["input_ids"][0]
    assert len(ids) == 4 and ids[-1] == tiny_tokenizer.sep_token_id


def test_tokenize_cache_tells_tokenizers_apart(tmp_path, tiny_tokenizer):
    vocab = tmp_path / "vocab.txt"
    words = list(tiny_tokenizer.get_vocab())  # same words, other ids
    vocab.write_text("\n".join(sorted(words, key=tiny_tokenizer.get_vocab().get, reverse=True)))
    other = BertTokenizerFast(vocab=str(vocab))
    path = tmp_path / "corpus.csv"
    path.write_text("text\nthe cat sat\n")
    ds = load_texts(DataSource(str(path)))  # file-backed, so `map` results are cached on disk
    want = other("the cat sat")["input_ids"]
    assert want != tiny_tokenizer("the cat sat")["input_ids"]
    tokenize(ds, tiny_tokenizer, max_length=16)
    assert tokenize(ds, other, max_length=16)["input_ids"][0] == want


def test_split_eval_is_deterministic_per_seed():
    ds = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(100)]})
    train_a, eval_a = split_eval(ds, 0.2, seed=7)
    train_b, eval_b = split_eval(ds, 0.2, seed=7)
    assert list(eval_a["text"]) == list(eval_b["text"])
    assert list(train_a["text"]) == list(train_b["text"])
    assert len(eval_a) == 20 and len(train_a) == 80
    assert sorted([*train_a["text"], *eval_a["text"]]) == sorted(ds["text"])
    assert list(split_eval(ds, 0.2, seed=8)[1]["text"]) != list(eval_a["text"])


# --- the real SST-2 file -------------------------------------------------------------


@pytest.mark.skipif(not SST2_TRAIN.is_file(), reason=f"SST-2 not present at {SST2_TRAIN}")
def test_real_sst2_train_file():
    texts = load_texts(DataSource(str(SST2_TRAIN)))
    assert len(texts) == 67_349
    assert texts[0]["text"] == "hide new secretions from the parental units"
    assert all(t.strip() and not t.endswith("\r") for t in texts["text"])  # the file is CRLF


# --- labelled examples for tasks --------------------------------------------------------


def test_labelled_pairs_from_an_sts_file_tokenize_as_pairs(tmp_path, tiny_tokenizer):
    path = tmp_path / "sts.csv"
    path.write_text(
        "genre\tf\t2012\t0001\t4.5\tthe cat sat\ta cat sat on the mat\n"
        "genre\tf\t2012\t0002\t0.5\tthe dog ran\tthe car is red\textra\tfields\n"
    )
    rows = load_examples(
        DataSource(str(path), fmt="sts"), label_column="label", task_type="regression"
    )
    assert set(rows.column_names) == {"text", "text_pair", "label"}
    assert rows["label"] == [4.5, 0.5] and rows["text_pair"][0] == "a cat sat on the mat"
    encoded = tokenize(rows, tiny_tokenizer, max_length=32)
    assert set(encoded.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    first = encoded[0]
    sep = tiny_tokenizer.sep_token_id
    assert first["input_ids"].count(sep) == 2  # [CLS] a [SEP] b [SEP]
    assert set(first["token_type_ids"]) == {0, 1}
    batch = collate(tiny_tokenizer)([encoded[0], encoded[1]])
    assert batch["labels"].dtype == torch.float32


def test_classification_labels_must_be_class_ids(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sentence,label\ngood film,positive\nbad film,negative\n")
    with pytest.raises(DataError, match="label column 'label' must hold integer class ids"):
        load_examples(DataSource(str(path)), label_column="label", task_type="classification")
    with pytest.raises(DataError, match="label column 'stars' not found"):
        load_examples(DataSource(str(path)), label_column="stars", task_type="classification")
