"""A BiLSTM student for sentence-embedding distillation, as a Hugging Face model.

Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into Simple Neural
Networks") and Sun et al. 2019 ("BERT to LSTM" sentence-representation approximation):
word embeddings -> stacked bidirectional LSTMs -> token states [batch, seq, 2*lstm_hidden],
pooled by the same masked mean as a transformer student. `BiLSTMModel` is a
`PreTrainedModel`, so `save_pretrained` / `from_pretrained` work, and after an explicit
`register_lstm_student()` so does `AutoModel.from_pretrained`. `config.hidden_size` is the
output width (both directions), so code that sizes projections from it works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

__all__ = [
    "EMBEDDING_INITS",
    "BiLSTMConfig",
    "BiLSTMModel",
    "build_lstm_student",
    "masked_max_pool",
    "pca_projection",
    "register_lstm_student",
]

POOLINGS = ("mean", "max")


class BiLSTMConfig(PretrainedConfig):
    """Config of `BiLSTMModel`.

    lstm_hidden is the state size of ONE direction; `hidden_size` (read-only) is the output
    width 2 * lstm_hidden. `num_hidden_layers` aliases num_layers. `pooling` is how
    `pooler_output` and `SentenceEncoder` pool token states ("mean" or "max").
    """

    model_type = "distill_bilstm"

    vocab_size: int = 30522
    embedding_dim: int = 300
    lstm_hidden: int = 300
    num_layers: int = 1
    dropout: float = 0.0
    pad_token_id: int | None = 0
    pooling: str = "mean"

    def __post_init__(self, **kwargs) -> None:
        # Written by to_dict-based tools; the real fields are lstm_hidden and num_layers.
        kwargs.pop("hidden_size", None)
        kwargs.pop("num_hidden_layers", None)
        super().__post_init__(**kwargs)
        if self.pooling not in POOLINGS:
            raise ValueError(f"student.pooling: unknown {self.pooling!r}; choose from {POOLINGS}")
        for field in ("vocab_size", "embedding_dim", "lstm_hidden", "num_layers"):
            if getattr(self, field) < 1:
                raise ValueError(f"student.{field}: must be >= 1, got {getattr(self, field)}")

    @property
    def hidden_size(self) -> int:
        """Output width of every layer: both directions concatenated."""
        return 2 * self.lstm_hidden

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers


def masked_max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over real tokens: hidden [batch, seq, dim], mask [batch, seq] -> [batch, dim].
    A row with no real token pools to zeros."""
    real = mask.bool()
    filled = hidden.masked_fill(~real.unsqueeze(-1), float("-inf")).amax(1)
    return torch.where(real.any(1, keepdim=True), filled, torch.zeros_like(filled))


