"""Token-level pieces of the generative families (`generative_family.py`): GPT-2-style
decoders (`causal`) and BART-style encoder-decoders (`seq2seq`). Students are built by
`student.build_student` like every other family's.

- `GenerativeDistillationModel` is the trainable half of a stage, with the same interface as
  `objective.DistillationModel`; its objective is a weighted sum of `TOKEN_LOSSES`, each a
  pure function of `token_losses.py`, computed on target tokens only, in chunks, or one of
  the MiniLM / MiniLMv2 `attention_terms.ATTENTION_TERMS` on the Q/K/V of one decoder block
  (causal: each query sees the keys at or before it) or encoder block (seq2seq).
- Batches: causal batches are plain text (targets are the next tokens); seq2seq batches have
  a source and `labels` (task pairs), or are made by BART's text infilling from plain text
  (`text_infilling`, the pre-training objective).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from distill.core import token_losses
from distill.core.attention_terms import (
    ATTENTION_TERMS,
    AttentionSettings,
    Qkv,
    ReadsQkv,
)
from distill.core.data import TEACHER_PREFIX, teacher_view
from distill.core.internals import capture_qkv
from distill.core.model_types import model_type_of
from distill.core.outputs import ModelOutputs
from distill.core.student import architecture_size, is_encoder_decoder

# --- forward: hidden states of target tokens and the LM head ---------------------------------


def lm_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden [n, width] -> logits [n, vocab], exactly as the model's own forward computes
    them: BART adds `final_logits_bias`, T5 scales tied decoder outputs by width^-0.5,
    Gemma 2/3 soft-cap the logits (the model-type table names the config fields)."""
    out = model.get_output_embeddings()
    bias = getattr(model, "final_logits_bias", None)
    entry = model_type_of(model.config)
    scale = None
    if entry.scaled_decoder_output and getattr(model.config, entry.scaled_decoder_output, False):
        scale = architecture_size(model.config).hidden ** -0.5
    cap = getattr(model.config, entry.logit_softcap, None) if entry.logit_softcap else None

    def head(h: torch.Tensor) -> torch.Tensor:
        h = h.to(out.weight.dtype)
        logits = out(h * scale if scale is not None else h)
        if bias is not None:
            logits = logits + bias.to(h.device)[0]
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return head


def target_hidden(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [batch, seq, width], targets [batch, seq]) of the model's LM positions.

    causal: position t predicts token t+1 (`labels` if given, else `input_ids`), padding
    and `IGNORE_INDEX` skipped; seq2seq: decoder position t predicts `labels[:, t]`. The
    encoder and decoder stacks run directly (BART's `model.encoder`, T5's `encoder`), so
    no [tokens, vocab] logits are made here.
    """
    if is_encoder_decoder(model.config):
        mask = batch["attention_mask"]
        encoded = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=mask)
        out = model.get_decoder()(
            input_ids=batch["decoder_input_ids"],
            attention_mask=batch.get("decoder_attention_mask"),
            encoder_hidden_states=encoded.last_hidden_state,
            encoder_attention_mask=mask,
        )
        return out.last_hidden_state, batch["labels"]
    base = getattr(model, model.base_model_prefix)
    out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.last_hidden_state, causal_targets(batch)


def causal_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token targets [batch, seq]: target[t] = token[t+1]; padding, the last position
    and any `labels == IGNORE_INDEX` become `IGNORE_INDEX`."""
    ids = batch.get("labels", batch["input_ids"])
    ids = ids.masked_fill(batch["attention_mask"] == 0, token_losses.IGNORE_INDEX)
    pad = torch.full_like(ids[:, :1], token_losses.IGNORE_INDEX)
    return torch.cat([ids[:, 1:], pad], dim=1)


# --- the objective ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSettings:
    temperature: float = 1.0
    jsd_beta: float = 0.5
    num_chunks: int = 1  # the same on every rank (see `token_losses._chunks`)
    checkpoint: bool = True
    attention: AttentionSettings | None = None  # when the objective has attention terms


@dataclass
class TokenView:
    """Target-token rows of both models: hidden [tokens, width] and target ids [tokens];
    for attention terms, both models' captured (q, k, v) [batch, seq, width] and the
    attention mask [batch, seq] of the tokens they read (a seq2seq model's source)."""

    student_hidden: torch.Tensor
    student_head: Callable
    targets: torch.Tensor
    teacher_hidden: torch.Tensor | None
    teacher_head: Callable | None
    settings: TokenSettings
    # A cached teacher: (top-k ids, logits, logsumexp) per target token instead of hidden+head.
    teacher_topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # (student rows [n, width], teacher rows [n, teacher width]) of the target positions
    # `token_losses.first_aligned` pairs across the two tokenizations (`uld`).
    aligned: tuple[torch.Tensor, torch.Tensor] | None = None
    student_qkv: Qkv | None = None
    teacher_qkv: Qkv | None = None
    attention_mask: torch.Tensor | None = None


