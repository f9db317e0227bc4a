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

from distill.core.model_types import QkvLayout, model_type_name, model_type_of


@dataclass(frozen=True)
class StudentSize:
    """Depth and width of a transformer; `decoder_layers` only for encoder-decoders,
    `kv_heads` only for grouped-query attention (None: as many as `heads`)."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    decoder_layers: int | None = None
    kv_heads: int | None = None


def is_encoder_decoder(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def architecture_size(config: PretrainedConfig) -> StudentSize:
    """The dims of any config in the model-type table (`model_types.MODEL_TYPES`)."""
    entry = model_type_of(config)
    missing = entry.missing(config)
    if missing:
        raise ValueError(
            f"{model_type_name(config)}: the config has no {', '.join(missing)}; this model "
            "type is not in distill's model-type table"
        )
    kv = entry.read(config, "kv_heads")
    heads = entry.read(config, "heads")
    return StudentSize(
        entry.read(config, "layers"),
        entry.read(config, "hidden"),
        heads,
        entry.read(config, "ffn"),
        entry.read(config, "decoder_layers") if entry.family == "seq2seq" else None,
        kv if kv is not None and kv != heads else None,
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


def student_config(
    teacher_config: PretrainedConfig,
    size: StudentSize,
    teacher_layers: Sequence[int] | None = None,
) -> PretrainedConfig:
    """The teacher's config with depth and width replaced under the names the model-type
    table gives. Per-layer lists (`layer_types`) keep the entries of `teacher_layers` (the
    teacher layer each student layer copies; None: the first `size.layers`). A head-size
    field that equals hidden / heads in the teacher is recomputed; one that differs (Gemma's
    256) is kept, since the student's heads are the teacher's heads."""
    if size.hidden % size.heads:
        raise ValueError(
            f"student.heads: {size.heads} does not divide student.hidden {size.hidden}"
        )
    if size.kv_heads is not None and size.heads % size.kv_heads:
        raise ValueError(
            f"student.kv_heads: {size.kv_heads} does not divide student.heads {size.heads}"
        )
    entry = model_type_of(teacher_config)
    teacher = architecture_size(teacher_config)
    config = copy.deepcopy(teacher_config)
    derived_head = teacher.hidden // teacher.heads
    set_fields = {
        entry.layers: size.layers,
        entry.hidden: size.hidden,
        entry.heads: size.heads,
        entry.ffn: size.ffn,
        entry.kv_heads: size.kv_heads or size.heads,
    }
    if entry.head_dim and getattr(config, entry.head_dim, None) in (None, derived_head):
        set_fields[entry.head_dim] = size.hidden // size.heads
    if entry.family == "seq2seq":
        set_fields[entry.decoder_layers] = size.decoder_layers or size.layers
        set_fields[entry.decoder_heads] = size.heads
        set_fields[entry.decoder_ffn] = size.ffn
    for name, value in set_fields.items():
        if name is not None:
            setattr(config, name, value)
    chosen = list(teacher_layers) if teacher_layers is not None else list(range(size.layers))
    for name in entry.per_layer:
        values = getattr(config, name, None)
        if isinstance(values, list) and len(values) == teacher.layers:
            setattr(config, name, [values[i] for i in chosen])
            if entry.per_layer_runs:
                setattr(config, entry.per_layer_runs, [[getattr(config, name), 1]])
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


def _stack_in(module: nn.Module, depth: int) -> nn.ModuleList:
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) == depth:
            return child
    raise ValueError(f"cannot find a list of {depth} layers in {type(module).__name__}")


def layer_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The model's stacks of blocks: [blocks], or [encoder blocks, decoder blocks] for an
    encoder-decoder (BART `layers`, T5 `block`)."""
    if is_encoder_decoder(model.config):
        size = architecture_size(model.config)
        return [
            _stack_in(model.get_encoder(), size.layers),
            _stack_in(model.get_decoder(), size.decoder_layers),
        ]
    return [_stack_in(model, model.config.num_hidden_layers)]


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a single-stack model (encoder or decoder)."""
    return layer_stacks(model)[0]


def copy_leading(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy the leading block of `src` that fits `dst` (identity when shapes match)."""
    dst.copy_(src[tuple(slice(0, n) for n in dst.shape)])


