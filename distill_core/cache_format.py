"""Teacher-output cache: the frozen teacher's outputs on a fixed, tokenized set of rows,
computed once (by a Ray Data job, `distill.cluster.teacher_inference`) and then streamed by
row index instead of running the teacher again.

A sweep's trials, every epoch of one run and every re-run on the same data distil from the
same teacher on the same rows, so the teacher forward is the same work each time. The cache
holds only what the objective reads (`CachePlan`):
- encoders: hidden states of the mapped layers (float16, only the real tokens of each row),
  the pooled sentence vector and the task logits (float32; they are small);
- causal and seq2seq LMs, `targets: topk` (the default): for every target token, the
  teacher's top-k token ids (int32) and raw logits (float32), and the logsumexp of its full
  logits at the job's temperature (float32), from which the probability outside the top-k
  follows exactly (`distill.core.token_losses.sparse_token_divergence`): 8k + 4 bytes per
  target token. Biased: the KD loss sees the tail as one bucket.
- causal and seq2seq LMs, `targets: sampled`: for every target token, S token ids drawn
  with replacement from the teacher's distribution at the job's temperature (int32) and
  the teacher's log-probability of each draw (float32), from which the forward KL and its
  gradient are estimated without bias (`token_losses.sampled_token_divergence`): 8S bytes
  per target token (S = 12: 96 bytes). The draws come from uniforms seeded by the row's
  own tokens (`row_seeds`), so a rebuild draws the same ids whatever the batching.
Objectives that read the teacher's attention internals, or feed it inputs that change every
step (MixKD's mixed embeddings, MLM masks, seq2seq text infilling), bypass the cache
(`bypass_reason`).

Layout (format 2): `shards/<split>-<first row:09d>.safetensors` for the splits `train` and
`eval`, each shard a contiguous range of rows holding `offsets` [rows + 1] into its
per-token tensors and its per-row tensors; then `manifest.json`, written last, lists every
shard (first row, rows, bytes, sha256). A folder without the manifest is incomplete and
never read. Readers open shards lazily (`ShardedCache`): a training worker reads only the
shards holding its rows, one slice per row, never a whole shard into memory.

The cache's key is a content hash of everything that decides its values (`cache_key`), so a
change in teacher weights, data, tokenizer settings, requested tensors, k or temperature
misses; so does a change of target kind or sample count (a top-k cache never serves a run
that asked for sampled targets, nor the reverse).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from distill.core import token_losses
from distill.core.attention_terms import ATTENTION_LOSSES
from distill.core.objective import LAYER_PROJECTION_LOSSES, POOLED_LOSSES
from distill.core.outputs import ModelOutputs, forward_outputs

FORMAT = 2
MANIFEST_FILE = "manifest.json"
SHARD_DIR = "shards"
SPLITS = ("train", "eval")
INDEX_COLUMN = "cache_index"  # each row's position in its cached split
ROW_KEYS = ("pooled", "logits")  # one entry per row; every other tensor is per token
TOPK_KEYS = ("topk_ids", "topk_logits", "topk_lse")
SAMPLED_KEYS = ("sampled_ids", "sampled_logp")
LM_TARGETS = ("topk", "sampled")  # what an LM cache keeps per target token
_LOGIT_LOSSES = {"logit_kl", "logit_mse"}
_LM_KD_LOSSES = {"lm_kl", "lm_reverse_kl", "lm_jsd"}
_HIDDEN_DTYPE = torch.float16  # hidden states of BERT-family teachers stay far below 65504
_LM_CHUNK_TOKENS = 1024  # teacher LM logits are built this many target tokens at a time
# Sampling sums a float64 CDF over the vocabulary: fewer tokens per chunk keep it near the
# size of the top-k path's float32 logits.
_LM_SAMPLE_CHUNK_TOKENS = 256
_SEED_SALT = b"distill.sampled-targets.v1"


@dataclass(frozen=True)
class CachePlan:
    """Which teacher tensors to keep: `hidden_states` indices, pooled vector, task logits
    (encoders); or, per target token (LMs), `targets` "topk": the `topk` largest logits with
    the logsumexp at `temperature`, or "sampled": `samples` draws from the teacher at
    `temperature` with their log-probabilities."""

    layers: tuple[int, ...] = ()
    pooled: bool = False
    logits: bool = False
    topk: int = 0
    temperature: float = 1.0
    targets: str = "topk"
    samples: int = 0

    def __post_init__(self) -> None:
        if self.targets not in LM_TARGETS:
            raise ValueError(f"teacher cache: targets {self.targets!r}; choose from {LM_TARGETS}")

    @property
    def lm(self) -> bool:
        """Whether the plan keeps LM targets (of either kind)."""
        return bool(self.topk or self.samples)

    def _lm_key(self) -> tuple:
        return (self.targets, self.topk, self.samples, self.temperature)

    def union(self, other: CachePlan) -> CachePlan:
        if self.lm and other.lm and self._lm_key() != other._lm_key():
            raise ValueError(
                "teacher cache: one cache holds one kind of LM targets (top-k or sampled, one "
                "k or sample count) at one temperature"
            )
        lm = self if self.lm else other
        return CachePlan(
            tuple(sorted(set(self.layers) | set(other.layers))),
            self.pooled or other.pooled,
            self.logits or other.logits,
            lm.topk,
            lm.temperature,
            lm.targets,
            lm.samples,
        )

    def covers(self, other: CachePlan) -> bool:
        return (
            set(other.layers) <= set(self.layers)
            and (self.pooled or not other.pooled)
            and (self.logits or not other.logits)
            and (not other.lm or self._lm_key() == other._lm_key())
        )

    @property
    def empty(self) -> bool:
        return not (self.layers or self.pooled or self.logits or self.lm)

    def as_dict(self) -> dict:
        """The plan as plain data for the key and the manifest. A top-k plan leaves out
        `targets` and `samples`, so it reads and hashes exactly as before sampled targets
        existed: caches built then keep their key."""
        raw = asdict(self)
        if self.targets == "topk":
            del raw["targets"], raw["samples"]
        return raw

    @classmethod
    def from_dict(cls, raw: dict) -> CachePlan:
        """The plan of a manifest or `as_dict`; one without `targets` holds top-k targets."""
        return cls(
            tuple(raw.get("layers", ())),
            bool(raw.get("pooled")),
            bool(raw.get("logits")),
            int(raw.get("topk", 0)),
            float(raw.get("temperature", 1.0)),
            str(raw.get("targets", "topk")),
            int(raw.get("samples", 0)),
        )


def plan_for(weights: dict[str, float], pairs: Iterable[tuple[int, int]]) -> CachePlan:
    """The teacher tensors the encoder losses named in `weights` read; `pairs` are the
    objective's (student, teacher) `hidden_states` index pairs."""
    used = {name for name, w in weights.items() if w > 0}
    layers: set[int] = set()
    if used & LAYER_PROJECTION_LOSSES:
        layers |= {t for _, t in pairs}
    if "embedding_mse" in used:
        layers.add(0)
    return CachePlan(tuple(sorted(layers)), bool(used & POOLED_LOSSES), bool(used & _LOGIT_LOSSES))


