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

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
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
    and `IGNORE_INDEX` skipped; seq2seq: decoder position t predicts `labels[:, t]`.
    """
    targets = batch["labels"] if is_encoder_decoder(model.config) else causal_targets(batch)
    return lm_hidden(model, batch), targets


def lm_hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The final hidden states [batch, seq, width] of the model's LM positions (a seq2seq
    model's decoder positions). The encoder and decoder stacks run directly (BART's
    `model.encoder`, T5's `encoder`), so no [tokens, vocab] logits are made here."""
    if is_encoder_decoder(model.config):
        mask = batch["attention_mask"]
        encoded = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=mask)
        out = model.get_decoder()(
            input_ids=batch["decoder_input_ids"],
            attention_mask=batch.get("decoder_attention_mask"),
            encoder_hidden_states=encoded.last_hidden_state,
            encoder_attention_mask=mask,
        )
        return out.last_hidden_state
    base = getattr(model, model.base_model_prefix)
    return base(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state


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
    # A cached teacher's sampled targets: (drawn ids, their teacher log-probs) per target token.
    teacher_samples: tuple[torch.Tensor, torch.Tensor] | None = None
    # (student rows [n, width], teacher rows [n, teacher width]) of the target positions
    # `token_losses.first_aligned` pairs across the two tokenizations (`uld`).
    aligned: tuple[torch.Tensor, torch.Tensor] | None = None
    student_qkv: Qkv | None = None
    teacher_qkv: Qkv | None = None
    attention_mask: torch.Tensor | None = None
    # The targets are the student's own samples (`objective.on_policy`), not the data's.
    sampled: bool = False


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
        if view.teacher_samples is not None:  # a cached teacher: draws from it per token
            if divergence != "forward_kl":
                raise ValueError(
                    f"teacher cache: sampled targets estimate forward KL (lm_kl) only, not "
                    f"{divergence}"
                )
            return token_losses.chunked_sampled_token_kd(
                view.student_hidden,
                view.student_head,
                *view.teacher_samples,
                num_chunks=s.num_chunks,
                temperature=s.temperature,
                checkpoint=s.checkpoint,
            )
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
# What a cache of sampled teacher targets (`teacher.cache.targets: sampled`) estimates without
# bias: the forward KL. Reverse KL and JSD weigh tokens by the student's probability, which
# draws from the teacher do not cover.
SAMPLED_TARGET_LOSSES = {"lm_kl"}
CROSS_TOKENIZER_LOSSES = {"lm", "uld"}
# What trains on the student's own samples (`objective.on_policy`): the divergences from
# the teacher. `lm` learns the data's tokens, so a sampled batch leaves it out.
ON_POLICY_LOSSES = SHARED_VOCABULARY_LOSSES | {"uld"}
DATA_TOKEN_LOSSES = {"lm"}


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
        """(weighted sum, its parts); a view of sampled targets leaves out (and does not
        report) the terms that learn the data's tokens (`DATA_TOKEN_LOSSES`)."""
        names = [n for n in self.weights if not (view.sampled and n in DATA_TOKEN_LOSSES)]
        parts = {name: TOKEN_LOSSES[name](view) for name in names}
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
        t_hidden = t_head = t_topk = t_samples = aligned = t_qkv = None
        if teacher is not None and teacher.samples is not None:  # a cache of sampled targets
            t_samples = teacher.samples
        elif teacher is not None and teacher.topk is not None:  # from a teacher-output cache
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
            teacher_samples=t_samples,
            aligned=aligned,
            student_qkv=captured[layers[0] - 1] if layers else None,
            teacher_qkv=t_qkv,
            attention_mask=batch["attention_mask"],
            sampled=SAMPLED in batch,
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
    """Token ids without padding: `text` (and `target` -> `labels` for seq2seq pairs); the
    prompts of on-policy distillation (`prompt_ids`, `with_prompts`) pass through."""
    from distill.core.data import dataset_fingerprint, tokenizer_digest

    pairs = "target" in ds.column_names
    prompts = PROMPT_IDS in ds.column_names

    def encode(batch: dict) -> dict:
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        if pairs:
            out["labels"] = tokenizer(batch["target"], truncation=True, max_length=max_length)[
                "input_ids"
            ]
        if prompts:
            out[PROMPT_IDS] = batch[PROMPT_IDS]
        return out

    tok_id = (type(tokenizer).__name__, tokenizer_digest(tokenizer), max_length, "generative")
    out = ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=dataset_fingerprint(ds, "tokenize", tok_id),
    )
    keep = ["input_ids", "attention_mask", "labels", PROMPT_IDS]
    return out.remove_columns([c for c in out.column_names if c not in keep])


