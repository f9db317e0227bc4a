"""The one table of Hugging Face model types: which family each belongs to, what its
config calls depth, width, heads, key/value heads and FFN size, which config fields hold one
entry per layer, and how a transformer block's Q, K and V are found.

    entry = model_type_of(config)        # MODEL_TYPES[config.model_type], or a generic one
    entry.read(config, "ffn")            # DistilBERT: config.hidden_dim; T5: config.d_ff

Everything that depends on a config's field names (the student's config, the attention
hooks, the preflight's checks) reads this table instead of asking `model_type`. A model
type missing from it gets `GENERIC_ENCODER` / `GENERIC_CAUSAL` / `GENERIC_SEQ2SEQ`, which
use transformers' standard names; attention-relation objectives are then refused by
preflight because the table cannot say where Q/K/V are.

How Q/K/V are found (`QkvLayout`), per kind of block:
- three children of one attention module: BERT-style `query/key/value`, DistilBERT
  `q_lin/k_lin/v_lin`, DeBERTa-v2 `query_proj/key_proj/value_proj`, Llama-style and BART
  `q_proj/k_proj/v_proj` (k and v narrower under grouped-query attention), MPNet and T5
  `q/k/v`; the first such module of a block is its self-attention (registration order);
- one fused child whose output is split: GPT-2 `c_attn` and ModernBERT `Wqkv` hold
  [q | k | v] (`thirds`), GPT-NeoX `query_key_value` holds [head 0: q k v | head 1: ...]
  (`per_head`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from transformers import PretrainedConfig

Family = Literal["encoder", "causal", "seq2seq"]
Dim = Literal["layers", "hidden", "heads", "ffn", "kv_heads", "head_dim", "decoder_layers"]


@dataclass(frozen=True)
class QkvLayout:
    """Where a block's Q, K and V come from.

    names: the (q, k, v) child names of the attention module, or the one fused child's name;
    fused: None for three children, `thirds` when the fused output is [q | k | v], `per_head`
    when it is [heads, 3 * head_dim] (each head's q, k, v together)."""

    names: tuple[str, ...]
    fused: Literal["thirds", "per_head"] | None = None

    def describe(self) -> str:
        if self.fused is None:
            return "/".join(self.names)
        return f"fused {self.names[0]} ({self.fused})"


BERT_QKV = QkvLayout(("query", "key", "value"))
DISTILBERT_QKV = QkvLayout(("q_lin", "k_lin", "v_lin"))
DEBERTA_QKV = QkvLayout(("query_proj", "key_proj", "value_proj"))
PROJ_QKV = QkvLayout(("q_proj", "k_proj", "v_proj"))
SHORT_QKV = QkvLayout(("q", "k", "v"))
GPT2_QKV = QkvLayout(("c_attn",), fused="thirds")
MODERNBERT_QKV = QkvLayout(("Wqkv",), fused="thirds")
NEOX_QKV = QkvLayout(("query_key_value",), fused="per_head")


@dataclass(frozen=True)
class ModelType:
    """One model type's family and config field names (None: the config has no such field).

    ffn_ratio: when `ffn` is unset (GPT-2's `n_inner: null`), the FFN is ffn_ratio x hidden.
    head_dim: a head-size field that may differ from hidden / heads (Gemma, Qwen3, T5 d_kv).
    per_layer: fields holding one entry per layer (a student keeps its chosen layers' entries).
    per_layer_runs: a run-length form of the per-layer list the config rebuilds it from on
    load (GPT-Neo's `attention_types`: [[pattern, repeats]]), rewritten to match.
    decoder_*: the decoder stack of an encoder-decoder.
    qkv: None when the table does not know where Q/K/V are (attention relations refused).
    width_slice: BertModel's parameter names, so `student.init: width_slice` applies.
    logit_softcap / scaled_decoder_output: config fields of what the LM head does besides
    the projection (Gemma 2/3 tanh soft-capping; T5 scales tied decoder outputs).
    """

    family: Family
    layers: str = "num_hidden_layers"
    hidden: str = "hidden_size"
    heads: str = "num_attention_heads"
    ffn: str | None = "intermediate_size"
    ffn_ratio: int | None = None
    kv_heads: str | None = None
    head_dim: str | None = None
    per_layer: tuple[str, ...] = ()
    decoder_layers: str | None = None
    decoder_heads: str | None = None
    decoder_ffn: str | None = None
    tied_embeddings: str = "tie_word_embeddings"
    qkv: QkvLayout | None = None
    width_slice: bool = False
    logit_softcap: str | None = None
    scaled_decoder_output: str | None = None
    per_layer_runs: str | None = None

    def read(self, config: PretrainedConfig, dim: Dim) -> int | None:
        """The config's value of `dim` under this type's name (FFN: derived when unset)."""
        name = getattr(self, dim)
        value = getattr(config, name, None) if name else None
        if dim == "ffn" and value is None and self.ffn_ratio is not None:
            return self.ffn_ratio * getattr(config, self.hidden)
        if dim == "decoder_layers" and value is None and name is not None:
            return getattr(config, self.layers)
        return value

    def missing(self, config: PretrainedConfig) -> list[str]:
        """The size fields this entry expects that `config` lacks."""
        need = ["layers", "hidden", "heads", "ffn"]
        if self.family == "seq2seq":
            need.append("decoder_layers")
        return [getattr(self, d) or d for d in need if self.read(config, d) is None]


_BERT_LIKE = ModelType("encoder", qkv=BERT_QKV, width_slice=True)
_LLAMA_LIKE = ModelType("causal", kv_heads="num_key_value_heads", head_dim="head_dim", qkv=PROJ_QKV)
_LLAMA_LAYERED = ModelType(
    "causal",
    kv_heads="num_key_value_heads",
    head_dim="head_dim",
    per_layer=("layer_types",),
    qkv=PROJ_QKV,
)
_GEMMA_CAPPED = replace(_LLAMA_LAYERED, logit_softcap="final_logit_softcapping")

MODEL_TYPES: dict[str, ModelType] = {
    # encoders
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "mpnet": ModelType("encoder", qkv=SHORT_QKV),
    "distilbert": ModelType(
        "encoder", layers="n_layers", hidden="dim", heads="n_heads", ffn="hidden_dim",
        qkv=DISTILBERT_QKV,
    ),
    "deberta-v2": ModelType("encoder", qkv=DEBERTA_QKV),
    "deberta": ModelType("encoder", qkv=None),  # fused in_proj with its own layout
    "modernbert": ModelType("encoder", per_layer=("layer_types",), qkv=MODERNBERT_QKV),
    # decoders
    "gpt2": ModelType(
        "causal", layers="n_layer", hidden="n_embd", heads="n_head", ffn="n_inner", ffn_ratio=4,
        qkv=GPT2_QKV,
    ),
    "gpt_neox": ModelType("causal", qkv=NEOX_QKV),
    "gpt_neo": ModelType(
        "causal", layers="num_layers", heads="num_heads", ffn_ratio=4,
        per_layer=("attention_layers",), per_layer_runs="attention_types", qkv=PROJ_QKV,
    ),
    "gptj": ModelType(
        "causal", layers="n_layer", hidden="n_embd", heads="n_head", ffn="n_inner", ffn_ratio=4,
        qkv=PROJ_QKV,
    ),
    "opt": ModelType("causal", ffn="ffn_dim", qkv=PROJ_QKV),
    "phi": ModelType("causal", kv_heads="num_key_value_heads", qkv=PROJ_QKV),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "qwen2": _LLAMA_LAYERED,
    "qwen3": _LLAMA_LAYERED,
    "gemma2": _GEMMA_CAPPED,
    "gemma3_text": _GEMMA_CAPPED,
    # encoder-decoders
    "bart": ModelType(
        "seq2seq", layers="encoder_layers", hidden="d_model", heads="encoder_attention_heads",
        ffn="encoder_ffn_dim", decoder_layers="decoder_layers",
        decoder_heads="decoder_attention_heads", decoder_ffn="decoder_ffn_dim", qkv=PROJ_QKV,
    ),
    "t5": ModelType(
        "seq2seq", layers="num_layers", hidden="d_model", heads="num_heads", ffn="d_ff",
        head_dim="d_kv", decoder_layers="num_decoder_layers", qkv=SHORT_QKV,
        scaled_decoder_output="scale_decoder_outputs",
    ),
}  # fmt: skip

GENERIC_ENCODER = ModelType("encoder")
GENERIC_CAUSAL = ModelType("causal", kv_heads="num_key_value_heads")
GENERIC_SEQ2SEQ = ModelType(
    "seq2seq", layers="encoder_layers", hidden="d_model", heads="encoder_attention_heads",
    ffn="encoder_ffn_dim", decoder_layers="decoder_layers",
    decoder_heads="decoder_attention_heads", decoder_ffn="decoder_ffn_dim",
)  # fmt: skip


def model_type_of(config: PretrainedConfig) -> ModelType:
    """The table's entry for `config`; a type the table lacks gets the generic entry of its
    family (encoder-decoder, decoder by `is_decoder` or a `*ForCausalLM` architecture, else
    encoder)."""
    known = MODEL_TYPES.get(getattr(config, "model_type", ""))
    if known is not None:
        return known
    if getattr(config, "is_encoder_decoder", False):
        return GENERIC_SEQ2SEQ
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_decoder", False) or any(a.endswith("ForCausalLM") for a in archs):
        return GENERIC_CAUSAL
    return GENERIC_ENCODER


def model_type_name(config: PretrainedConfig) -> str:
    return getattr(config, "model_type", "") or type(config).__name__