def lm_plan_for(
    weights: dict[str, float],
    topk: int,
    temperature: float,
    *,
    targets: str = "topk",
    samples: int = 0,
) -> CachePlan:
    """The cache an LM objective reads when it has a teacher KD loss: top-k targets
    (`topk` logits) or sampled targets (`samples` draws), per `targets`."""
    used = {name for name, w in weights.items() if w > 0}
    if not used & _LM_KD_LOSSES:
        return CachePlan()
    if targets == "sampled":
        return CachePlan(temperature=temperature, targets="sampled", samples=samples)
    return CachePlan(topk=topk, temperature=temperature)


def bypass_reason(
    weights: dict[str, float],
    *,
    mixup: bool,
    infilling: bool = False,
    sequence_kd: bool = False,
    on_policy: bool = False,
) -> str | None:
    """Why this objective must run the teacher on the fly, or None when the cache serves it."""
    used = {name for name, w in weights.items() if w > 0}
    if used & ATTENTION_LOSSES:
        return f"{sorted(used & ATTENTION_LOSSES)} read the teacher's Q/K/V on the fly"
    if mixup:
        return "MixKD runs the teacher on freshly mixed embeddings every step"
    if "mlm" in used:
        return "the mlm loss masks the teacher's inputs anew every step"
    if infilling:
        return "seq2seq text infilling noises the teacher's inputs anew every step"
    if sequence_kd:
        return "sequence-level KD trains on the teacher's generations, not fixed rows"
    if on_policy:
        return "objective.on_policy: the teacher scores the student's new samples, not fixed rows"
    if "uld" in used:
        return "uld sorts the teacher's whole next-token distribution (a top-k cache lacks it)"
    return None