def generative_collate(tokenizer):
    """Pad `input_ids`/`attention_mask` with the pad id and `labels` with `IGNORE_INDEX`;
    prompts (`prompt_ids`) are padded on the left, so every prompt ends where the student's
    continuation starts (`prompt_input_ids`, `prompt_attention_mask`)."""

    def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        labels = [r.pop("labels") for r in rows] if "labels" in rows[0] else None
        prompts = [r.pop(PROMPT_IDS) for r in rows] if PROMPT_IDS in rows[0] else None
        batch = dict(tokenizer.pad(rows, padding=True, return_tensors="pt"))
        if labels is not None:
            width = max(len(x) for x in labels)
            batch["labels"] = torch.tensor(
                [x + [token_losses.IGNORE_INDEX] * (width - len(x)) for x in labels]
            )
        if prompts is not None:
            pad = tokenizer.pad_token_id
            width = max(len(p) for p in prompts)
            batch[PROMPT_INPUT_IDS] = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            batch[PROMPT_MASK] = torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
            )
        return batch

    return _collate


# --- on-policy distillation (GKD) ------------------------------------------------------------

PROMPT_IDS = "prompt_ids"  # a tokenized row's prompt (on-policy distillation)
PROMPT_INPUT_IDS, PROMPT_MASK = "prompt_input_ids", "prompt_attention_mask"  # left-padded
SAMPLED = "sampled"  # a batch key: the targets are the student's own samples


def text_prefixes(
    tokenizer, texts: list[str], *, prefix_fraction: float, max_length: int
) -> list[tuple[list[int], int] | None]:
    """Each text cut to its first `prefix_fraction` of tokens (of its first `max_length`, at
    least one; special tokens such as BOS are kept but not counted, a trailing EOS or [SEP]
    dropped): (its token ids, the character where the prefix ends), or None for a text
    without tokens. The prompts of sequence-level KD (`generative_eval.continue_texts`)
    and of on-policy distillation (`with_prompts`)."""
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    out: list[tuple[list[int], int] | None] = []
    for ids, offsets, special in zip(
        enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
    ):
        real = [i for i, flag in enumerate(special) if not flag]
        if not real:
            out.append(None)
            continue
        last = real[max(1, int(len(real) * prefix_fraction)) - 1]
        out.append((ids[: last + 1], offsets[last][1]))
    return out


def with_prompts(ds, tokenizer, *, prefix_fraction: float, max_length: int):
    """Plain text (`text`, and `prompt`: "" where a row has none) with each row's prompt as
    token ids (`prompt_ids`): its `prompt`, else its text's first `prefix_fraction`
    (`text_prefixes`); a row with neither starts from BOS (or EOS). Seq2seq pairs come back
    as they are: the source is the prompt."""
    from distill.core.data import PROMPT_COLUMN, dataset_fingerprint, tokenizer_digest

    if "target" in ds.column_names:
        return ds
    start = [t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None][:1]

    def encode(batch: dict) -> dict:
        given = batch.get(PROMPT_COLUMN) or [""] * len(batch["text"])
        own = text_prefixes(tokenizer, given, prefix_fraction=1.0, max_length=max_length)
        cut = text_prefixes(
            tokenizer, batch["text"], prefix_fraction=prefix_fraction, max_length=max_length
        )
        return {PROMPT_IDS: [(o or c or (start, 0))[0] for o, c in zip(own, cut)]}

    settings = (tokenizer_digest(tokenizer), prefix_fraction, max_length)
    return ds.map(
        encode,
        batched=True,
        new_fingerprint=dataset_fingerprint(ds, "prompts", settings),
    )


