"""The teacher-output cache in storage (a local folder or S3): find it, build it with Ray
Data, stream it on the training workers.

`resolve_cache` runs on the driver before Ray starts and without loading the teacher: it
tokenizes the job's rows exactly as the workers do, hashes them with the teacher's files,
the requested tensors and the settings that change the values, and looks for
`<location>/teacher_cache/<key>/manifest.json` (a complete cache: the manifest is written
last). `build_cache` runs teacher inference as a Ray Data job (`cluster.teacher_inference`)
that writes the shards, then writes the manifest. `open_cache` is the worker side: a
`ShardedCache` whose shards are read in place (local folder) or downloaded one at a time
to the worker's scratch folder (S3) when the worker first needs a row in them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from transformers import AutoConfig, AutoTokenizer

from distill.cluster.job_data import train_eval_texts
from distill.cluster.storage import Storage, StorageError, is_s3_uri, open_storage
from distill.cluster.teacher_inference import ROW_COLUMNS, run_inference
from distill.core.cache_format import (
    FORMAT,
    MANIFEST_FILE,
    CachePlan,
    ShardedCache,
    build_manifest,
    cache_key,
    folder_digest,
    rows_digest,
)
from distill.core.family_registry import family_of
from distill.core.spec import JobSpec, SpecError
from distill.core.teacher import resolve_teacher

CACHE_DIR = "teacher_cache"


@dataclass
class CacheRequest:
    """A cache a job reads: where, under which key, and whether it is complete there."""

    spec: JobSpec
    teacher_dir: str
    storage: Storage  # rooted at the cache folder <location>/teacher_cache/<key>
    key: str
    plan: CachePlan
    rows: dict[str, list[dict]]
    hit: bool

    def info(self, **extra) -> dict:
        """What the workers and the report need (plain data: it travels to the workers)."""
        return {
            "uri": self.storage.uri,
            "key": self.key,
            "hit": self.hit,
            "rows": {split: len(rows) for split, rows in self.rows.items()},
            "plan": self.plan.as_dict(),
            **extra,
        }


def tokenized_rows(spec: JobSpec, tokenizer, family) -> dict[str, list[dict]]:
    """The `train` and `eval` rows exactly as the training workers tokenize them (the
    workers evaluate on a prefix of the eval rows: a multiple of their count)."""
    train, evaluation = train_eval_texts(spec)
    tokenize = family.batch_functions(tokenizer)[0]
    out = {}
    for split, texts in (("train", train), ("eval", evaluation)):
        ds = tokenize(texts, tokenizer, spec.data.max_length)
        keep = [c for c in ds.column_names if c in ROW_COLUMNS]
        out[split] = ds.select_columns(keep).to_list()
    return out


def resolve_cache(
    spec: JobSpec, default_storage: Storage, trials: tuple[JobSpec, ...] = ()
) -> tuple[CacheRequest | None, str | None]:
    """(the cache this job reads, None) or (None, why the teacher runs live). `trials`: a
    sweep's trial specs (same teacher and data), whose objectives' tensors the one cache
    holds together. Raises SpecError for an unreachable location and, in `required` mode,
    for a missing cache."""
    c = spec.teacher.cache
    teacher_dir = resolve_teacher(spec.teacher.name)
    config = AutoConfig.from_pretrained(teacher_dir)
    family = family_of(config)
    rows = tokenized_rows(spec, AutoTokenizer.from_pretrained(teacher_dir), family)
    columns = list(rows["train"][0]) if rows["train"] else []
    plan, reason = None, None
    for one in trials or (spec,):
        own, reason = family.cache_plan(one, config, columns)
        if reason:
            break
        plan = own if plan is None else plan.union(own)
    if reason or plan is None:
        if c.mode == "required":
            raise SpecError(f"teacher.cache: mode required, but this job cannot use one: {reason}")
        return None, reason
    key = cache_key(
        teacher=folder_digest(teacher_dir),
        rows=rows_digest(
            [r["input_ids"] for split in ("train", "eval") for r in rows[split]]
            + [r["labels"] for split in ("train", "eval") for r in rows[split] if "labels" in r]
        ),
        plan=plan,
        settings={
            "format": FORMAT,
            "max_length": spec.data.max_length,
            "teacher_dtype": spec.teacher.dtype or "fp32",
        },
    )
    location = c.location or default_storage.uri
    try:
        root = open_storage(location, spec.output.s3)
        storage = root.child(f"{CACHE_DIR}/{key}")
        hit = storage.exists(MANIFEST_FILE)
        if not hit and c.mode == "auto":  # about to build: the location must be writable
            root.probe()
            root.put(f"{CACHE_DIR}/.write-check", b"")
            root.delete(f"{CACHE_DIR}/.write-check")
    except StorageError as exc:
        raise SpecError(f"teacher.cache.location {location}: {exc}") from None
    except OSError as exc:
        raise SpecError(
            f"teacher.cache.location {location}: cannot write ({exc.strerror})"
        ) from None
    if not hit and c.mode == "required":
        raise SpecError(
            f"teacher.cache: mode required, but {location} holds no complete cache "
            f"{key} for this teacher, data and objective (build one with mode auto)"
        )
    return CacheRequest(spec, teacher_dir, storage, key, plan, rows, hit), None


def build_cache(request: CacheRequest, *, log=print, actor_class=None) -> dict:
    """Build the requested cache with Ray Data (Ray must be up) unless it is complete;
    returns `request.info` with build facts."""
    if request.hit:
        total = sum(len(r) for r in request.rows.values())
        log(f"[distill] teacher cache hit: {request.storage.uri} ({total} rows)")
        return request.info(build_s=0.0)
    started = time.perf_counter()
    kwargs = {} if actor_class is None else {"actor_class": actor_class}
    entries = run_inference(
        request.spec,
        request.teacher_dir,
        request.storage.uri,
        request.plan,
        request.rows,
        log=log,
        **kwargs,
    )
    counts = {split: len(rows) for split, rows in request.rows.items()}
    manifest = build_manifest(request.key, request.plan, counts, entries)
    request.storage.write_text(MANIFEST_FILE, json.dumps(manifest, indent=2))
    build_s = time.perf_counter() - started
    log(
        f"[distill] teacher cache built: {request.storage.uri} ({sum(counts.values())} rows, "
        f"{manifest['bytes'] / 2**20:.1f} MiB, {build_s:.0f}s)"
    )
    return request.info(
        build_s=build_s,
        bytes=manifest["bytes"],
        rows_per_s=sum(counts.values()) / max(build_s, 1e-9),
        actors=request.spec.teacher.inference.actors,
        shards=len(entries),
    )


def open_cache(info: dict | None, spec: JobSpec, scratch: str) -> ShardedCache | None:
    """The worker's reader of the cache `info` describes (None: no cache for this job).
    S3 shards are downloaded into `scratch` when first needed, one file at a time."""
    if not info:
        return None
    storage = open_storage(info["uri"], spec.output.s3)
    manifest = json.loads(storage.read_text(MANIFEST_FILE))
    if manifest.get("key") != info["key"]:
        raise ValueError(f"teacher cache {info['uri']}: manifest key {manifest.get('key')}")
    if not is_s3_uri(info["uri"]):
        return ShardedCache(manifest, lambda file: os.path.join(info["uri"], file))

    def fetch(file: str) -> str:
        local = os.path.join(scratch, file)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as f:
            f.write(storage.get(file))
        return local

    return ShardedCache(manifest, fetch)


def cache_summary(info: dict | None, bypass: str | None) -> dict:
    """The report's `teacher_cache` entry: used (its key, hit or built) or not and why."""
    if info:
        keep = ("key", "hit", "rows", "uri", "build_s", "bytes", "rows_per_s", "actors", "shards")
        return {"used": True, **{k: info[k] for k in keep if k in info}}
    return {"used": False, "reason": bypass or "off (teacher.cache.mode: off)"}