def _lm(view: TokenView) -> torch.Tensor:
    s = view.settings
    return token_losses.chunked_lm_cross_entropy(
        view.student_hidden,
        view.student_head,
        view.targets,
        num_chunks=s.num_chunks,
        checkpoint=s.checkpoint,
    )


def _kd(divergence: str) -> Callable[[TokenView], torch.Tensor]:
    def loss(view: TokenView) -> torch.Tensor:
        s = view.settings
        options = {
            "num_chunks": s.num_chunks,
            "divergence": divergence,
            "temperature": s.temperature,
            "beta": s.jsd_beta,
            "checkpoint": s.checkpoint,
        }
        if view.teacher_topk is not None:  # a cached teacher: its top-k logits per token
            return token_losses.chunked_sparse_token_kd(
                view.student_hidden, view.student_head, *view.teacher_topk, **options
            )
        return token_losses.chunked_token_kd(
            view.student_hidden,
            view.teacher_hidden,
            view.student_head,
            view.teacher_head,
            **options,
        )

    return loss


def _uld(view: TokenView) -> torch.Tensor:
    s = view.settings
    student, teacher = view.aligned
    return token_losses.chunked_uld(
        student,
        teacher,
        view.student_head,
        view.teacher_head,
        num_chunks=s.num_chunks,
        temperature=s.temperature,
        checkpoint=s.checkpoint,
    )


def _attention(name: str) -> Callable[[TokenView], torch.Tensor]:
    term = ATTENTION_TERMS[name]

    def loss(view: TokenView) -> torch.Tensor:
        return term(
            view.student_qkv, view.teacher_qkv, view.attention_mask, view.settings.attention
        )

    return loss


TOKEN_LOSSES: dict[str, Callable[[TokenView], torch.Tensor]] = {
    "lm": _lm,
    "lm_kl": _kd("forward_kl"),
    "lm_reverse_kl": _kd("reverse_kl"),
    "lm_jsd": _kd("jsd"),
    "uld": _uld,
    "attention_kl": _attention("attention_kl"),
    "value_relation_kl": _attention("value_relation_kl"),
    "minilmv2_relations": _attention("minilmv2_relations"),
}
TEACHERLESS_TOKEN_LOSSES = {"lm"}
# Losses that compare the two models' distributions over one vocabulary, token by token:
# they need the teacher's tokenizer. `uld` aligns positions across tokenizations instead.
# (The attention terms, `attention_terms.ATTENTION_LOSSES`, compare positions of one
# tokenization: they need the teacher's tokenizer too.)
SHARED_VOCABULARY_LOSSES = {"lm_kl", "lm_reverse_kl", "lm_jsd"}
CROSS_TOKENIZER_LOSSES = {"lm", "uld"}


class TokenObjective(ReadsQkv, nn.Module):
    """Weighted sum of `TOKEN_LOSSES`; owns no parameters (logits compare directly over one
    vocabulary, or as sorted probabilities across two: `uld`; attention relations are
    seq x seq, whatever the widths)."""

    def __init__(self, weights: dict[str, float], settings: TokenSettings) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(TOKEN_LOSSES))
        if unknown:
            raise ValueError(
                f"objective.weights: unknown loss {unknown} for a generative teacher; "
                f"choose from {sorted(TOKEN_LOSSES)}"
            )
        self.weights = {name: w for name, w in weights.items() if w > 0}
        self.settings = settings

    @property
    def needs_teacher(self) -> bool:
        return any(name not in TEACHERLESS_TOKEN_LOSSES for name in self.weights)

    @property
    def needs_alignment(self) -> bool:
        """An objective term reads target positions aligned across tokenizations (`uld`)."""
        return "uld" in self.weights

    def forward(self, view: TokenView) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: TOKEN_LOSSES[name](view) for name in self.weights}
        return sum(self.weights[n] * v for n, v in parts.items()), parts


