"""Sequence-level KD (Kim & Rush, 2016): the teacher generates what the student trains on.
Seq2seq pairs: the teacher's outputs for the sources replace the targets. Plain text (a
causal teacher): each row becomes its first `prefix_fraction` of tokens followed by the
teacher's continuation, as text (`distill.core.generative_eval.continue_texts`), which each
model then tokenizes itself. Rank 0 generates them once per stage, before training, and
caches them in the run's storage (local folder or S3, through `cluster.storage`) under
`teacher_generations/<key>.jsonl`, keyed by the teacher, the sources and the generation
settings, so a resumed or re-run stage reuses them. Each worker reads the file back from
the same storage and swaps its rows' targets (or texts) for the teacher's."""

from __future__ import annotations

import hashlib
import json

import datasets
import torch

from distill.cluster.job_data import train_eval_texts
from distill.cluster.storage import Storage, open_storage
from distill.core.generative_eval import continue_texts, generate_texts
from distill.core.spec import JobSpec

CACHE_DIR = "teacher_generations"


def _key(teacher_id: str, sources: list[str], spec: JobSpec, pairs: bool) -> str:
    g = spec.objective.sequence_kd
    # Pairs never read prefix_fraction: their keys stay what they were before it existed.
    settings = json.dumps(g.model_dump(exclude={"prefix_fraction"} if pairs else None))
    digest = hashlib.sha256()
    for part in (teacher_id, settings, str(spec.data.max_length), *sources):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def cache_teacher_targets(
    spec: JobSpec, storage: Storage, teacher_dir: str, teacher_id: str
) -> dict:
    """Generate (or find cached) teacher targets for the stage's training sources (pairs:
    the target of each source; plain text: each text continued); returns the reference the
    worker loop takes as `teacher_targets`."""
    from distill.core.teacher import load_teacher

    train, _ = train_eval_texts(spec)
    pairs = "target" in train.column_names
    sources = sorted(set(train["text"]))
    path = f"{CACHE_DIR}/{_key(teacher_id, sources, spec, pairs)}.jsonl"
    if not storage.exists(path):
        g = spec.objective.sequence_kd
        what = "targets" if pairs else "continuations"
        print(
            f"[distill] sequence-level KD: the teacher generates {len(sources)} {what}", flush=True
        )
        model, tokenizer = load_teacher(teacher_dir)
        if torch.cuda.is_available():
            model = model.cuda()
        options = {
            "num_beams": g.num_beams,
            "max_new_tokens": g.max_new_tokens,
            "batch_size": g.batch_size,
            "max_length": spec.data.max_length,
        }
        if pairs:
            targets = generate_texts(model, tokenizer, sources, **options)
        else:
            targets = continue_texts(
                model, tokenizer, sources, prefix_fraction=g.prefix_fraction, **options
            )
        storage.write_text(
            path,
            "".join(
                json.dumps({"source": s, "target": t}) + "\n" for s, t in zip(sources, targets)
            ),
        )
    return {"uri": storage.uri, "path": path}


def read_teacher_targets(ref: dict, spec: JobSpec) -> dict[str, str]:
    """{source: teacher target} from the file `cache_teacher_targets` wrote."""
    text = open_storage(ref["uri"], spec.output.s3).read_text(ref["path"])
    rows = (json.loads(line) for line in text.splitlines() if line.strip())
    return {row["source"]: row["target"] for row in rows}


def with_teacher_targets(train: datasets.Dataset, ref: dict, spec: JobSpec) -> datasets.Dataset:
    """`train` with each row's `target` (pairs) or `text` (plain text) replaced by the
    teacher's generation for its source (an empty generation keeps the row's own, so no
    row trains on nothing)."""
    targets = read_teacher_targets(ref, spec)
    missing = [s for s in train["text"] if s not in targets]
    if missing:
        raise ValueError(f"teacher generations {ref['path']} lack {len(missing)} training sources")
    column = "target" if "target" in train.column_names else "text"
    new = [targets[s] or own for s, own in zip(train["text"], train[column])]
    # Added before the old column goes: plain text has no other column to keep the rows.
    swapped = train.add_column(f"teacher_{column}", new).remove_columns(column)
    return swapped.rename_column(f"teacher_{column}", column)
