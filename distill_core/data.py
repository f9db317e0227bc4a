"""Text data through Hugging Face `datasets`: load a source, pick its text column(s),
split off a held-out set and tokenize.

A source is a local csv/tsv/json/jsonl/parquet/txt file, a hub dataset name, or
`builtin:docstrings` (the offline corpus in `corpus.py`), or `builtin:wiki-sentences` (6,472
English Wikipedia sentences shipped in `samples/`, CC BY-SA).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from datasets.exceptions import DatasetGenerationError

from distill.core.named_files import FORMATS, data_file_problem, source_format

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"  # data shipped in the package


BUILTIN_DOCSTRINGS = "builtin:docstrings"
# 6,472 English Wikipedia sentences shipped with distill (CC BY-SA; samples/LICENSE.txt):
# general-domain text for task-agnostic distillation without a download.
BUILTIN_WIKI = "builtin:wiki-sentences"
# Offline seq2seq pairs: docstring sentence -> its content words (corpus.keyword_target).
BUILTIN_KEYWORDS = "builtin:docstring-keywords"
_PREFERRED_TEXT_COLUMNS = ("text", "sentence", "content", "document")


class DataError(ValueError):
    """A data source that cannot be used: missing file, missing column, no rows."""


def tokenized_batches(
    tokenizer,
    texts: Sequence[str],
    batch_size: int,
    max_length: int,
    *,
    pairs: Sequence[str] | None = None,
    **options,
) -> list[dict[str, torch.Tensor]]:
    """`texts` in order, `batch_size` at a time, each batch tokenized as PyTorch tensors,
    padded to its longest row and truncated to `max_length`. `pairs`: each row's second
    text (sentence-pair tasks), encoded together with its first; `options`: more tokenizer
    arguments."""
    return [
        dict(
            tokenizer(
                list(texts[i : i + batch_size]),
                None if pairs is None else list(pairs[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
                **options,
            )
        )
        for i in range(0, len(texts), batch_size)
    ]


def by_length(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """`texts` longest first (by characters, the order sentence-transformers' `encode`
    batches in), and each input's place in that order: batches of similar lengths pad
    less. `encoded[places]` puts rows encoded in the new order back in the input's."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    places = torch.empty(len(order), dtype=torch.long)
    places[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return [texts[i] for i in order], places


def wiki_sentences() -> list[str]:
    """The 6,472 packaged English Wikipedia sentences (`builtin:wiki-sentences`), in order."""
    with gzip.open(SAMPLES_DIR / "wiki-sentences.txt.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def load_source(
    path: str, fmt: str = "auto", split: str = "train", config_name: str | None = None
) -> datasets.Dataset:
    """Load one source as a `datasets.Dataset` (no column selection yet)."""
    kind = source_format(path, fmt)
    if kind == "builtin" and path == BUILTIN_KEYWORDS:
        from distill.core.corpus import keyword_pairs

        texts, targets = keyword_pairs()
        return datasets.Dataset.from_dict({"text": texts, "target": targets})
    if kind == "builtin" and path == BUILTIN_DOCSTRINGS:
        from distill.core.corpus import docstring_sentences

        return datasets.Dataset.from_dict({"text": docstring_sentences()})
    if kind == "builtin" and path == BUILTIN_WIKI:
        return datasets.Dataset.from_dict({"text": wiki_sentences()})
    if kind == "builtin":
        known = [BUILTIN_DOCSTRINGS, BUILTIN_KEYWORDS, BUILTIN_WIKI]
        raise DataError(f"data file {path}: no such built-in corpus; choose from {known}")
    if kind == "sts":
        return _load_sts(path)
    if kind == "local-unknown":
        _check_file(path)  # a folder is named as one
        raise DataError(f"data file {path}: unknown extension; expected one of {sorted(FORMATS)}")
    if kind == "hub":
        return _load_hub(path, config_name, split)
    _check_file(path)
    try:
        with _quiet_datasets():  # its log line would precede (and repeat) our one-line error
            if kind == "tsv":
                # QUOTE_NONE: GLUE-style TSVs contain bare quote characters inside sentences.
                return datasets.load_dataset(
                    "csv", data_files=path, delimiter="\t", quoting=csv.QUOTE_NONE, split="train"
                )
            return datasets.load_dataset(kind, data_files=path, split="train")
    except Exception as exc:  # datasets raises several types for empty or unparsable files
        raise DataError(f"data file {path}: {_unreadable(path, kind, exc)}") from None


def _check_file(path: str) -> None:
    problem = data_file_problem(path)
    if problem:
        raise DataError(f"data file {path}: {problem}")


def _utf8_problem(path: str) -> str | None:
    """Where a file stops being UTF-8, or None (read in chunks: files may be large)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return f"byte {chunk[exc.start]:#04x} at offset {offset + exc.start}"
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "a truncated character at the end"
    return None


def _unreadable(path: str, kind: str, exc: Exception) -> str:
    """Why `datasets` could not read a local file: not UTF-8 (text formats), else the
    first line of the error under datasets' generic one."""
    if kind != "parquet":
        problem = _utf8_problem(path)
        if problem:
            return f"not UTF-8 text ({problem}); save it as UTF-8"
    root = exc  # datasets wraps the reason in a generic DatasetGenerationError
    while isinstance(root, DatasetGenerationError) and (root.__cause__ or root.__context__):
        root = root.__cause__ or root.__context__
    first = str(root).strip().splitlines()[0][:200] if str(root).strip() else type(root).__name__
    if "corresponds to no data" in first or "no data" in first.lower():
        first = "no rows"
    return f"cannot read it as {kind} ({first})"


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def _load_hub(name: str, config_name: str | None, split: str) -> datasets.Dataset:
    """A hub dataset; while the hub is unreachable only from the local cache, failing in
    one line rather than after the hub client's retries."""
    from distill.core.hub import HubUnreachable, hub_reachable, offline_hub

    if hub_reachable():
        return datasets.load_dataset(name, config_name, split=split)
    try:
        with offline_hub(), _quiet_datasets():
            return datasets.load_dataset(name, config_name, split=split)
    except Exception:  # not cached: datasets' error would blame the connection, vaguely
        raise DataError(str(HubUnreachable(name))) from None


def _load_sts(path: str) -> datasets.Dataset:
    """An STS Benchmark file (no header) as columns sentence1, sentence2, score."""
    _check_file(path)
    try:
        pairs = load_sts_pairs(path)
    except UnicodeDecodeError:
        raise DataError(f"data file {path}: not UTF-8 text") from None
    except ValueError as exc:
        raise DataError(f"data file {exc}") from None
    return datasets.Dataset.from_dict(
        {"sentence1": pairs.first, "sentence2": pairs.second, "score": pairs.scores}
    )


def pick_text_columns(ds: datasets.Dataset, wanted: Sequence[str] | None, where: str) -> list[str]:
    """The text columns to use: `wanted`, or a guess (a preferred name, else the only string column)."""
    if wanted:
        missing = [c for c in wanted if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{where}: text column {missing} not found; columns are {ds.column_names}"
            )
        return list(wanted)
    if {"sentence1", "sentence2"} <= set(ds.column_names):
        return ["sentence1", "sentence2"]
    for name in _PREFERRED_TEXT_COLUMNS:
        if name in ds.column_names:
            return [name]
    strings = [
        c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")
    ]
    if len(strings) == 1:
        return strings
    raise DataError(
        f"{where}: cannot guess the text column among {ds.column_names}; set data.text_columns"
    )


def dataset_fingerprint(ds: datasets.Dataset, *parts: object) -> str:
    """An explicit cache fingerprint: spares `datasets` from pickling the mapped closure
    (slow, and noisy under Ray's log capture)."""
    return hashlib.sha256(repr((ds._fingerprint, *parts)).encode()).hexdigest()[:32]


def as_texts(
    ds: datasets.Dataset, columns: Sequence[str], carry: str | None = None
) -> datasets.Dataset:
    """One `text` column: each text column contributes its own rows; empty texts are dropped.
    `carry`: a column kept beside each text, its row's value ("" when not a string)."""

    def flatten(batch: dict) -> dict:
        if carry is None:
            texts = [t for c in columns for t in batch[c] if isinstance(t, str) and t.strip()]
            return {"text": texts}
        rows = [
            (t, p if isinstance(p, str) else "")
            for c in columns
            for t, p in zip(batch[c], batch[carry])
            if isinstance(t, str) and t.strip()
        ]
        return {"text": [t for t, _ in rows], carry: [p for _, p in rows]}

    parts = (tuple(columns),) if carry is None else (tuple(columns), carry)
    return ds.map(
        flatten,
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=dataset_fingerprint(ds, "as_texts", *parts),
    )


@dataclass(frozen=True)
class DataSource:
    """One source of rows as the readers (`load_texts`, `load_examples`, `load_text_pairs`)
    take it: `path` (a file, a hub dataset name or a `builtin:` corpus), `fmt` (see
    `source_format`; `auto` guesses from the path), `split` and `config_name` of a hub
    dataset, `text_columns` (None: `pick_text_columns` guesses) and `where`, the spec field
    that every error about the source names."""

    path: str
    fmt: str = "auto"
    split: str = "train"
    config_name: str | None = None
    text_columns: Sequence[str] | None = None
    where: str = "data.train"

    def load(self) -> datasets.Dataset:
        """`load_source` of this source (all its columns), its errors naming `where`."""
        try:
            return load_source(self.path, self.fmt, self.split, self.config_name)
        except DataError as exc:
            raise DataError(f"{self.where}: {exc}") from None


PROMPT_COLUMN = "prompt"  # on-policy distillation: the prompt the student continues


def load_texts(source: DataSource, *, prompts: bool = False) -> datasets.Dataset:
    """Load a source and return a dataset with a single non-empty `text` column; with
    `prompts` (on-policy distillation) also a `prompt` column: the source's own `prompt`
    column when it has one besides its text columns, else "" (the text's prefix is the
    prompt, `distill.core.generative.with_prompts`)."""
    ds, where = source.load(), source.where
    columns = pick_text_columns(ds, source.text_columns, where)
    carry = None
    if prompts and PROMPT_COLUMN in ds.column_names and PROMPT_COLUMN not in columns:
        carry = PROMPT_COLUMN
    texts = as_texts(ds, columns, carry)
    if len(texts) == 0:
        raise DataError(f"{where}: {source.path} has no non-empty text rows")
    if prompts and carry is None:
        texts = texts.add_column(PROMPT_COLUMN, [""] * len(texts))
    return texts


def load_examples(
    source: DataSource, *, label_column: str, task_type: str = "classification"
) -> datasets.Dataset:
    """Labelled rows for a task: columns `text`, `text_pair` (sentence-pair tasks, when two
    text columns are chosen) and `label`."""
    ds, path, where = source.load(), source.path, source.where
    columns = pick_text_columns(ds, source.text_columns, where)
    if len(columns) > 2:
        raise DataError(f"{where}: a task takes one or two text columns, got {columns}")
    if label_column not in ds.column_names:
        if label_column == "label" and "score" in ds.column_names:
            label_column = "score"  # STS Benchmark files
        else:
            raise DataError(
                f"{where}: label column {label_column!r} not found; columns are {ds.column_names}"
            )
    renames = {columns[0]: "text", label_column: "label"}
    if len(columns) == 2:
        renames[columns[1]] = "text_pair"
    keep = set(renames)
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    ds = ds.rename_columns({k: v for k, v in renames.items() if k != v})
    ds = ds.filter(
        lambda row: isinstance(row["text"], str) and row["label"] is not None,
        new_fingerprint=dataset_fingerprint(ds, "labelled"),
    )
    if len(ds) == 0:
        raise DataError(f"{where}: {path} has no labelled rows")
    dtype = "int64" if task_type == "classification" else "float32"
    try:
        return ds.cast_column("label", datasets.Value(dtype))
    except (ValueError, TypeError):
        kind = "integer class ids" if task_type == "classification" else "numbers"
        raise DataError(f"{where}: label column {label_column!r} must hold {kind}") from None


def load_text_pairs(source: DataSource, *, target_column: str = "target") -> datasets.Dataset:
    """Source/target text pairs for a seq2seq task: columns `text` and `target`."""
    ds, path, where = source.load(), source.path, source.where
    if target_column not in ds.column_names:
        raise DataError(
            f"{where}: target column {target_column!r} not found; columns are {ds.column_names}"
            " (set task.target_column)"
        )
    sources = [
        c for c in pick_text_columns(ds.remove_columns([target_column]), source.text_columns, where)
    ]
    if len(sources) != 1:
        raise DataError(f"{where}: a seq2seq task takes one source text column, got {sources}")
    ds = ds.select_columns([sources[0], target_column])
    ds = ds.rename_columns(
        {k: v for k, v in {sources[0]: "text", target_column: "target"}.items() if k != v}
    )
    ds = ds.filter(
        lambda row: (
            isinstance(row["text"], str)
            and isinstance(row["target"], str)
            and bool(row["text"].strip())
            and bool(row["target"].strip())
        ),
        new_fingerprint=dataset_fingerprint(ds, "pairs"),
    )
    if len(ds) == 0:
        raise DataError(f"{where}: {path} has no non-empty source/target rows")
    return ds


def split_eval(
    ds: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Deterministic held-out split (same on every worker for the same seed)."""
    parts = ds.train_test_split(test_size=fraction, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def tokenizer_digest(tokenizer) -> str:
    """Content hash of a tokenizer (vocabulary, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = (
        backend.to_str()
        if backend is not None
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    return hashlib.sha256(text.encode()).hexdigest()


def tokenizers_differ(a, b) -> bool:
    """True when two tokenizers may give different ids for the same text."""
    return tokenizer_digest(a) != tokenizer_digest(b)


def tokenize(ds: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """Token ids without padding; `collate` pads each batch to its own longest row.
    Sentence pairs (`text_pair`) are encoded together; a `label` column becomes `labels`."""
    pairs = "text_pair" in ds.column_names

    def encode(batch: dict) -> dict:
        out = tokenizer(
            batch["text"],
            batch["text_pair"] if pairs else None,
            truncation=True,
            max_length=max_length,
        )
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    keep = ["input_ids", "attention_mask", "labels"] + (["token_type_ids"] if pairs else [])
    tok_id = (type(tokenizer).__name__, tokenizer_digest(tokenizer), max_length)
    out = ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=dataset_fingerprint(ds, "tokenize", tok_id),
    )
    return out.remove_columns([c for c in out.column_names if c not in keep])


def collate(tokenizer):
    """A DataLoader collate_fn padding a list of tokenized rows to a tensor batch."""

    def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        return dict(tokenizer.pad(rows, padding=True, return_tensors="pt"))

    return _collate


TEACHER_PREFIX = "teacher_"  # batch keys of the teacher's own tokenization


def tokenize_for_both(
    ds: datasets.Dataset, tokenizer, max_length: int, *, teacher_tokenizer, by=tokenize
) -> datasets.Dataset:
    """`by` (the family's tokenize, `tokenize` for encoders) with the student's tokenizer,
    plus the teacher's own token ids of the same text under `teacher_*` columns (student
    and teacher with different tokenizers). Labels and prompts are the student's only."""
    student = by(ds, tokenizer, max_length)
    teacher = by(ds, teacher_tokenizer, max_length)
    for column in teacher.column_names:
        if column not in STUDENT_ONLY_COLUMNS:
            student = student.add_column(TEACHER_PREFIX + column, teacher[column])
    return student


# Columns only the student reads: its labels, and the prompts it continues (on-policy).
STUDENT_ONLY_COLUMNS = ("labels", "prompt_ids")


def collate_for_both(tokenizer, teacher_tokenizer, by=collate):
    """`by(tokenizer)` (the family's collate, `collate` for encoders) padding the student's
    and the teacher's token ids each with its own tokenizer; the teacher's come back under
    `teacher_*` keys."""
    own_collate, their_collate = by(tokenizer), by(teacher_tokenizer)

    def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        own = [{k: v for k, v in r.items() if not k.startswith(TEACHER_PREFIX)} for r in rows]
        theirs = [
            {
                k.removeprefix(TEACHER_PREFIX): v
                for k, v in r.items()
                if k.startswith(TEACHER_PREFIX)
            }
            for r in rows
        ]
        batch = own_collate(own)
        batch.update({TEACHER_PREFIX + k: v for k, v in their_collate(theirs).items()})
        return batch

    return _collate


def teacher_view(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as the teacher reads it: its own `teacher_*` token ids when the student
    tokenizes differently, else the shared ones. Labels: the teacher's own when the batch
    has them (an on-policy batch across tokenizers), else the student's."""
    if TEACHER_PREFIX + "input_ids" not in batch:
        return batch
    view = {
        k.removeprefix(TEACHER_PREFIX): v for k, v in batch.items() if k.startswith(TEACHER_PREFIX)
    }
    if "labels" in batch and "labels" not in view:  # the teacher's own (`teacher_labels`) win
        view["labels"] = batch["labels"]
    return view


BUILTIN_STS = "builtin:sts-sample"


def sts_file(path: str) -> str:
    """The file behind an `evaluation.sts_path`: the packaged sample for `builtin:sts-sample`,
    else `path` itself. Any other `builtin:` name is a ValueError naming the one there is."""
    if path == BUILTIN_STS:
        return str(SAMPLES_DIR / "sts-sample.tsv")
    if path.startswith("builtin:"):
        raise ValueError(f"{path} is no packaged STS set; the packaged one is {BUILTIN_STS}")
    return path


@dataclass(frozen=True)
class StsPairs:
    first: list[str]
    second: list[str]
    scores: list[float]


def load_sts_pairs(path: str, limit: int | None = None) -> StsPairs:
    """STS Benchmark file (or `builtin:sts-sample`): tab-separated, no header; fields 5-7
    are score, s1, s2. Extra trailing fields on a few lines are ignored."""
    first, second, scores = [], [], []
    with open(sts_file(path), encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) < 7:
                continue
            try:
                score = float(row[4])
            except ValueError:
                score = math.nan
            if not math.isfinite(score):
                raise ValueError(f"{path} line {line}: score {row[4]!r} is not a finite number")
            scores.append(score)
            first.append(row[5])
            second.append(row[6])
            if limit is not None and len(scores) >= limit:
                break
    if not scores:
        raise ValueError(f"{path} has no STS rows (expected 7 tab-separated fields)")
    return StsPairs(first, second, scores)