def file_digest(paths: Iterable[Path]) -> str:
    """sha256 over the names and bytes of files (a teacher folder's weights and tokenizer)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """Content hash of a model folder: every file except READMEs (weights, config,
    tokenizer, task head)."""
    root = Path(folder)
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.lower().startswith("readme")]
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(file_digest([path]).encode())
    return digest.hexdigest()


def rows_digest(input_ids: Sequence[Sequence[int]]) -> str:
    """Content hash of the tokenized rows: covers the data, its order, the tokenizer's
    vocabulary and the truncation length at once."""
    digest = hashlib.sha256()
    for ids in input_ids:
        digest.update(len(ids).to_bytes(4, "little"))
        digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def cache_key(*, teacher: str, rows: str, plan: CachePlan, settings: dict) -> str:
    """A short hash naming one cache: teacher folder digest, rows digest, requested tensors
    and any setting that changes the values (e.g. max_length, precision)."""
    blob = json.dumps(
        {"teacher": teacher, "rows": rows, "plan": plan.as_dict(), "settings": settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# -- computing a shard ---------------------------------------------------------------------


@torch.no_grad()
def encoder_rows(
    teacher: torch.nn.Module, head: torch.nn.Module | None, batch: dict, plan: CachePlan
) -> dict[str, torch.Tensor]:
    """One batch of an encoder teacher's cached tensors: `counts` [batch] (real tokens per
    row), `hidden_{layer}` [tokens, width] float16, `pooled` [batch, width], `logits`."""
    out = forward_outputs(teacher, batch, head=head if plan.logits else None)
    real = batch["attention_mask"].bool()
    rows = {"counts": real.sum(1).cpu()}
    for layer in plan.layers:
        rows[f"hidden_{layer}"] = out.hidden[layer][real].to(_HIDDEN_DTYPE).cpu()
    if plan.pooled:
        rows["pooled"] = out.pooled.float().cpu()
    if plan.logits:
        rows["logits"] = out.logits.float().cpu()
    return rows


def row_seeds(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
) -> list[int]:
    """One seed per row of a batch for its sampled targets: a hash of the row's real input
    ids (`attention_mask`) and target ids (IGNORE_INDEX skipped), so it does not depend on
    the padding, the batch the row lands in, its shard or its position in the data (two
    identical rows draw the same ids). input_ids, attention_mask, targets: [batch, seq]."""
    seeds = []
    for ids, mask, target in zip(input_ids.cpu(), attention_mask.cpu(), targets.cpu()):
        digest = hashlib.sha256(_SEED_SALT)
        digest.update(ids[mask.bool()].to(torch.int64).numpy().tobytes())
        digest.update(b"|")
        digest.update(target[target != token_losses.IGNORE_INDEX].to(torch.int64).numpy().tobytes())
        seeds.append(int.from_bytes(digest.digest()[:8], "little") >> 1)  # < 2**63
    return seeds


def sample_uniforms(seeds: Sequence[int], counts: Sequence[int], samples: int) -> torch.Tensor:
    """The uniforms [sum(counts), samples] float64 that `token_losses.teacher_samples` turns
    into draws: row r's `counts[r]` tokens, in order, from a CPU generator seeded with
    `seeds[r]` (the same on every device)."""
    parts = [
        torch.rand(
            count, samples, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        for seed, count in zip(seeds, counts, strict=True)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, samples, dtype=torch.float64)


@torch.no_grad()
def lm_rows(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    plan: CachePlan,
    *,
    seeds: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """One batch of an LM teacher's cached tensors from its final hidden states [batch, seq,
    width] at the target positions `targets` [batch, seq] (IGNORE_INDEX skipped): `counts`
    [batch] and, per target token in row order, for top-k targets `topk_ids` [tokens, k]
    int32, `topk_logits` [tokens, k] float32 and `topk_lse` [tokens] float32 (logsumexp of
    logits / T); for sampled targets `sampled_ids` [tokens, S] int32 and `sampled_logp`
    [tokens, S] float32, drawn with one seed per row (`seeds`, from `row_seeds`). The
    [tokens, vocab] logits exist one chunk at a time."""
    keep = targets != token_losses.IGNORE_INDEX
    flat = hidden[keep]
    if plan.targets == "sampled":
        if seeds is None or len(seeds) != targets.shape[0]:
            raise ValueError("teacher cache: sampled targets need one seed per row (row_seeds)")
        uniforms = sample_uniforms(seeds, keep.sum(1).tolist(), plan.samples)
        drawn = [
            token_losses.teacher_samples(head(chunk), u, plan.temperature)
            for chunk, u in zip(
                flat.split(_LM_SAMPLE_CHUNK_TOKENS), uniforms.split(_LM_SAMPLE_CHUNK_TOKENS)
            )
        ] or [token_losses.teacher_samples(head(flat), uniforms, plan.temperature)]
        ids, logp = (torch.cat([d[i] for d in drawn]).cpu() for i in range(2))
        return {"counts": keep.sum(1).cpu(), "sampled_ids": ids, "sampled_logp": logp}
    parts = [
        token_losses.teacher_topk(head(chunk), plan.topk, plan.temperature)
        for chunk in flat.split(_LM_CHUNK_TOKENS)
    ] or [token_losses.teacher_topk(head(flat), plan.topk, plan.temperature)]
    ids, values, lse = (torch.cat([p[i] for p in parts]).cpu() for i in range(3))
    return {"counts": keep.sum(1).cpu(), "topk_ids": ids, "topk_logits": values, "topk_lse": lse}


# Cached tensors with one entry per token (row r's are `offsets[r]:offsets[r+1]`); every
# other tensor has one entry per row.
PER_TOKEN_PREFIXES = ("hidden_", "topk_", "sampled_")


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into forward batches of similar length (longest first), so a
    batch pads to little more than its own rows; `assemble_shard(..., order=...)` puts the
    rows back in their original order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def assemble_shard(
    batches: Sequence[dict[str, torch.Tensor]], order: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Concatenate per-batch rows into one shard's tensors, `counts` turned into `offsets`
    [rows + 1]: row r's tokens are `offsets[r]:offsets[r+1]`. `order` names the original
    row of each processed row (the batches' rows in sequence) when they were computed out of
    order (`length_buckets`); the shard is then written in original row order."""
    counts = torch.cat([b["counts"] for b in batches]).to(torch.int64)
    joined = {k: torch.cat([b[k] for b in batches]) for k in batches[0] if k != "counts"}
    if order is not None:
        where = torch.empty(len(order), dtype=torch.int64)  # original row -> processed row
        where[torch.as_tensor(list(order), dtype=torch.int64)] = torch.arange(len(order))
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)[:-1]])
        tokens = torch.cat(
            [torch.arange(starts[p], starts[p] + counts[p]) for p in where.tolist()]
            or [torch.zeros(0, dtype=torch.int64)]
        )
        per_token = {k for k in joined if k.startswith(PER_TOKEN_PREFIXES)}
        joined = {k: v[tokens if k in per_token else where] for k, v in joined.items()}
        counts = counts[where]
    tensors = {"offsets": torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])}
    tensors.update({k: v.contiguous() for k, v in joined.items()})
    return tensors


