"""Generative teachers and students: GPT-2-style decoders (`causal`) and BART-style
encoder-decoders (`seq2seq`), next to the encoder family of the rest of `distill_core`.

- `model_family` tells the three apart from a config; `load_generative` loads a folder as an
  LM (or builds one from a weightless architecture such as `builtin:tiny-gpt2`).
- Students are built from the teacher's config by depth and width (`GenerativeSize`), each
  layer copied from a teacher layer chosen by a `STUDENT_INITS` layer rule; narrower
  students take the leading channels of every tensor (GPT-2's fused q|k|v per third).
- `GenerativeDistillationModel` is the trainable half of a stage, with the same interface as
  `objective.DistillationModel`; its objective is a weighted sum of `TOKEN_LOSSES`, each a
  pure function of `token_losses.py`, computed on target tokens only, in chunks.
- Batches: causal batches are plain text (targets are the next tokens); seq2seq batches have
  a source and `labels` (task pairs), or are made by BART's text infilling from plain text
  (`text_infilling`, the pre-training objective).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PretrainedConfig

from distill.core import token_losses
from distill.core.outputs import ModelOutputs

CAUSAL_TYPES = {"gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "opt", "phi"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def model_family(config: PretrainedConfig) -> str:
    """`seq2seq` (encoder-decoder), `causal` (decoder-only LM) or `encoder`."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if getattr(config, "is_decoder", False) or config.model_type in CAUSAL_TYPES:
        return "causal"
    return "encoder"


def is_generative(config: PretrainedConfig) -> bool:
    return model_family(config) != "encoder"


def auto_class(family: str):
    return AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM


def has_weights(folder: str) -> bool:
    """False for a local folder holding only a config (a packaged architecture)."""
    path = Path(folder)
    return not path.is_dir() or any((path / f).is_file() for f in WEIGHT_FILES)


def load_generative(folder: str, *, seed: int = 0) -> nn.Module:
    """A causal or seq2seq LM from a folder or hub id; a weightless architecture folder is
    built with random weights (seeded), for a `kind: pretrain` stage to train."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    cls = auto_class(model_family(config))
    if has_weights(folder):
        return cls.from_pretrained(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls.from_config(config)


# --- architecture dims ---------------------------------------------------------------------


@dataclass(frozen=True)
class GenerativeSize:
    """Depth and width of a generative model; `decoder_layers` only for seq2seq."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    decoder_layers: int | None = None


def architecture_size(config: PretrainedConfig) -> GenerativeSize:
    """The dims of a GPT-2-, Llama- or BART-style config, under their standard names."""
    if model_family(config) == "seq2seq":
        return GenerativeSize(
            config.encoder_layers,
            config.d_model,
            config.encoder_attention_heads,
            config.encoder_ffn_dim,
            config.decoder_layers,
        )
    ffn = getattr(config, "n_inner", None) if config.model_type == "gpt2" else None
    if config.model_type == "gpt2":
        ffn = ffn or 4 * config.n_embd
    else:
        ffn = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
    return GenerativeSize(
        config.num_hidden_layers, config.hidden_size, config.num_attention_heads, ffn
    )


def generative_student_config(teacher_config: PretrainedConfig, size: GenerativeSize):
    """The teacher's config with depth and width replaced."""
    if size.hidden % size.heads:
        raise ValueError(
            f"student.heads: {size.heads} does not divide student.hidden {size.hidden}"
        )
    config = copy.deepcopy(teacher_config)
    if model_family(config) == "seq2seq":
        config.encoder_layers = size.layers
        config.decoder_layers = size.decoder_layers or size.layers
        config.num_hidden_layers = size.layers
        config.d_model = size.hidden
        config.encoder_attention_heads = config.decoder_attention_heads = size.heads
        config.encoder_ffn_dim = config.decoder_ffn_dim = size.ffn
        return config
    config.num_hidden_layers = size.layers
    config.hidden_size = size.hidden
    config.num_attention_heads = size.heads
    if config.model_type == "gpt2":
        config.n_inner = size.ffn
    elif hasattr(config, "intermediate_size"):
        config.intermediate_size = size.ffn
    else:
        config.ffn_dim = size.ffn
    return config


# --- building students -----------------------------------------------------------------------


