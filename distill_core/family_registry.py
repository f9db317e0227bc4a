"""The model-family registry: the one place that tells a teacher's family from its config.

    family = family_of(teacher_config)      # EncoderFamily, or GenerativeFamily(causal|seq2seq)

Everything else asks the family (`distill.core.family_interface.ModelFamily`), never the config.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from distill.core.encoder_family import EncoderFamily
from distill.core.family_interface import ModelFamily
from distill.core.generative_family import GenerativeFamily
from distill.core.model_types import model_type_of

FAMILIES: dict[str, ModelFamily] = {
    "encoder": EncoderFamily(),
    "causal": GenerativeFamily("causal"),
    "seq2seq": GenerativeFamily("seq2seq"),
}


def model_family(config: PretrainedConfig) -> str:
    """`seq2seq` (encoder-decoder), `causal` (decoder-only LM) or `encoder`, from the
    model-type table (`distill.core.model_types`)."""
    return model_type_of(config).family


def family_of(config: PretrainedConfig) -> ModelFamily:
    """The family of a teacher (or exported student) config."""
    return FAMILIES[model_family(config)]