def shard_name(split: str, start: int) -> str:
    return f"{SHARD_DIR}/{split}-{start:09d}.safetensors"


def write_shard(path: str | Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Write one shard file; returns its size and sha256 for the manifest."""
    save_file(tensors, str(path))
    data = Path(path).read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def build_manifest(key: str, plan: CachePlan, rows: dict[str, int], shards: list[dict]) -> dict:
    """The manifest of a complete cache: every split's shards cover its rows exactly once,
    in order (else ValueError: a shard is missing or doubled, and no manifest is written)."""
    splits = {}
    for split, total in rows.items():
        own = sorted((s for s in shards if s["split"] == split), key=lambda s: s["start"])
        position = 0
        for shard in own:
            if shard["start"] != position:
                raise ValueError(
                    f"teacher cache {key}: {split} rows {position}..{shard['start']} have no shard"
                )
            position += shard["rows"]
        if position != total:
            raise ValueError(f"teacher cache {key}: {split} shards hold {position} of {total} rows")
        splits[split] = {
            "rows": total,
            "shards": [
                {k: s[k] for k in ("file", "start", "rows", "bytes", "sha256")} for s in own
            ],
        }
    return {
        "format": FORMAT,
        "key": key,
        "plan": plan.as_dict(),
        "splits": splits,
        "bytes": sum(s["bytes"] for s in shards),
        "tokens": {
            split: sum(s.get("tokens", 0) for s in shards if s["split"] == split) for split in rows
        },
    }


# -- reading: a lazily opened, sharded cache ------------------------------------------------


class ShardedCache:
    """A complete cache read by row index, shard by shard as rows are asked for.

    `fetch(relpath)` returns a local path of a cache file (the file itself for a folder on
    disk; a downloaded copy for S3). Shards are opened with safetensors' `safe_open`, which
    reads only the requested slices, so memory holds a batch's rows, not the cache."""

    def __init__(self, manifest: dict, fetch: Callable[[str], str], *, max_open: int = 8) -> None:
        if manifest.get("format") != FORMAT:
            raise ValueError(f"teacher cache: format {manifest.get('format')}, expected {FORMAT}")
        self.manifest = manifest
        self.plan = CachePlan.from_dict(manifest["plan"])
        self._fetch = fetch
        self._open: OrderedDict[str, object] = OrderedDict()
        self._max_open = max_open
        self._starts = {
            split: [s["start"] for s in info["shards"]]
            for split, info in manifest["splits"].items()
        }
        self.opened: set[str] = set()  # files this reader has touched (tests, logs)

    def rows(self, split: str) -> int:
        return self.manifest["splits"][split]["rows"]

    def _handle(self, file: str):
        if file in self._open:
            self._open.move_to_end(file)
            return self._open[file]
        handle = safe_open(self._fetch(file), framework="pt")
        self.opened.add(file)
        self._open[file] = handle
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return handle

    def take(self, split: str, index: Sequence[int]) -> dict[str, list[torch.Tensor]]:
        """Per requested row (in `index` order): its per-token tensors and per-row tensors,
        plus `counts` (tokens per row)."""
        info = self.manifest["splits"][split]
        starts = self._starts[split]
        out: dict[str, list[torch.Tensor]] = {"counts": []}
        for row in index:
            if not 0 <= row < info["rows"]:
                raise IndexError(f"teacher cache: {split} row {row} of {info['rows']}")
            shard = info["shards"][bisect.bisect_right(starts, row) - 1]
            handle = self._handle(shard["file"])
            local = row - shard["start"]
            begin, end = handle.get_slice("offsets")[local : local + 2].tolist()
            out["counts"].append(end - begin)
            for key in handle.keys():
                if key == "offsets":
                    continue
                span = (local, local + 1) if key in ROW_KEYS else (begin, end)
                out.setdefault(key, []).append(handle.get_slice(key)[span[0] : span[1]])
        return out

    def encoder_outputs(
        self, split: str, index: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
    ) -> ModelOutputs:
        """Encoder teacher outputs for rows `index` [batch] padded like `mask` [batch, seq].
        Hidden states of layers outside the plan are None; padding positions are zero."""
        taken = self.take(split, index.tolist())
        real = mask.bool()
        if taken["counts"] != real.sum(1).tolist():
            raise ValueError(
                "teacher cache: cached token counts differ from the batch (stale cache?)"
            )
        hidden: list[torch.Tensor | None] = [None] * (max(self.plan.layers, default=0) + 1)
        for layer in self.plan.layers:
            flat = torch.cat(taken[f"hidden_{layer}"])
            full = torch.zeros(*mask.shape, flat.shape[-1], dtype=dtype, device=mask.device)
            full[real] = flat.to(device=mask.device, dtype=dtype)
            hidden[layer] = full
        pooled = logits = None
        if self.plan.pooled:
            pooled = torch.cat(taken["pooled"]).to(mask.device)
        if self.plan.logits:
            logits = torch.cat(taken["logits"]).to(device=mask.device, dtype=dtype)
        return ModelOutputs(hidden=hidden, pooled=pooled, logits=logits)

    def lm_outputs(self, split: str, index: torch.Tensor, targets: torch.Tensor) -> ModelOutputs:
        """LM teacher targets for rows `index` [batch] whose target ids are `targets`
        [batch, seq], of every target token in row order: `topk` = (ids, logits, lse) or,
        for a cache of sampled targets, `samples` = (ids, log-probabilities)."""
        taken = self.take(split, index.tolist())
        if taken["counts"] != (targets != token_losses.IGNORE_INDEX).sum(1).tolist():
            raise ValueError(
                "teacher cache: cached target-token counts differ from the batch (stale cache?)"
            )
        device = targets.device
        if self.plan.targets == "sampled":
            samples = tuple(torch.cat(taken[key]).to(device) for key in SAMPLED_KEYS)
            return ModelOutputs(hidden=(), pooled=None, samples=samples)
        topk = tuple(torch.cat(taken[key]).to(device) for key in TOPK_KEYS)
        return ModelOutputs(hidden=(), pooled=None, topk=topk)