def layer_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The model's stacks of blocks: [decoder blocks] or [encoder blocks, decoder blocks]."""
    config = model.config
    if model_family(config) == "seq2seq":
        base = model.get_encoder(), model.get_decoder()
        return [stack.layers for stack in base]
    n = config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return [module]
    raise ValueError(f"cannot find a list of {n} layers in {type(model).__name__}")


def _copy_leading(dst: torch.Tensor, src: torch.Tensor, fused_thirds: bool = False) -> None:
    """Copy the leading block of `src` that fits `dst`; GPT-2's fused c_attn ([in, 3h]) is
    sliced per third so q, k and v each keep their own leading heads."""
    if fused_thirds and dst.shape != src.shape:
        for d, s in zip(dst.chunk(3, dim=-1), src.chunk(3, dim=-1)):
            d.copy_(s[tuple(slice(0, n) for n in d.shape)])
        return
    dst.copy_(src[tuple(slice(0, n) for n in dst.shape)])


@torch.no_grad()
def copy_generative_weights(
    student: nn.Module, teacher: nn.Module, teacher_layers: Sequence[Sequence[int]]
) -> None:
    """Initialise `student` from `teacher`: for each stack, student block i copies teacher
    block teacher_layers[stack][i]; every other weight is copied by name (leading slice)."""
    s_stacks, t_stacks = layer_stacks(student), layer_stacks(teacher)
    in_layers = set()
    for s_stack, t_stack, chosen in zip(s_stacks, t_stacks, teacher_layers):
        in_layers |= {id(p) for p in s_stack.parameters()}
        for s_block, t_index in zip(s_stack, chosen):
            t_params = dict(t_stack[t_index].named_parameters())
            for name, param in s_block.named_parameters():
                _copy_leading(
                    param,
                    t_params[name],
                    fused_thirds=name.endswith("c_attn.weight") or name.endswith("c_attn.bias"),
                )
    t_all = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        if id(param) not in in_layers and name in t_all:
            _copy_leading(param, t_all[name])
    for name, buffer in student.named_buffers():  # BART's final_logits_bias
        t_buffers = dict(teacher.named_buffers())
        if name in t_buffers and buffer.dim() == t_buffers[name].dim() and "bias" in name:
            _copy_leading(buffer, t_buffers[name])


def build_generative_student(
    teacher: nn.Module,
    size: GenerativeSize,
    init: str = "uniform_map",
    teacher_layers: Sequence[int] | None = None,
    seed: int = 0,
) -> nn.Module:
    """A student LM of `size` from the teacher's config, initialised by the named `init`
    (`random`, `every_other_layer`, `uniform_map`, `first_k`) on each layer stack."""
    from distill.core.student import init_teacher_layers

    if init == "width_slice":
        raise ValueError(
            "student.init: width_slice supports BERT-family encoders; use uniform_map, "
            "every_other_layer, first_k or random for a generative teacher"
        )
    family = model_family(teacher.config)
    config = generative_student_config(teacher.config, size)
    torch.manual_seed(seed)
    student = auto_class(family).from_config(
        config, attn_implementation=teacher.config._attn_implementation
    )
    t_depths = [len(stack) for stack in layer_stacks(teacher)]
    s_depths = [len(stack) for stack in layer_stacks(student)]
    chosen = [
        init_teacher_layers(init, t, s, teacher_layers if family == "causal" else None)
        for t, s in zip(t_depths, s_depths)
    ]
    if chosen[0] is not None:
        copy_generative_weights(student, teacher, chosen)
    return student


# --- forward: hidden states of target tokens and the LM head ---------------------------------


def lm_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden [n, width] -> logits [n, vocab], exactly as the model's own forward computes
    them (BART adds `final_logits_bias`)."""
    out = model.get_output_embeddings()
    bias = getattr(model, "final_logits_bias", None)
    if bias is None:
        return lambda h: out(h.to(out.weight.dtype))
    return lambda h: out(h.to(out.weight.dtype)) + bias.to(h.device)[0]


def target_hidden(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [batch, seq, width], targets [batch, seq]) of the model's LM positions.

    causal: position t predicts token t+1 (`labels` if given, else `input_ids`), padding
    and `IGNORE_INDEX` skipped; seq2seq: decoder position t predicts `labels[:, t]`.
    """
    base = getattr(model, model.base_model_prefix)
    if model_family(model.config) == "seq2seq":
        out = base(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch.get("decoder_attention_mask"),
        )
        return out.last_hidden_state, batch["labels"]
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