class GenerativeDistillationModel(nn.Module):
    """Student LM + token objective: forward(batch, teacher_outputs) -> (loss, parts), as
    `objective.DistillationModel`; the teacher stays outside. `batch_ids` are the token ids
    the family's batch preparation needs (seq2seq text infilling, decoder inputs)."""

    def __init__(self, student: nn.Module, objective: TokenObjective, batch_ids: BatchIds) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.batch_ids = batch_ids

    def forward(self, batch: dict, teacher: ModelOutputs | None, mixed=None):
        """A batch carrying the teacher's own token ids (`teacher_*` keys: the tokenizers
        differ) pairs the two models' target positions by `token_losses.first_aligned`;
        otherwise both read the same positions. Attention terms read the Q/K/V captured
        in this forward and the teacher's (`teacher.qkv`), over `attention_mask`."""
        layers = self.objective.student_qkv_layers
        with capture_qkv(self.student, [layer - 1 for layer in layers]) as captured:
            hidden, targets = target_hidden(self.student, batch)
        keep = targets != token_losses.IGNORE_INDEX
        t_hidden = t_head = t_topk = aligned = t_qkv = None
        if teacher is not None and teacher.topk is not None:  # from a teacher-output cache
            t_topk = teacher.topk
        elif teacher is not None:
            t_all, t_head = teacher.hidden[-1], teacher.head
            if layers:
                t_qkv = teacher.qkv[self.objective.teacher_qkv_layers[0]]
            if TEACHER_PREFIX + "input_ids" not in batch:  # one tokenization: same positions
                t_hidden, t_keep = t_all[keep], keep
            elif shared := sorted(set(self.objective.weights) - CROSS_TOKENIZER_LOSSES):
                raise ValueError(
                    f"objective.weights: {shared} need the teacher's tokenizer; this batch "
                    "carries two tokenizations"
                )
            else:  # the teacher's own tokenization (causal: the only family that has one)
                t_keep = causal_targets(teacher_view(batch)) != token_losses.IGNORE_INDEX
            if self.objective.needs_alignment:
                s_aligned, t_aligned = token_losses.first_aligned(keep, t_keep)
                aligned = (hidden[s_aligned], t_all[t_aligned])
        view = TokenView(
            student_hidden=hidden[keep],
            student_head=lm_head(self.student),
            targets=targets[keep],
            teacher_hidden=t_hidden,
            teacher_head=t_head,
            settings=self.objective.settings,
            teacher_topk=t_topk,
            aligned=aligned,
            student_qkv=captured[layers[0] - 1] if layers else None,
            teacher_qkv=t_qkv,
            attention_mask=batch["attention_mask"],
        )
        return self.objective(view)


def num_chunks(batch_size: int, max_length: int, chunk_tokens: int) -> int:
    """Chunks per loss so one chunk holds at most `chunk_tokens` tokens, fixed by the spec
    (not the batch) so every rank makes the same number of head calls."""
    return max(1, math.ceil(batch_size * max_length / chunk_tokens))


# --- seq2seq batches -------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchIds:
    """Token ids a batch transform needs."""

    seq2seq: bool
    pad: int
    mask: int | None = None
    decoder_start: int | None = None
    eos: int | None = None
    bos: int | None = None
    noise_ratio: float = 0.3
    mean_span: float = 3.0

    @classmethod
    def from_model(cls, config, tokenizer, noise_ratio: float = 0.3) -> BatchIds:
        return cls(
            seq2seq=is_encoder_decoder(config),
            pad=tokenizer.pad_token_id,
            mask=tokenizer.mask_token_id,
            decoder_start=getattr(config, "decoder_start_token_id", None),
            eos=tokenizer.eos_token_id,
            bos=tokenizer.bos_token_id,
            noise_ratio=noise_ratio,
        )


def shift_right(labels: torch.Tensor, pad: int, start: int) -> torch.Tensor:
    """Decoder inputs: [start, y_0, ..., y_{n-2}], ignored labels read as padding."""
    out = labels.new_full(labels.shape, pad)
    out[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == token_losses.IGNORE_INDEX, pad)
    out[:, 0] = start
    return out