def copy_fused_qkv(
    dst: torch.Tensor, src: torch.Tensor, layout: QkvLayout, *, out_dim: int, heads: tuple[int, int]
) -> None:
    """Copy a fused Q/K/V weight or bias so q, k and v each keep their leading heads.

    out_dim: the axis of the fused output (GPT-2's Conv1D: last, a Linear: 0);
    heads: (student, teacher) heads, for the `per_head` layout (GPT-NeoX)."""
    if dst.shape == src.shape:
        dst.copy_(src)
        return
    out_dim %= dst.dim()
    if layout.fused == "thirds":
        for d, s in zip(dst.chunk(3, dim=out_dim), src.chunk(3, dim=out_dim)):
            copy_leading(d, s)
        return
    s_heads, t_heads = heads  # per_head: [heads, 3 * head_dim] along out_dim
    d = dst.unflatten(out_dim, (s_heads, 3, -1))
    s = src.unflatten(out_dim, (t_heads, 3, -1))
    copy_leading(d, s)


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
    layout = model_type_of(teacher.config).qkv
    fused = layout.names[0] if layout is not None and layout.fused else None
    heads = (architecture_size(student.config).heads, architecture_size(teacher.config).heads)
    in_layers = set()
    for s_stack, t_stack, chosen in zip(s_stacks, t_stacks, teacher_layers):
        in_layers |= {id(p) for p in s_stack.parameters()}
        first = dict(t_stack[0].named_parameters())
        for s_block, t_index in zip(s_stack, chosen):
            t_params = dict(t_stack[t_index].named_parameters())
            # A parameter only the first block has (T5's relative_attention_bias) comes from it.
            own = [n for n, _ in s_block.named_parameters()]
            sources = {n: t_params.get(n, first.get(n)) for n in own}
            with gather([p for p in sources.values() if p is not None]):
                for name, param in s_block.named_parameters():
                    src = sources[name]
                    if src is None:
                        continue
                    module, _, kind = name.rpartition(".")
                    if fused is not None and module.rsplit(".", 1)[-1] == fused:
                        out_dim = 0 if isinstance(s_block.get_submodule(module), nn.Linear) else -1
                        copy_fused_qkv(
                            param, src, layout, out_dim=out_dim if kind == "weight" else 0,
                            heads=heads,
                        )  # fmt: skip
                    else:
                        copy_leading(param, src)
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


def ffn_scores(
    block_params: dict[str, torch.Tensor], mean_abs_activation: torch.Tensor | None = None
) -> torch.Tensor:
    """Importance of each FFN neuron of one layer, [ffn]: the L2 norm of its output weights
    (its column of `output.dense`), as in DynaBERT's weight-magnitude fallback. Given the
    neuron's mean |activation| over calibration tokens ([ffn]), that times the norm: the
    size of what the neuron adds to the residual stream on real text (Minitron's activation
    importance, weighted by the output norm as Wanda weights |W| by ||X||)."""
    norms = block_params["output.dense.weight"].detach().float().norm(dim=0)
    return norms if mean_abs_activation is None else norms * mean_abs_activation.to(norms)


@dataclass(frozen=True)
class ActivationStats:
    """What a teacher's layers emit on calibration text, averaged over real tokens.

    hidden: [teacher hidden], the mean |value| of each residual-stream channel at every
    LayerNorm that writes the stream (embeddings, and the attention-output and output
    LayerNorms of `teacher_layers`), summed; heads[i]: [heads], the mean L2 norm of what
    each head writes to the residual (its context through its columns of the attention
    output projection) in teacher layer teacher_layers[i]; ffn[i]: [ffn], the mean |output|
    of each FFN neuron (after the activation) in that layer.
    """

    teacher_layers: list[int]
    hidden: torch.Tensor
    heads: list[torch.Tensor]
    ffn: list[torch.Tensor]


