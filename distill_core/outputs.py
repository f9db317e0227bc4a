"""One forward pass of a student or teacher, with exactly the internals the objective reads.

`forward_outputs` runs any HF encoder (or the BiLSTM student) and returns `ModelOutputs`:
hidden states, the mean-pooled sentence vector, task logits when the model carries a
`TaskHead`, and Q/K/V of the requested layers captured by forward hooks
(`internals.capture_qkv`), so attention relations work for any BERT- or GPT-2-family model.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.core.internals import capture_qkv
from distill.core.losses import masked_mean_pool
from distill.core.lstm_student import masked_max_pool

TASK_HEAD_DIR = "task_head"


@runtime_checkable
class RemoteTeacher(Protocol):
    """A teacher that runs elsewhere (a Ray Serve deployment, `cluster/teacher_service.py`)
    and answers with the `ModelOutputs` the local forward would give. `has_head`: it
    applies the teacher folder's task head; `mix`: MixKD's (partner permutation, ratio),
    applied to the teacher's own token embeddings as `distill.core.mixup.mixup` does."""

    has_head: bool

    def outputs(self, view, *, qkv_layers=(), head: bool = False, mix=None) -> ModelOutputs: ...


@dataclass
class ModelOutputs:
    """hidden: `hidden_states` (0 = embeddings, i = layer i), each [batch, seq, width];
    pooled: [batch, width] float32; logits: [batch, labels] or None;
    qkv: {layer (1-based): (q, k, v)}, each [batch, seq, heads * head_dim]."""

    hidden: Sequence[torch.Tensor]
    pooled: torch.Tensor
    logits: torch.Tensor | None = None
    qkv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    mlm_logits: torch.Tensor | None = None  # [masked tokens, vocab], rows where labels != -100
    # An LM teacher read from a cache: (top-k ids [tokens, k], their logits [tokens, k],
    # logsumexp of the full logits / T [tokens]) of every target token, in row order.
    topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # An LM teacher read from a cache of sampled targets: (ids drawn from the teacher at T
    # [tokens, S] int32, the teacher's log-probability of each draw [tokens, S]).
    samples: tuple[torch.Tensor, torch.Tensor] | None = None


class TaskHead(nn.Module):
    """A linear task head over the mean-pooled sentence vector: classification logits or a
    regression score. Mean pooling matches how sentence-transformers teachers embed."""

    def __init__(self, width: int, num_labels: int, task_type: str) -> None:
        super().__init__()
        self.task_type = task_type
        self.dropout = nn.Dropout(0.1)
        self.linear = nn.Linear(width, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(pooled.to(self.linear.weight.dtype)))

    def save(self, folder: str | Path) -> None:
        out = Path(folder) / TASK_HEAD_DIR
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "width": self.linear.in_features,
            "num_labels": self.linear.out_features,
            "task_type": self.task_type,
        }
        (out / "config.json").write_text(json.dumps(meta))
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))

    @classmethod
    def load(cls, folder: str | Path) -> TaskHead | None:
        """The head saved in an exported model folder, or None when it has none."""
        src = Path(folder) / TASK_HEAD_DIR
        if not (src / "config.json").is_file():
            return None
        meta = json.loads((src / "config.json").read_text())
        head = cls(meta["width"], meta["num_labels"], meta["task_type"])
        head.load_state_dict(load_file(str(src / "model.safetensors")))
        return head


def has_task_head(folder: str | Path) -> bool:
    """True when a model folder carries a trained task head (`task_head/`)."""
    return (Path(folder) / TASK_HEAD_DIR / "config.json").is_file()


class MlmHead(nn.Module):
    """BERT's masked-LM head (dense, GELU, LayerNorm, decoder to the vocabulary). The decoder
    starts as the model's token-embedding table and stays frozen, as a tied decoder would
    with frozen embeddings, without sharing a tensor across modules (safe under ZeRO-3)."""

    def __init__(self, embeddings: torch.Tensor, eps: float = 1e-12) -> None:
        super().__init__()
        vocab, width = embeddings.shape
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.decoder = nn.Linear(width, vocab)
        with torch.no_grad():
            self.decoder.weight.copy_(embeddings)
            self.decoder.bias.zero_()
        self.decoder.weight.requires_grad_(False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.norm(nn.functional.gelu(self.dense(hidden)))
        return self.decoder(x)


@dataclass(frozen=True)
class MlmMasking:
    """What BERT-style masking needs from the tokenizer, and the masking rate."""

    mask_id: int
    special_ids: tuple[int, ...]
    vocab_size: int
    probability: float

    @classmethod
    def from_tokenizer(cls, tokenizer, probability: float) -> MlmMasking:
        return cls(
            tokenizer.mask_token_id, tuple(tokenizer.all_special_ids), len(tokenizer), probability
        )


def mask_tokens(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `probability` of the non-special tokens; of those 80% become
    [MASK], 10% a random token, 10% stay. Returns (masked ids, labels with -100 elsewhere).
    special: [batch, seq] bool, True for padding/[CLS]/[SEP] (never chosen)."""
    probs = torch.full(input_ids.shape, probability)
    chosen = torch.bernoulli(probs, generator=generator).bool() & ~special.cpu()
    labels = torch.where(chosen, input_ids.cpu(), torch.full_like(input_ids.cpu(), -100))
    draw = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.cpu().clone()
    masked[chosen & (draw < 0.8)] = mask_id
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    masked[swap] = torch.randint(vocab_size, (int(swap.sum()),), generator=generator)
    return masked.to(input_ids.device), labels.to(input_ids.device)


def sentence_pool(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's sentence vector, [batch, width] float32: mean over real tokens, or max
    where the model's config says so (BiLSTM students). Training and evaluation share it."""
    if getattr(model.config, "pooling", "mean") == "max":
        return masked_max_pool(hidden, mask).float()
    return masked_mean_pool(hidden, mask)


def _accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def forward_outputs(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    head: nn.Module | None = None,
    qkv_layers: Sequence[int] = (),
    inputs_embeds: torch.Tensor | None = None,
) -> ModelOutputs:
    """Run `model` on a batch (`input_ids`, `attention_mask`, optional `token_type_ids`), or
    on `inputs_embeds` instead of ids (MixKD's mixed embeddings)."""
    mask = batch["attention_mask"]
    kwargs: dict = {"attention_mask": mask, "output_hidden_states": True}
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds
    else:
        kwargs["input_ids"] = batch["input_ids"]
    if "token_type_ids" in batch and _accepts(model, "token_type_ids"):
        kwargs["token_type_ids"] = batch["token_type_ids"]
    with capture_qkv(model, [layer - 1 for layer in qkv_layers]) as captured:
        out = model(**kwargs)
    pooled = sentence_pool(model, out.last_hidden_state, mask)
    return ModelOutputs(
        hidden=out.hidden_states,
        pooled=pooled,
        logits=head(pooled) if head is not None else None,
        qkv={layer + 1: qkv for layer, qkv in captured.items()},
    )
