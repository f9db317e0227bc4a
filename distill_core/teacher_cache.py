"""Teacher-output cache: the frozen teacher's outputs on a fixed, tokenized training set,
computed once and then looked up by example index instead of running the teacher again.

A sweep's trials (and every epoch of one run) distill from the same teacher on the same
rows, so the teacher forward is the same work each time. The cache holds only what the
objective reads (`CachePlan`): hidden states of the mapped layers (float16, only the real
tokens of each row), the pooled sentence vector and the task logits (float32; they are
small). Objectives that read the teacher's attention internals, or feed it inputs that change
every step (MixKD's mixed embeddings, MLM masks), bypass the cache (`bypass_reason`).

The cache's key is a content hash of everything that decides its values (`cache_key`), so a
change in teacher weights, data, tokenizer settings or requested tensors misses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from distill.core.objective import ATTENTION_LOSSES, LAYER_PROJECTION_LOSSES, POOLED_LOSSES
from distill.core.outputs import ModelOutputs, forward_outputs

OUTPUTS_FILE = "outputs.safetensors"
META_FILE = "meta.json"
INDEX_COLUMN = "cache_index"  # each training row's position in the cached set
_LOGIT_LOSSES = {"logit_kl", "logit_mse"}
_HIDDEN_DTYPE = torch.float16  # hidden states of BERT-family teachers stay far below 65504


@dataclass(frozen=True)
class CachePlan:
    """Which teacher tensors to keep: `hidden_states` indices, pooled vector, task logits."""

    layers: tuple[int, ...] = ()
    pooled: bool = False
    logits: bool = False

    def union(self, other: CachePlan) -> CachePlan:
        return CachePlan(
            tuple(sorted(set(self.layers) | set(other.layers))),
            self.pooled or other.pooled,
            self.logits or other.logits,
        )

    def covers(self, other: CachePlan) -> bool:
        return (
            set(other.layers) <= set(self.layers)
            and (self.pooled or not other.pooled)
            and (self.logits or not other.logits)
        )

    @property
    def empty(self) -> bool:
        return not (self.layers or self.pooled or self.logits)


def plan_for(weights: dict[str, float], pairs: Iterable[tuple[int, int]]) -> CachePlan:
    """The teacher tensors the losses named in `weights` read; `pairs` are the objective's
    (student, teacher) `hidden_states` index pairs."""
    used = {name for name, w in weights.items() if w > 0}
    layers: set[int] = set()
    if used & LAYER_PROJECTION_LOSSES:
        layers |= {t for _, t in pairs}
    if "embedding_mse" in used:
        layers.add(0)
    return CachePlan(tuple(sorted(layers)), bool(used & POOLED_LOSSES), bool(used & _LOGIT_LOSSES))


def bypass_reason(weights: dict[str, float], *, mixup: bool) -> str | None:
    """Why this objective must run the teacher on the fly, or None when the cache serves it."""
    used = {name for name, w in weights.items() if w > 0}
    if used & ATTENTION_LOSSES:
        return f"{sorted(used & ATTENTION_LOSSES)} read the teacher's Q/K/V on the fly"
    if mixup:
        return "MixKD runs the teacher on freshly mixed embeddings every step"
    if "mlm" in used:
        return "the mlm loss masks the teacher's inputs anew every step"
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
        {"teacher": teacher, "rows": rows, "plan": asdict(plan), "settings": settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@torch.no_grad()
def compute_teacher_outputs(
    teacher: torch.nn.Module,
    head: torch.nn.Module | None,
    batches: Iterable[dict[str, torch.Tensor]],
    plan: CachePlan,
) -> dict[str, torch.Tensor]:
    """Run the teacher over `batches` (in row order) and keep what `plan` asks for.

    Returns `offsets` [rows + 1] (row r's tokens are `offsets[r]:offsets[r+1]` of each
    `hidden_{layer}` [tokens, width]), `pooled` [rows, width], `logits` [rows, labels].
    """
    lengths, pooled, logits = [], [], []
    hidden: dict[int, list[torch.Tensor]] = {layer: [] for layer in plan.layers}
    for batch in batches:
        out = forward_outputs(teacher, batch, head=head if plan.logits else None)
        real = batch["attention_mask"].bool()
        lengths.append(real.sum(1))
        for layer in plan.layers:
            hidden[layer].append(out.hidden[layer][real].to(_HIDDEN_DTYPE))
        if plan.pooled:
            pooled.append(out.pooled.float())
        if plan.logits:
            logits.append(out.logits.float())
    counts = torch.cat(lengths).to(torch.int64)
    tensors = {"offsets": torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])}
    tensors.update({f"hidden_{layer}": torch.cat(parts) for layer, parts in hidden.items()})
    if plan.pooled:
        tensors["pooled"] = torch.cat(pooled)
    if plan.logits:
        tensors["logits"] = torch.cat(logits)
    return tensors


def save_cache(folder: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write the tensors, then `meta.json` last: a folder without it is incomplete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / OUTPUTS_FILE))
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


class TeacherCache:
    """Cached teacher outputs, looked up by row index into padded batch tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor], plan: CachePlan) -> None:
        self.tensors = tensors
        self.plan = plan
        self.offsets = tensors["offsets"]
        self.rows = len(self.offsets) - 1
        self.layers = max(plan.layers, default=0)

    @classmethod
    def load(cls, folder: str | Path) -> TeacherCache:
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        plan = CachePlan(
            tuple(meta["plan"]["layers"]), meta["plan"]["pooled"], meta["plan"]["logits"]
        )
        return cls(load_file(str(folder / OUTPUTS_FILE)), plan)

    def lookup(
        self, index: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> ModelOutputs:
        """Teacher outputs for rows `index` [batch] padded like `mask` [batch, seq]. Hidden
        states of layers outside the plan are None; padding positions are zero."""
        index = index.cpu()
        real = mask.bool()
        starts, ends = self.offsets[index], self.offsets[index + 1]
        if not torch.equal((ends - starts).to(real.device), real.sum(1)):
            raise ValueError(
                "teacher cache: cached token counts differ from the batch (stale cache?)"
            )
        tokens = torch.cat([torch.arange(s, e) for s, e in zip(starts.tolist(), ends.tolist())])
        hidden: list[torch.Tensor | None] = [None] * (self.layers + 1)
        for layer in self.plan.layers:
            flat = self.tensors[f"hidden_{layer}"]
            full = torch.zeros(*mask.shape, flat.shape[-1], dtype=dtype, device=mask.device)
            full[real] = flat[tokens].to(device=mask.device, dtype=dtype)
            hidden[layer] = full
        pooled = logits = None
        if self.plan.pooled:
            pooled = self.tensors["pooled"][index].to(mask.device)
        if self.plan.logits:
            logits = self.tensors["logits"][index].to(device=mask.device, dtype=dtype)
        return ModelOutputs(hidden=hidden, pooled=pooled, logits=logits)