def _masked_pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "max":
        return masked_max_pool(hidden, mask)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class BiLSTMModel(PreTrainedModel):
    """Embeddings + `num_layers` bidirectional LSTM layers (one `nn.LSTM` each, so every
    layer's output is visible as a hidden state), dropout between layers."""

    config_class = BiLSTMConfig
    config: BiLSTMConfig
    base_model_prefix = "bilstm"
    main_input_name = "input_ids"

    def __init__(self, config: BiLSTMConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_dim)
        widths = [config.embedding_dim] + [config.hidden_size] * (config.num_layers - 1)
        self.layers = nn.ModuleList(
            nn.LSTM(w, config.lstm_hidden, batch_first=True, bidirectional=True) for w in widths
        )
        self.dropout = nn.Dropout(config.dropout)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's LSTM default (uniform +-1/sqrt(hidden)), not HF's xavier + zero bias.
        if isinstance(module, nn.LSTM):
            module.reset_parameters()
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """input_ids: [batch, seq] or inputs_embeds: [batch, seq, embedding_dim] (MixKD);
        attention_mask: [batch, seq], 1 for real tokens, right-padded (default: all real).

        Returns last_hidden_state [batch, seq, 2*lstm_hidden] with padding rows zeroed,
        pooler_output [batch, 2*lstm_hidden] (config.pooling over real tokens) and, when
        asked, hidden_states = (embeddings, layer 1, ..., layer num_layers), padding zeroed.
        Sequences are packed, so padding never enters either direction.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("BiLSTMModel: pass exactly one of input_ids and inputs_embeds")
        embeds = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        batch, seq = embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch, seq, dtype=torch.long, device=embeds.device)
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        positions = torch.arange(seq, device=mask.device)
        if not torch.equal(mask, positions < lengths[:, None]):
            raise ValueError("BiLSTMModel: attention_mask must be right-padded (1s then 0s)")
        keep = mask.unsqueeze(-1).to(embeds.dtype)
        # pack_padded_sequence rejects length 0; such rows are zeroed by `keep` afterwards.
        packed_lengths = lengths.clamp(min=1).cpu()

        x = embeds * keep
        states = [x]
        for lstm in self.layers:
            packed = pack_padded_sequence(
                self.dropout(x), packed_lengths, batch_first=True, enforce_sorted=False
            )
            out, _ = lstm(packed)
            x, _ = pad_packed_sequence(out, batch_first=True, total_length=seq)
            x = x * keep
            states.append(x)
        pooled = _masked_pool(x, mask, self.config.pooling)

        want_states = (
            output_hidden_states
            if output_hidden_states is not None
            else self.config.output_hidden_states
        )
        hidden_states = tuple(states) if want_states else None
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        if not use_dict:
            return tuple(v for v in (x, pooled, hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=x, pooler_output=pooled, hidden_states=hidden_states
        )


def register_lstm_student() -> None:
    """Make AutoConfig/AutoModel know `distill_bilstm`. Explicit and idempotent: call it
    before `AutoModel.from_pretrained` on an exported BiLSTM folder."""
    AutoConfig.register(BiLSTMConfig.model_type, BiLSTMConfig, exist_ok=True)
    AutoModel.register(BiLSTMConfig, BiLSTMModel, exist_ok=True)


@torch.no_grad()
def pca_projection(table: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates of each row of `table` [rows, dim] on its top-k principal directions.

    Exact (not randomised) thin SVD of the column-centred table in float64; each direction's
    sign is fixed so its largest-magnitude entry is positive, so the result is deterministic.
    Returns (projected [rows, k] = (table - mean) @ components.T, components [k, dim]).
    """
    rows, dim = table.shape
    if not 1 <= k <= min(rows, dim):
        raise ValueError(
            f"student.embedding_dim: teacher_projection keeps at most min(vocab, teacher "
            f"hidden) = {min(rows, dim)} principal components, got {k}"
        )
    centred = table.detach().double()
    centred = centred - centred.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:k]
    pivot = components.abs().argmax(1)
    signs = components.gather(1, pivot[:, None]).sign()
    components = components * torch.where(signs == 0, 1.0, signs)
    return (centred @ components.T).to(table.dtype), components.to(table.dtype)


def _teacher_projection(student: BiLSTMModel, teacher: nn.Module) -> None:
    table = teacher.get_input_embeddings().weight
    projected, _ = pca_projection(table.float(), student.config.embedding_dim)
    with torch.no_grad():
        student.embeddings.weight.copy_(projected)


EMBEDDING_INITS: dict[str, Callable[[BiLSTMModel, nn.Module], None] | None] = {
    "random": None,
    "teacher_projection": _teacher_projection,
}


def build_lstm_student(
    teacher: nn.Module,
    *,
    embedding_dim: int,
    hidden: int,
    layers: int,
    init_embeddings: str = "teacher_projection",
    seed: int = 0,
    dropout: float = 0.0,
    pooling: str = "mean",
) -> BiLSTMModel:
    """A BiLSTM student over the teacher's vocabulary (so it shares the teacher's tokenizer).

    hidden is the per-direction LSTM size (output width 2*hidden). With
    init_embeddings="teacher_projection" the word embeddings are the teacher's word-embedding
    table projected on its top `embedding_dim` principal components (`pca_projection`);
    "random" keeps the seeded N(0, 0.02) init. The global RNG is left untouched.
    """
    if init_embeddings not in EMBEDDING_INITS:
        raise ValueError(
            f"student.init_embeddings: unknown {init_embeddings!r}; choose from "
            f"{sorted(EMBEDDING_INITS)}"
        )
    config = BiLSTMConfig(
        vocab_size=teacher.get_input_embeddings().weight.shape[0],
        embedding_dim=embedding_dim,
        lstm_hidden=hidden,
        num_layers=layers,
        dropout=dropout,
        pad_token_id=teacher.config.pad_token_id,
        pooling=pooling,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = BiLSTMModel(config)
    init = EMBEDDING_INITS[init_embeddings]
    if init is not None:
        init(student, teacher)
    return student