@torch.no_grad()
def activation_stats(
    teacher: nn.Module, batches: Sequence[dict[str, torch.Tensor]], teacher_layers: Sequence[int]
) -> ActivationStats:
    """Run the (BERT-family) teacher on calibration `batches` (tokenizer outputs with an
    `attention_mask`) and average what `width_slice` ranks, over real tokens only (Minitron,
    Muralidharan et al. 2024, sec. 2.2: activation-based importance from a small calibration
    set). Forward hooks only; the teacher is left as it was."""
    _check_width_slice_supported(teacher)
    layers = list(teacher_layers)
    blocks = layer_list(teacher)
    n_heads = teacher.config.num_attention_heads
    device = next(teacher.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor] = []  # the current batch's [batch, seq, 1] float mask

    def accumulate(key: str, per_token: torch.Tensor) -> None:  # [batch, seq, n]
        total = (per_token.float() * mask[0]).sum(dim=(0, 1))
        sums[key] = sums[key] + total if key in sums else total

    def abs_out(key: str):
        return lambda module, args, out: accumulate(key, out.abs())

    def head_out(key: str, w_o: torch.Tensor):
        def hook(module, args):
            ctx = args[0].float()  # [batch, seq, heads * head_dim], heads concatenated
            per_head = ctx.unflatten(-1, (n_heads, -1))
            w = w_o.float().unflatten(1, (n_heads, -1))  # [hidden, heads, head_dim]
            written = torch.einsum("bsnd,hnd->bsnh", per_head, w)
            accumulate(key, written.norm(dim=-1))

        return hook

    hooks = [teacher.embeddings.LayerNorm.register_forward_hook(abs_out("hidden.emb"))]
    for t in layers:
        block = blocks[t]
        hooks += [
            block.attention.output.LayerNorm.register_forward_hook(abs_out(f"hidden.att.{t}")),
            block.output.LayerNorm.register_forward_hook(abs_out(f"hidden.out.{t}")),
            block.intermediate.register_forward_hook(abs_out(f"ffn.{t}")),
            block.attention.output.dense.register_forward_pre_hook(
                head_out(f"heads.{t}", block.attention.output.dense.weight)
            ),
        ]
    tokens = 0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            mask[:] = [batch["attention_mask"].unsqueeze(-1).float()]
            tokens += int(batch["attention_mask"].sum())
            teacher(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    if tokens == 0:
        raise ValueError("width_slice: the calibration text has no tokens")
    mean = {k: v.cpu() / tokens for k, v in sums.items()}
    return ActivationStats(
        teacher_layers=layers,
        hidden=sum(v for k, v in mean.items() if k.startswith("hidden.")),
        heads=[mean[f"heads.{t}"] for t in layers],
        ffn=[mean[f"ffn.{t}"] for t in layers],
    )


def width_slice_plan(
    teacher: nn.Module,
    size: StudentSize,
    teacher_layers: Sequence[int],
    stats: ActivationStats | None = None,
) -> WidthSlicePlan:
    """Which teacher channels, heads and neurons a `width_slice` student of `size` keeps:
    ranked by the teacher's weights alone (data-free), or by `stats`, what the teacher's
    layers emit on calibration text (`activation_stats` of the same teacher layers).

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
    if stats is None:
        return WidthSlicePlan(
            teacher_layers=layers,
            hidden=_top(hidden_channel_scores(teacher, layers), size.hidden),
            heads=[
                _top(head_scores(blocks[t], tc.num_attention_heads), size.heads) for t in layers
            ],
            ffn=[_top(ffn_scores(blocks[t]), size.ffn) for t in layers],
        )
    if stats.teacher_layers != layers:
        raise ValueError(
            f"width_slice: activation stats are of teacher layers {stats.teacher_layers}, "
            f"the student copies {layers}"
        )
    return WidthSlicePlan(
        teacher_layers=layers,
        hidden=_top(stats.hidden, size.hidden),
        heads=[_top(h, size.heads) for h in stats.heads],
        ffn=[_top(ffn_scores(blocks[t], a), size.ffn) for t, a in zip(layers, stats.ffn)],
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
    calibration: Sequence[dict[str, torch.Tensor]] | None = None,
) -> None:
    """Initialise `student` from the teacher layers `teacher_layers[0]` (an encoder has one
    stack), keeping the channels, heads and neurons `width_slice_plan` ranks highest: by
    the teacher's weights, or by its activations on `calibration` batches when given."""
    if gather is not no_gather:
        raise ValueError(
            "student.init: width_slice ranks the whole teacher's channels; it needs "
            "teacher.placement: replicate"
        )
    (teacher_layers,) = teacher_layers
    stats = None if calibration is None else activation_stats(teacher, calibration, teacher_layers)
    plan = width_slice_plan(teacher, architecture_size(student.config), teacher_layers, stats)
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
    calibration: Sequence[dict[str, torch.Tensor]] | None = None,
) -> nn.Module:
    """Build a student of `size` from the teacher's config (as `auto_class`: AutoModel for
    encoders, the Auto LM class for generative teachers) and initialise it by `init` on each
    layer stack. Explicit `teacher_layers` apply to single-stack models. `calibration`
    (tokenized batches): `width_slice` ranks by the teacher's activations on them."""
    if calibration is not None and init != "width_slice":
        raise ValueError(
            f"student.importance: activations ranks what width_slice keeps; init is {init}"
        )
    chosen = student_layer_choice(teacher.config, size, init, teacher_layers)
    config = student_config(teacher.config, size, chosen[0])
    torch.manual_seed(seed)
    student = auto_class.from_config(
        config, attn_implementation=teacher.config._attn_implementation
    )
    if calibration is not None:
        copy_width_sliced(student, teacher, chosen, gather, calibration)
    elif chosen[0] is not None:
        STUDENT_INITS[init].copy(student, teacher, chosen, gather)
    return student


def student_layer_choice(
    teacher_config: PretrainedConfig,
    size: StudentSize,
    init: str,
    teacher_layers: Sequence[int] | None = None,
) -> list[list[int] | None]:
    """The teacher layer each student layer copies, per layer stack ([encoder] or [encoder,
    decoder]); None entries for `random`. Explicit `teacher_layers` apply to single-stack
    models."""
    t = architecture_size(teacher_config)
    t_depths, s_depths = [t.layers], [size.layers]
    if t.decoder_layers is not None:
        t_depths.append(t.decoder_layers)
        s_depths.append(size.decoder_layers or size.layers)
    explicit = teacher_layers if len(t_depths) == 1 else None
    return [init_teacher_layers(init, tn, sn, explicit) for tn, sn in zip(t_depths, s_depths)]


def freeze_word_embeddings(model: nn.Module) -> None:
    """Stop training the token-embedding table (positions and LayerNorm still train)."""
    model.get_input_embeddings().requires_grad_(False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
