"""Teacher inference as a Ray Data job: the tokenized rows of a job become a Ray Dataset,
an actor pool of teacher replicas (`teacher.inference.*`: actors, CPUs/GPUs per actor,
forward batch size) maps it batch by batch, and every call writes one shard of the
teacher-output cache straight to the cache's storage (a local folder or S3). The driver
writes the manifest last, only when every row of every split has its shard
(`distill.core.cache_format.build_manifest`), so a half-built cache never counts.

Ray Data restarts a teacher actor that dies and retries its batch (`max_restarts`,
`max_task_retries`); a retried batch rewrites the same shard name, so retries never
duplicate rows. Progress: Ray Data's progress bars, and the rows/s line this module logs.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from distill.cluster.storage import open_storage
from distill.core.cache_format import (
    CachePlan,
    assemble_shard,
    length_buckets,
    shard_name,
    write_shard,
)
from distill.core.family_registry import family_of
from distill.core.outputs import TaskHead
from distill.core.spec import JobSpec
from distill.core.teacher import freeze
from distill.core.teacher_plan import TORCH_DTYPES

ROW_COLUMNS = ("input_ids", "attention_mask", "labels")  # what a tokenized row may hold


class TeacherInference:
    """One Ray Data actor: a teacher replica at `teacher.dtype` that turns a batch of rows
    into one cache shard in storage and returns the shard's manifest entry."""

    def __init__(self, spec_json: str, teacher_dir: str, cache_uri: str, plan: dict) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.spec = JobSpec.model_validate_json(spec_json)
        self.plan = CachePlan.from_dict(plan)
        self.family = family_of(AutoConfig.from_pretrained(teacher_dir))
        dtype = TORCH_DTYPES[self.spec.teacher.dtype or "fp32"]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.set_num_threads(max(1, self.spec.teacher.inference.cpus_per_actor))
        self.teacher = freeze(self.family.load_model(teacher_dir, dtype=dtype).to(self.device))
        self.head = TaskHead.load(teacher_dir) if self.plan.logits else None
        if self.head is not None:
            self.head = freeze(self.head).to(self.device, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        self.collate = self.family.batch_functions(self.tokenizer)[1]
        self.storage = open_storage(cache_uri, self.spec.output.s3)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries = [self._shard(rows) for rows in _contiguous_runs(batch)]
        return {key: np.array([e[key] for e in entries]) for key in entries[0]}

    def _shard(self, rows: dict) -> dict:
        started = time.perf_counter()
        split, start, n = rows["split"], rows["start"], len(rows["records"])
        records = rows["records"]
        buckets = length_buckets(
            [len(r["input_ids"]) for r in records], self.spec.teacher.inference.batch_size
        )
        parts = []
        for bucket in buckets:  # similar lengths per forward: little padding
            batch = self.collate([records[i] for i in bucket])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            parts.append(
                self.family.cache_rows(self.teacher, self.head, self.tokenizer, batch, self.plan)
            )
        tensors = assemble_shard(parts, order=[i for bucket in buckets for i in bucket])
        file = shard_name(split, start)
        with tempfile.TemporaryDirectory(prefix="distill-shard-") as tmp:
            local = os.path.join(tmp, "shard.safetensors")
            facts = write_shard(local, tensors)
            with open(local, "rb") as f:
                self.storage.put(file, f.read())
        return {
            "split": split,
            "start": start,
            "rows": n,
            "file": file,
            "tokens": int(tensors["offsets"][-1]),
            "seconds": time.perf_counter() - started,
            "pid": os.getpid(),
            **facts,
        }


def _contiguous_runs(batch: dict[str, np.ndarray]):
    """The batch's rows grouped into runs of consecutive indices of one split (Ray Data
    keeps row order within a batch; a batch may still straddle two splits)."""
    splits, indices = batch["split"], batch["index"]
    begin = 0
    for i in range(1, len(indices) + 1):
        if i == len(indices) or splits[i] != splits[begin] or indices[i] != indices[i - 1] + 1:
            records = [
                {c: batch[c][j].tolist() for c in ROW_COLUMNS if c in batch}
                for j in range(begin, i)
            ]
            yield {"split": str(splits[begin]), "start": int(indices[begin]), "records": records}
            begin = i


def run_inference(
    spec: JobSpec,
    teacher_dir: str,
    cache_uri: str,
    plan: CachePlan,
    rows: dict[str, list[dict]],
    *,
    actor_class: type = TeacherInference,
    log=print,
) -> list[dict]:
    """Map every split's tokenized `rows` through an actor pool of teachers; returns the
    manifest entries of the shards written under `cache_uri` (the caller writes the
    manifest). Ray must be initialised."""
    import ray.data

    inf = spec.teacher.inference
    items = [
        {"split": split, "index": i, **{c: r[c] for c in ROW_COLUMNS if c in r}}
        for split, split_rows in rows.items()
        for i, r in enumerate(split_rows)
    ]
    total = len(items)
    # Blocks of whole shards, so a shard's rows reach one actor call together.
    blocks = max(1, -(-total // inf.rows_per_shard))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    started = time.perf_counter()
    out = ds.map_batches(
        actor_class,
        fn_constructor_args=(spec.model_dump_json(), teacher_dir, cache_uri, plan.as_dict()),
        batch_size=inf.rows_per_shard,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=inf.actors),
        num_cpus=inf.cpus_per_actor,
        num_gpus=inf.gpus_per_actor,
        max_restarts=3,
        max_task_retries=3,
    )
    entries = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in out.iter_rows()
    ]
    seconds = time.perf_counter() - started
    log(
        f"[distill] teacher inference: {total} rows in {seconds:.1f}s "
        f"({total / max(seconds, 1e-9):.1f} rows/s, {inf.actors} actor(s), "
        f"{len(entries)} shards)"
    )
    return entries
