"""Turn the spec's data section into `datasets` objects: the same deterministic split on
the driver (for validation and evaluation) and on every worker (for training)."""

from __future__ import annotations

import datasets

from distill.core.data import DataSource, load_examples, load_text_pairs, load_texts, split_eval
from distill.core.named_files import train_field
from distill.core.spec import JobSpec, SourceSpec


def _load(source: SourceSpec, spec: JobSpec, where: str) -> datasets.Dataset:
    rows = DataSource(
        source.path,
        fmt=source.format,
        split=source.split,
        config_name=source.config_name,
        text_columns=spec.data.text_columns,
        where=where,
    )
    if spec.task is not None and spec.task.type == "seq2seq":
        return load_text_pairs(rows, target_column=spec.task.target_column)
    if spec.task is not None:
        return load_examples(rows, label_column=spec.task.label_column, task_type=spec.task.type)
    # On-policy distillation reads each row's prompt too (a `prompt` column, or "").
    return load_texts(rows, prompts=spec.objective.on_policy_fraction > 0)


def train_eval_texts(spec: JobSpec) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) datasets, capped by the spec's sample limits: one `text` column (and
    `prompt` with `objective.on_policy`), or `text` (+ `text_pair`) and `label` when the
    spec has a task."""
    d = spec.data
    sources = d.train_sources
    parts = [_load(source, spec, train_field(i, len(sources))) for i, source in enumerate(sources)]
    train = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if d.eval is not None:
        held_out = _load(d.eval, spec, "data.eval")
    else:
        if len(train) < 2:
            raise ValueError(f"data.train: {len(train)} row; need >= 2 to hold out eval")
        train, held_out = split_eval(train, d.eval_fraction, spec.training.seed)
    if d.max_train_samples is not None and len(train) > d.max_train_samples:
        train = train.shuffle(seed=spec.training.seed).select(range(d.max_train_samples))
    if len(held_out) > d.max_eval_samples:
        held_out = held_out.select(range(d.max_eval_samples))
    return train, held_out
