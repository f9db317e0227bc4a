"""Students built from a teacher's config by depth and width, with a named initialisation.

`STUDENT_INITS` maps an init name to the teacher layers each student layer copies
(`random` copies nothing) and to how the copy narrows teacher tensors. The layer-choice
inits (`every_other_layer`, `uniform_map`, `first_k`) take the leading rows/columns of
each weight when the student is narrower; `width_slice` keeps the teacher's most
important hidden channels, attention heads and FFN neurons instead (Minitron, Muralidharan
et al. 2024; DynaBERT, Hou et al. 2020), see `width_slice_plan`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig


@dataclass(frozen=True)
class StudentSize:
    """Depth and width of a transformer; `decoder_layers` only for encoder-decoders."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    decoder_layers: int | None = None


def is_encoder_decoder(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def architecture_size(config: PretrainedConfig) -> StudentSize:
    """The dims of a BERT-, GPT-2-, Llama- or BART-style config, under their standard names."""
    if is_encoder_decoder(config):
        return StudentSize(
            config.encoder_layers,
            config.d_model,
            config.encoder_attention_heads,
            config.encoder_ffn_dim,
            config.decoder_layers,
        )
    if config.model_type == "gpt2":
        ffn = getattr(config, "n_inner", None) or 4 * config.n_embd
    else:
        ffn = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
    return StudentSize(
        config.num_hidden_layers, config.hidden_size, config.num_attention_heads, ffn
    )


def every_other_layer(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layers 0, 2, 4, ... (0-based), as in DistilBERT; needs 2*S-1 <= T."""
    if 2 * n_student - 1 > n_teacher:
        raise ValueError(
            f"student.init=every_other_layer: {n_student} student layers need a teacher with "
            f">= {2 * n_student - 1} layers, it has {n_teacher}"
        )
    return [2 * i for i in range(n_student)]


def uniform_map(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layers spread evenly from the first to the last."""
    if n_student > n_teacher:
        raise ValueError(
            f"student.init=uniform_map: {n_student} student layers need a teacher with >= "
            f"{n_student} layers, it has {n_teacher}"
        )
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def first_k(n_teacher: int, n_student: int) -> list[int]:
    """The bottom S teacher layers."""
    if n_student > n_teacher:
        raise ValueError(
            f"student.init=first_k: {n_student} student layers need a teacher with >= {n_student} "
            f"layers, it has {n_teacher}"
        )
    return list(range(n_student))


def student_config(teacher_config: PretrainedConfig, size: StudentSize) -> PretrainedConfig:
    """The teacher's config with depth and width replaced (every family's field names)."""
    if size.hidden % size.heads:
        raise ValueError(
            f"student.heads: {size.heads} does not divide student.hidden {size.hidden}"
        )
    config = copy.deepcopy(teacher_config)
    if is_encoder_decoder(config):
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


def init_teacher_layers(
    init: str, n_teacher: int, n_student: int, explicit: Sequence[int] | None = None
) -> list[int] | None:
    """Teacher layer (0-based) copied into each student layer, or None for random init."""
    if explicit is not None:
        bad = [i for i in explicit if not 0 <= i < n_teacher]
        if len(explicit) != n_student or bad:
            raise ValueError(
                f"student.teacher_layers: expected {n_student} indices in 0..{n_teacher - 1}, "
                f"got {list(explicit)}"
            )
        return list(explicit)
    if init not in STUDENT_INITS:
        raise ValueError(f"student.init: unknown '{init}'; choose from {sorted(STUDENT_INITS)}")
    chooser = STUDENT_INITS[init].layers
    return None if chooser is None else chooser(n_teacher, n_student)


def layer_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The model's stacks of blocks: [blocks], or [encoder blocks, decoder blocks] for an
    encoder-decoder."""
    if is_encoder_decoder(model.config):
        return [model.get_encoder().layers, model.get_decoder().layers]
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return [module]
    raise ValueError(f"cannot find a list of {n} layers in {type(model).__name__}")


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a single-stack model (encoder or decoder)."""
    return layer_stacks(model)[0]


def copy_leading(dst: torch.Tensor, src: torch.Tensor, fused_thirds: bool = False) -> None:
    """Copy the leading block of `src` that fits `dst` (identity when shapes match); GPT-2's
    fused c_attn ([in, 3h]) is sliced per third so q, k and v each keep their leading heads."""
    if fused_thirds and dst.shape != src.shape:
        for d, s in zip(dst.chunk(3, dim=-1), src.chunk(3, dim=-1)):
            d.copy_(s[tuple(slice(0, n) for n in d.shape)])
        return
    dst.copy_(src[tuple(slice(0, n) for n in dst.shape)])


def _fused_qkv(name: str) -> bool:
    return name.endswith(("c_attn.weight", "c_attn.bias"))


Gather = Callable[[Sequence[nn.Parameter]], AbstractContextManager]


def no_gather(params: Sequence[nn.Parameter]) -> AbstractContextManager:
    """The teacher's parameters are whole in memory: nothing to gather."""
    return nullcontext()


@torch.no_grad()
def copy_teacher_weights(
    student: nn.Module,
    teacher: nn.Module,
    teacher_layers: Sequence[Sequence[int]],
    gather: Gather = no_gather,
) -> None:
    """Initialise `student` from `teacher`: for each layer stack, student block i copies
    teacher block teacher_layers[stack][i]; every other weight (and a bias buffer such as
    BART's final_logits_bias) is copied by name; narrower tensors take the leading slice.
    `gather(params)` makes a partitioned teacher's parameters whole while they are read,
    one block (or one tensor) at a time."""
    s_stacks, t_stacks = layer_stacks(student), layer_stacks(teacher)
    in_layers = set()
    for s_stack, t_stack, chosen in zip(s_stacks, t_stacks, teacher_layers):
        in_layers |= {id(p) for p in s_stack.parameters()}
        for s_block, t_index in zip(s_stack, chosen):
            t_params = dict(t_stack[t_index].named_parameters())
            with gather(list(t_params.values())):
                for name, param in s_block.named_parameters():
                    copy_leading(param, t_params[name], fused_thirds=_fused_qkv(name))
    t_all = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        if id(param) not in in_layers and name in t_all:
            with gather([t_all[name]]):
                copy_leading(param, t_all[name])
    t_buffers = dict(teacher.named_buffers())
    for name, buffer in student.named_buffers():
        if "bias" in name and name in t_buffers and buffer.dim() == t_buffers[name].dim():
            copy_leading(buffer, t_buffers[name])


# --- width_slice: importance-ranked width pruning ------------------------------------------
#
# Which axis of each BERT-family tensor is the residual stream ("hidden"), the attention
# heads' dims ("head") or the FFN neurons ("ffn"); None keeps the axis whole. Names are those
# of BertModel / RobertaModel / MiniLM (a BertModel); a parameter outside these tables makes
# width_slice refuse the model rather than guess.
_BLOCK_AXES: dict[str, tuple[str | None, ...]] = {
    **{
        f"attention.self.{proj}.{kind}": axes
        for proj in ("query", "key", "value")
        for kind, axes in (("weight", ("head", "hidden")), ("bias", ("head",)))
    },
    "attention.output.dense.weight": ("hidden", "head"),
    "attention.output.dense.bias": ("hidden",),
    "attention.output.LayerNorm.weight": ("hidden",),
    "attention.output.LayerNorm.bias": ("hidden",),
    "intermediate.dense.weight": ("ffn", "hidden"),
    "intermediate.dense.bias": ("ffn",),
    "output.dense.weight": ("hidden", "ffn"),
    "output.dense.bias": ("hidden",),
    "output.LayerNorm.weight": ("hidden",),
    "output.LayerNorm.bias": ("hidden",),
}
_OUTER_AXES: dict[str, tuple[str | None, ...]] = {
    "embeddings.word_embeddings.weight": (None, "hidden"),
    "embeddings.position_embeddings.weight": (None, "hidden"),
    "embeddings.token_type_embeddings.weight": (None, "hidden"),
    "embeddings.LayerNorm.weight": ("hidden",),
    "embeddings.LayerNorm.bias": ("hidden",),
    "pooler.dense.weight": ("hidden", "hidden"),
    "pooler.dense.bias": ("hidden",),
}
_REQUIRED_OUTER = ("embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight")
_RESIDUAL_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")


@dataclass(frozen=True)
class WidthSlicePlan:
    """Teacher indices a `width_slice` student keeps, each ascending.

    hidden: [student hidden] residual-stream channels, shared by every tensor of the model;
    heads[i] / ffn[i]: the attention heads and FFN neurons student layer i keeps from teacher
    layer teacher_layers[i].
    """

    teacher_layers: list[int]
    hidden: torch.Tensor
    heads: list[torch.Tensor]
    ffn: list[torch.Tensor]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores (ties to the lower index), ascending."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:k].sort().values


def _outer_and_block_params(
    model: nn.Module,
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Non-layer parameters by full name, and each layer's parameters by in-block name."""
    layers = layer_list(model)
    in_layers = {id(p) for p in layers.parameters()}
    outer = {n: p for n, p in model.named_parameters() if id(p) not in in_layers}
    return outer, [dict(block.named_parameters()) for block in layers]


def _check_width_slice_supported(model: nn.Module) -> None:
    """Raise unless every parameter of `model` has a known width role (BERT-family names)
    whose axes have the sizes its config promises."""
    outer, blocks = _outer_and_block_params(model)
    block_names = {n for b in blocks for n in b}
    unknown = sorted(set(outer) - set(_OUTER_AXES)) + sorted(block_names - set(_BLOCK_AXES))
    missing = [n for n in _REQUIRED_OUTER if n not in outer]
    missing += sorted(n for n in _BLOCK_AXES if any(n not in b for b in blocks))
    if unknown or missing:
        raise ValueError(
            "student.init=width_slice supports BERT-family encoders (BERT, RoBERTa, MiniLM) "
            f"with BertModel's parameter names; {type(model).__name__} has unsupported "
            f"parameters {unknown[:6]} and lacks {missing[:6]}. Use a layer-choice init "
            "(uniform_map, first_k, every_other_layer) for this teacher."
        )
    c = model.config
    sizes = {"hidden": c.hidden_size, "head": c.hidden_size, "ffn": c.intermediate_size}
    named = [(n, p, _OUTER_AXES[n]) for n, p in outer.items()]
    named += [(f"<layer>.{n}", p, _BLOCK_AXES[n]) for b in blocks for n, p in b.items()]
    for name, param, axes in named:
        expected = [sizes[r] if r else d for r, d in zip(axes, param.shape)]
        if list(param.shape) != expected:
            raise ValueError(
                f"student.init=width_slice: {type(model).__name__}.{name} has shape "
                f"{tuple(param.shape)}, expected {tuple(expected)} from its config"
            )


def hidden_channel_scores(teacher: nn.Module, teacher_layers: Sequence[int]) -> torch.Tensor:
    """Importance of each residual-stream channel, [teacher hidden].

    The sum of |gamma| + |beta| of every LayerNorm that writes the residual stream the
    student will run: the embedding LayerNorm and the attention-output and output LayerNorms
    of the chosen teacher layers. In a post-LN BERT every block's output is such a LayerNorm
    output, gamma_c * z_c + beta_c, so this is a data-free stand-in for Minitron's
    activation score (mean |LayerNorm output| of a channel over a calibration batch).
    """
    outer, blocks = _outer_and_block_params(teacher)
    norms = [(outer["embeddings.LayerNorm.weight"], outer["embeddings.LayerNorm.bias"])]
    for t in teacher_layers:
        norms += [(blocks[t][f"{n}.weight"], blocks[t][f"{n}.bias"]) for n in _RESIDUAL_NORMS]
    return sum(w.detach().abs().float() + b.detach().abs().float() for w, b in norms)


def head_scores(block_params: dict[str, torch.Tensor], n_heads: int) -> torch.Tensor:
    """Importance of each attention head of one layer, [heads]: the Frobenius norm of its
    columns of the attention output projection (how much it can write to the residual)."""
    w_o = block_params["attention.output.dense.weight"].detach().float()  # [hidden, heads*d]
    return w_o.reshape(w_o.shape[0], n_heads, -1).norm(dim=(0, 2))


def ffn_scores(block_params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Importance of each FFN neuron of one layer, [ffn]: the L2 norm of its output weights
    (its column of `output.dense`), as in DynaBERT's weight-magnitude fallback."""
    return block_params["output.dense.weight"].detach().float().norm(dim=0)


def width_slice_plan(
    teacher: nn.Module, size: StudentSize, teacher_layers: Sequence[int]
) -> WidthSlicePlan:
    """Which teacher channels, heads and neurons a `width_slice` student of `size` keeps.

    Whole heads are kept, so the student's head size hidden/heads must equal the teacher's;
    slicing inside heads would change every attention logit's scale and is not done.
    """
    _check_width_slice_supported(teacher)
    tc = teacher.config
    head_dim = tc.hidden_size // tc.num_attention_heads
    limits = (
        ("hidden", size.hidden, tc.hidden_size),
        ("heads", size.heads, tc.num_attention_heads),
        ("ffn", size.ffn, tc.intermediate_size),
    )
    for field, value, most in limits:
        if value > most:
            raise ValueError(
                f"student.{field}: width_slice can only narrow the teacher; {value} > teacher {most}"
            )
    if size.hidden != size.heads * head_dim:
        raise ValueError(
            f"student.heads: width_slice keeps whole teacher heads of size {head_dim}, so "
            f"student.hidden {size.hidden} needs heads={size.hidden // head_dim}, got {size.heads}"
        )
    _, blocks = _outer_and_block_params(teacher)
    layers = list(teacher_layers)
    return WidthSlicePlan(
        teacher_layers=layers,
        hidden=_top(hidden_channel_scores(teacher, layers), size.hidden),
        heads=[_top(head_scores(blocks[t], tc.num_attention_heads), size.heads) for t in layers],
        ffn=[_top(ffn_scores(blocks[t]), size.ffn) for t in layers],
    )


def _take(
    src: torch.Tensor, axes: tuple[str | None, ...], index: dict[str, torch.Tensor]
) -> torch.Tensor:
    for dim, role in enumerate(axes):
        if role is not None:
            src = src.index_select(dim, index[role].to(src.device))
    return src


def _copy_exact(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:  # copy_ would broadcast a mismatch silently
        raise ValueError(f"width_slice: {name} is {tuple(dst.shape)}, slice is {tuple(src.shape)}")
    dst.copy_(src)


@torch.no_grad()
def copy_width_sliced(
    student: nn.Module,
    teacher: nn.Module,
    teacher_layers: Sequence[Sequence[int]],
    gather: Gather = no_gather,
) -> None:
    """Initialise `student` from the teacher layers `teacher_layers[0]` (an encoder has one
    stack), keeping the channels, heads and neurons `width_slice_plan` ranks highest."""
    if gather is not no_gather:
        raise ValueError(
            "student.init: width_slice ranks the whole teacher's channels; it needs "
            "teacher.partition: replicate"
        )
    (teacher_layers,) = teacher_layers
    plan = width_slice_plan(teacher, architecture_size(student.config), teacher_layers)
    head_dim = teacher.config.hidden_size // teacher.config.num_attention_heads
    t_outer, t_blocks = _outer_and_block_params(teacher)
    s_outer, s_blocks = _outer_and_block_params(student)
    for name, param in s_outer.items():
        _copy_exact(param, _take(t_outer[name], _OUTER_AXES[name], {"hidden": plan.hidden}), name)
    for s_block, t, heads, ffn in zip(s_blocks, plan.teacher_layers, plan.heads, plan.ffn):
        head_rows = (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
        index = {"hidden": plan.hidden, "head": head_rows, "ffn": ffn}
        for name, param in s_block.items():
            _copy_exact(param, _take(t_blocks[t][name], _BLOCK_AXES[name], index), name)


@dataclass(frozen=True)
class StudentInit:
    """A named init: which teacher layer each student layer copies (None: random init) and
    how the copy narrows teacher tensors to the student's width."""

    layers: Callable[[int, int], list[int]] | None
    copy: Callable[..., None] = copy_teacher_weights  # (student, teacher, layers, gather)


STUDENT_INITS: dict[str, StudentInit] = {
    "random": StudentInit(None),
    "every_other_layer": StudentInit(every_other_layer),
    "uniform_map": StudentInit(uniform_map),
    "first_k": StudentInit(first_k),
    "width_slice": StudentInit(uniform_map, copy_width_sliced),
}


def build_student(
    teacher: nn.Module,
    size: StudentSize,
    init: str = "every_other_layer",
    teacher_layers: Sequence[int] | None = None,
    seed: int = 0,
    auto_class=AutoModel,
    gather: Gather = no_gather,
) -> nn.Module:
    """Build a student of `size` from the teacher's config (as `auto_class`: AutoModel for
    encoders, the Auto LM class for generative teachers) and initialise it by `init` on each
    layer stack. Explicit `teacher_layers` apply to single-stack models."""
    config = student_config(teacher.config, size)
    torch.manual_seed(seed)
    student = auto_class.from_config(
        config, attn_implementation=teacher.config._attn_implementation
    )
    t_depths = [len(stack) for stack in layer_stacks(teacher)]
    s_depths = [len(stack) for stack in layer_stacks(student)]
    explicit = teacher_layers if len(t_depths) == 1 else None
    chosen = [init_teacher_layers(init, t, n, explicit) for t, n in zip(t_depths, s_depths)]
    if chosen[0] is not None:
        STUDENT_INITS[init].copy(student, teacher, chosen, gather)
    return student


def freeze_word_embeddings(model: nn.Module) -> None:
    """Stop training the token-embedding table (positions and LayerNorm still train)."""
    model.get_input_embeddings().requires_grad_(False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