def text_infilling(
    ids: list[int],
    *,
    mask_id: int,
    ratio: float,
    mean_span: float,
    generator: torch.Generator,
    keep: Sequence[int] = (),
) -> list[int]:
    """BART's text infilling: spans with Poisson(mean_span) lengths (0 allowed: an inserted
    mask) cover about `ratio` of the tokens; each span becomes one mask token. Tokens in
    `keep` (bos/eos) are never masked."""
    body = [i for i, t in enumerate(ids) if t not in keep]
    budget = round(len(body) * ratio)
    if not body or budget == 0:
        return list(ids)
    body_set = set(body)
    masked: set[int] = set()
    inserts: set[int] = set()
    rate = torch.tensor([mean_span])
    while budget > 0:
        length = min(int(torch.poisson(rate, generator=generator)), budget)
        at = body[int(torch.randint(len(body), (1,), generator=generator))]
        if length == 0:  # an inserted mask counts as one unit of noise
            inserts.add(at)
            budget -= 1
            continue
        span = [p for p in range(at, at + length) if p in body_set]
        masked.update(span)
        budget -= len(span)
    out: list[int] = []
    for i, token in enumerate(ids):
        if i in masked:
            if i - 1 not in masked:  # a run of masked tokens becomes one mask
                out.append(mask_id)
            continue
        if i in inserts:
            out.append(mask_id)
        out.append(token)
    return out


def prepare_seq2seq_batch(batch: dict, ids: BatchIds, generator: torch.Generator) -> dict:
    """Pairs (with `labels`): add decoder inputs. Plain text: the source is the text
    infilled, the target the text itself (BART pre-training)."""
    if "labels" not in batch:
        rows = [
            row[mask.bool()].tolist()
            for row, mask in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())
        ]
        noisy = [
            text_infilling(
                r,
                mask_id=ids.mask,
                ratio=ids.noise_ratio,
                mean_span=ids.mean_span,
                generator=generator,
                keep=[t for t in (ids.bos, ids.eos) if t is not None],
            )
            for r in rows
        ]
        device = batch["input_ids"].device
        source = _pad_rows(noisy, ids.pad).to(device)
        labels = batch["input_ids"].masked_fill(
            batch["attention_mask"] == 0, token_losses.IGNORE_INDEX
        )
        batch = {
            "input_ids": source,
            "attention_mask": (source != ids.pad).long(),
            "labels": labels,
        }
        if ids.pad in (ids.bos, ids.eos):  # pad shares an id: rebuild the mask from lengths
            lengths = torch.tensor([len(r) for r in noisy], device=device)
            batch["attention_mask"] = (
                torch.arange(source.shape[1], device=device)[None] < lengths[:, None]
            ).long()
    labels = batch["labels"]
    return {
        **batch,
        "decoder_input_ids": shift_right(labels, ids.pad, ids.decoder_start),
        "decoder_attention_mask": torch.cat(
            [torch.ones_like(labels[:, :1]), (labels[:, :-1] != token_losses.IGNORE_INDEX).long()],
            dim=1,
        ),
    }


def _pad_rows(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def tokenize_generative(ds, tokenizer, max_length: int):
    """Token ids without padding: `text` (and `target` -> `labels` for seq2seq pairs)."""
    from distill.core.data import dataset_fingerprint, tokenizer_digest

    pairs = "target" in ds.column_names

    def encode(batch: dict) -> dict:
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        if pairs:
            out["labels"] = tokenizer(batch["target"], truncation=True, max_length=max_length)[
                "input_ids"
            ]
        return out

    tok_id = (type(tokenizer).__name__, tokenizer_digest(tokenizer), max_length, "generative")
    out = ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=dataset_fingerprint(ds, "tokenize", tok_id),
    )
    keep = ["input_ids", "attention_mask", "labels"]
    return out.remove_columns([c for c in out.column_names if c not in keep])


def generative_collate(tokenizer):
    """Pad `input_ids`/`attention_mask` with the pad id and `labels` with `IGNORE_INDEX`."""

    def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        labels = [r.pop("labels") for r in rows] if "labels" in rows[0] else None
        batch = dict(tokenizer.pad(rows, padding=True, return_tensors="pt"))
        if labels is not None:
            width = max(len(x) for x in labels)
            batch["labels"] = torch.tensor(
                [x + [token_losses.IGNORE_INDEX] * (width - len(x)) for x in labels]
            )
        return batch

    return _collate


# --- probes and export checks ----------------------------------------------------------------


@torch.no_grad()
def probe_logits(model: nn.Module, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """The model's LM logits [texts, seq, vocab] on fixed texts (seq2seq: the texts as
    source and as teacher-forced target)."""
    model.eval()
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    if is_encoder_decoder(model.config):
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, token_losses.IGNORE_INDEX)
        out = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            decoder_input_ids=shift_right(
                labels, tokenizer.pad_token_id, model.config.decoder_start_token_id
            ),
        )
    else:
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return out.logits.float() * enc["attention_mask"][..., None]
