"""The model-family registry: the one place that tells a teacher's family from its config.

    family = family_of(teacher_config)      # EncoderFamily, or GenerativeFamily(causal|seq2seq)

Everything else asks the family (`distill.core.family.ModelFamily`), never the config.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from distill.core.encoder_family import EncoderFamily
from distill.core.family import ModelFamily
from distill.core.generative_family import GenerativeFamily

# Decoder-only model types whose configs do not set `is_decoder`.
CAUSAL_TYPES = {"gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "opt", "phi"}

FAMILIES: dict[str, ModelFamily] = {
    "encoder": EncoderFamily(),
    "causal": GenerativeFamily("causal"),
    "seq2seq": GenerativeFamily("seq2seq"),
}


def model_family(config: PretrainedConfig) -> str:
    """`seq2seq` (encoder-decoder), `causal` (decoder-only LM) or `encoder`."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if getattr(config, "is_decoder", False) or config.model_type in CAUSAL_TYPES:
        return "causal"
    return "encoder"


def family_of(config: PretrainedConfig) -> ModelFamily:
    """The family of a teacher (or exported student) config."""
    return FAMILIES[model_family(config)]