@dataclass(frozen=True)
class OnPolicySettings:
    """How the student samples (`objective.on_policy`): `max_new_tokens` per prompt at
    `temperature` and nucleus `top_p`; a causal prompt keeps its last `max_length -
    max_new_tokens` tokens, so prompt and sample fit the positions the data uses."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    max_length: int = 64


def on_policy_step(seed: int, step: int, fraction: float) -> bool:
    """Whether optimizer step `step` trains on the student's own samples (probability
    `fraction`): a uniform number hashed from (seed, step) alone, so every rank draws the
    same (a ZeRO-3 teacher's forward stays a collective they all call), a resumed stage
    continues the same sequence, and no random state is read or advanced."""
    if fraction <= 0.0:
        return False
    return _uniform("on-policy", seed, step) < fraction


def sampling_seed(seed: int, step: int, *stream: int) -> int:
    """The seed of one micro-batch's sampling: from (seed, step) and its `stream` (rank,
    micro-batch), so ranks sample independently and a resumed step samples the same."""
    return int(_uniform("sample", seed, step, *stream) * 2**63)


def _uniform(*key: object) -> float:
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@torch.no_grad()
def sample_continuations(
    student: nn.Module, batch: dict, ids: BatchIds, settings: OnPolicySettings, *, seed: int
) -> dict:
    """The batch of the student's own continuations of `batch`'s prompts, to train on.

    The student samples (KV cache, no grad, eval mode, the global RNG untouched) up to
    `settings.max_new_tokens` tokens per prompt; a row stops at its first EOS (kept as a
    target). Causal: the prompt is `prompt_input_ids` (left-padded); the result is a
    right-padded batch like the data's (`input_ids`, `attention_mask`) whose `labels` are
    the sampled tokens, `IGNORE_INDEX` on the prompt and padding. Seq2seq: the source is
    the prompt and the samples are the `labels` (with their decoder inputs). With several
    ranks, every rank runs as many decoding steps as the longest (`synced_gpus`: a
    partitioned student's forward is a collective), and the samples are padded to
    `max_new_tokens` on every rank. `SAMPLED` marks the batch.
    """
    if ids.seq2seq:
        prompt, mask = batch["input_ids"], batch["attention_mask"]
    else:  # the last tokens of each prompt: the ones next to the continuation
        room = max(1, settings.max_length - settings.max_new_tokens)
        prompt, mask = batch[PROMPT_INPUT_IDS][:, -room:], batch[PROMPT_MASK][:, -room:]
    new = _sample(student, prompt, mask, ids, settings, seed)
    new = new[:, 1:] if ids.seq2seq else new[:, prompt.shape[1] :]  # drop the decoder start
    new = new[:, : settings.max_new_tokens]
    kept = torch.ones_like(new, dtype=torch.bool)
    if ids.eos is not None:  # up to and with the first EOS
        eos = (new == ids.eos).long()
        kept = (eos.cumsum(1) - eos) == 0
    short = settings.max_new_tokens - new.shape[1]  # every rank: max_new_tokens columns
    new, kept = (
        nn.functional.pad(new, (0, short), value=ids.pad),
        nn.functional.pad(kept, (0, short)),
    )
    targets = new.masked_fill(~kept, token_losses.IGNORE_INDEX)
    if ids.seq2seq:
        sampled = {"input_ids": prompt, "attention_mask": mask, "labels": targets}
        return {**prepare_seq2seq_batch(sampled, ids, torch.Generator()), SAMPLED: kept.any(1)}
    ignore = torch.full_like(prompt, token_losses.IGNORE_INDEX)
    rows = (
        torch.cat([prompt, new], 1),
        torch.cat([mask, kept.long()], 1),
        torch.cat([ignore, targets], 1),
    )
    # Move each row's left padding to its end: positions count from its first token, as in
    # the data's batches (and in generation, whose positions skip the padding).
    width = rows[0].shape[1]
    shift = (mask == 0).sum(1, keepdim=True)
    order = (torch.arange(width, device=prompt.device)[None] + shift) % width
    input_ids, attention_mask, labels = (r.gather(1, order) for r in rows)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        SAMPLED: kept.any(1),
    }


def _sample(student, prompt, mask, ids: BatchIds, settings: OnPolicySettings, seed: int):
    """`student.generate` sampling from its own distribution (no top-k cut), in eval mode
    (no dropout), under a forked RNG seeded with `seed`."""
    training = student.training
    devices = [prompt.device] if prompt.device.type == "cuda" else []
    synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    student.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return student.generate(
                input_ids=prompt,
                attention_mask=mask,
                do_sample=True,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=0,
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=ids.pad,
                synced_gpus=synced,
            )
    finally:
        student.train(training)


def with_teacher_tokens(batch: dict, tokenizer, teacher_tokenizer, max_length: int) -> dict:
    """A sampled causal batch (`sample_continuations`) with the teacher's own tokenization
    of the same text (`teacher_*`, as the data's batches carry it across tokenizers): each
    row decoded by the student's tokenizer and re-tokenized by the teacher's (up to
    `max_length` tokens); `teacher_labels` mark the teacher's tokens that start inside the
    sampled continuation, so `uld` pairs the two models' sampled positions in order."""
    targets = batch["labels"] != token_losses.IGNORE_INDEX
    prompt_lengths = targets.long().argmax(1).tolist()  # every row's first sample is kept
    heads, texts = [], []
    for row, n, p in zip(
        batch["input_ids"].tolist(), batch["attention_mask"].sum(1).tolist(), prompt_lengths
    ):
        heads.append(tokenizer.decode(row[:p], skip_special_tokens=True))
        texts.append(tokenizer.decode(row[: int(n)], skip_special_tokens=True))
    enc = teacher_tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        padding=True,
        padding_side="right",
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    device = batch["input_ids"].device
    starts, ends = enc["offset_mapping"][..., 0], enc["offset_mapping"][..., 1]
    boundary = torch.tensor([len(h) for h in heads])[:, None]
    sampled = (starts >= boundary) & (ends > starts) & enc["attention_mask"].bool()
    return {
        **batch,
        TEACHER_PREFIX + "input_ids": enc["input_ids"].to(device),
        TEACHER_PREFIX + "attention_mask": enc["attention_mask"].to(device),
        TEACHER_PREFIX + "labels": enc["input_ids"]
        .masked_fill(~sampled, token_losses.IGNORE_INDEX)
        .to(device),
    }


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
