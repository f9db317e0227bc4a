"""The teacher-output cache in a run's or sweep's storage (local disk or S3).

`prepare_cache` runs on the driver before any trial starts: it tokenizes the training rows
exactly as the workers do, hashes them with the teacher's files and the requested tensors,
and either finds `teacher_cache/<key>/` complete in storage (a hit) or computes it once and
uploads it (`meta.json` is the last file, so a half-written cache never counts).
`open_cache` is the worker side: it reads the folder (downloading it from S3 first).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict

from torch.utils.data import DataLoader

from distill.cluster.job_data import train_eval_texts
from distill.cluster.storage import Storage, is_s3_uri, open_storage
from distill.core.data import collate, tokenize
from distill.core.outputs import TaskHead
from distill.core.spec import JobSpec
from distill.core.teacher import freeze, load_teacher, resolve_teacher
from distill.core.teacher_cache import (
    META_FILE,
    CachePlan,
    TeacherCache,
    cache_key,
    compute_teacher_outputs,
    folder_digest,
    rows_digest,
    save_cache,
)

CACHE_DIR = "teacher_cache"
_BUILD_BATCH = 64


def prepare_cache(spec: JobSpec, storage: Storage, plan: CachePlan, *, log=print) -> dict:
    """Find or build the cache of `plan`'s teacher tensors on `spec`'s training rows under
    `storage/teacher_cache/<key>`; returns what workers need to open it plus hit/miss facts."""
    teacher_dir = resolve_teacher(spec.teacher.name)
    teacher, tokenizer = load_teacher(teacher_dir)
    train_texts, _ = train_eval_texts(spec)
    rows = tokenize(train_texts, tokenizer, spec.data.max_length)
    key = cache_key(
        teacher=folder_digest(teacher_dir),
        rows=rows_digest(rows["input_ids"]),
        plan=plan,
        settings={"max_length": spec.data.max_length},
    )
    relpath = f"{CACHE_DIR}/{key}"
    info = {"uri": storage.child(relpath).uri, "key": key, "rows": len(rows), **asdict(plan)}
    if storage.exists(f"{relpath}/{META_FILE}"):
        log(f"[distill] teacher cache hit: {relpath} ({len(rows)} rows)")
        return {**info, "hit": True, "build_s": 0.0}
    started = time.perf_counter()
    head = TaskHead.load(teacher_dir) if plan.logits else None
    if head is not None:
        freeze(head)
    batches = DataLoader(rows, batch_size=_BUILD_BATCH, collate_fn=collate(tokenizer))
    tensors = compute_teacher_outputs(teacher, head, batches, plan)
    with tempfile.TemporaryDirectory(prefix="distill-cache-") as tmp:
        save_cache(tmp, tensors, {"key": key, "rows": len(rows), "plan": asdict(plan)})
        storage.put_dir(tmp, relpath)
    build_s = time.perf_counter() - started
    size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    log(
        f"[distill] teacher cache built: {relpath} ({len(rows)} rows, {size_mb:.0f} MiB, {build_s:.0f}s)"
    )
    return {**info, "hit": False, "build_s": build_s, "size_mib": size_mb}


def open_cache(info: dict | None, spec: JobSpec) -> TeacherCache | None:
    """Load the cache `prepare_cache` described (None: no cache for this job)."""
    if not info:
        return None
    uri = info["uri"]
    if not is_s3_uri(uri):
        return TeacherCache.load(uri)
    parent, _, name = uri.rstrip("/").rpartition("/")
    with tempfile.TemporaryDirectory(prefix="distill-cache-") as tmp:
        open_storage(parent, spec.output.s3).get_dir(name, tmp)
        return TeacherCache.load(tmp)  # safetensors' load_file copies into memory


def cache_summary(info: dict | None, bypass: str | None) -> dict:
    """The report's `teacher_cache` entry: used (with its key) or bypassed and why."""
    if info:
        return {"used": True, "key": info["key"], "hit": info["hit"], "rows": info["rows"]}
    return {"used": False, "reason": bypass or "off (sweeps share a cache across trials)"}