@dataclass
class TokenView:
    """Target-token rows of both models: hidden [tokens, width] and target ids [tokens]."""

    student_hidden: torch.Tensor
    student_head: Callable
    targets: torch.Tensor
    teacher_hidden: torch.Tensor | None
    teacher_head: Callable | None
    settings: TokenSettings


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
        return token_losses.chunked_token_kd(
            view.student_hidden,
            view.teacher_hidden,
            view.student_head,
            view.teacher_head,
            num_chunks=s.num_chunks,
            divergence=divergence,
            temperature=s.temperature,
            beta=s.jsd_beta,
            checkpoint=s.checkpoint,
        )

    return loss


TOKEN_LOSSES: dict[str, Callable[[TokenView], torch.Tensor]] = {
    "lm": _lm,
    "lm_kl": _kd("forward_kl"),
    "lm_reverse_kl": _kd("reverse_kl"),
    "lm_jsd": _kd("jsd"),
}
TEACHERLESS_TOKEN_LOSSES = {"lm"}


class TokenObjective(nn.Module):
    """Weighted sum of `TOKEN_LOSSES`; owns no parameters (student and teacher share the
    vocabulary, so their logits compare directly)."""

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
        self.projections = nn.ModuleDict()  # the encoder exporter looks here; none needed

    @property
    def needs_teacher(self) -> bool:
        return any(name not in TEACHERLESS_TOKEN_LOSSES for name in self.weights)

    teacher_qkv_layers: list[int] = []
    student_qkv_layers: list[int] = []

    def forward(self, view: TokenView) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: TOKEN_LOSSES[name](view) for name in self.weights}
        return sum(self.weights[n] * v for n, v in parts.items()), parts


class GenerativeDistillationModel(nn.Module):
    """Student LM + token objective. Same call as `DistillationModel`:
    forward(batch, teacher_outputs) -> (loss, parts); the teacher stays outside."""

    def __init__(self, student: nn.Module, objective: TokenObjective, batch_ids: BatchIds) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.batch_ids = batch_ids
        self.head = None
        self.mlm_head = None

    @torch.no_grad()
    def teacher_forward(self, teacher: nn.Module, batch: dict) -> ModelOutputs:
        """The teacher's final hidden states (its logits are built per chunk in the loss)."""
        hidden, _ = target_hidden(teacher, batch)
        out = ModelOutputs(hidden=(hidden,), pooled=hidden.new_zeros(0))
        out.head = lm_head(teacher)
        return out

    def prepare_batch(self, batch: dict, generator: torch.Generator) -> dict:
        """Seq2seq inputs: text infilling for plain text, decoder inputs for pairs."""
        return (
            prepare_seq2seq_batch(batch, self.batch_ids, generator)
            if self.batch_ids.seq2seq
            else batch
        )

    def forward(self, batch: dict, teacher: ModelOutputs | None, mixed=None):
        hidden, targets = target_hidden(self.student, batch)
        keep = (targets != token_losses.IGNORE_INDEX).reshape(-1)
        view = TokenView(
            student_hidden=hidden.reshape(-1, hidden.shape[-1])[keep],
            student_head=lm_head(self.student),
            targets=targets.reshape(-1)[keep],
            teacher_hidden=None
            if teacher is None
            else teacher.hidden[-1].reshape(-1, teacher.hidden[-1].shape[-1])[keep],
            teacher_head=None if teacher is None else teacher.head,
            settings=self.objective.settings,
        )
        return self.objective(view)

    @torch.no_grad()
    def probe_outputs(
        self, student: nn.Module, tokenizer, texts: list[str], max_length: int
    ) -> torch.Tensor:
        """Logits of the exported-to-be student on fixed texts (checked after reload)."""
        return probe_logits(student, tokenizer, texts, max_length)


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
            seq2seq=model_family(config) == "seq2seq",
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
    if model_family(model.config) == "seq2seq":
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


def load_exported(folder: str | Path) -> nn.Module:
    """An exported generative student as its Auto LM class (causal or seq2seq)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    return auto_class(model_family(config)).from_pretrained(folder).eval()
