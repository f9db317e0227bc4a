"""The model-family registry and interface: every family builds, trains one step, exports
and reloads through the same calls, and the registry picks the family once from a config.
Tiny seeded models on the CPU; the teachers of the causal and seq2seq families are the
packaged `builtin:` architectures with random weights."""

from __future__ import annotations

import pytest
from helpers.family_steps import train_on_one_batch
from transformers import AutoConfig, AutoTokenizer, BartConfig, BertConfig, GPT2Config

from distill.core.family_interface import ModelFamily
from distill.core.family_registry import FAMILIES, family_of, model_family
from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.core.teacher import freeze, resolve_teacher

WEIGHTS = {
    "encoder": "objective.weights={hidden_mse: 1.0, pooled_cosine: 1.0}",
    "causal": "objective.weights={lm: 1.0, lm_kl: 1.0}",
    "seq2seq": "objective.weights={lm: 1.0, lm_jsd: 1.0}",
}


def test_registry_maps_configs_to_families():
    assert set(FAMILIES) == {"encoder", "causal", "seq2seq"}
    assert all(isinstance(f, ModelFamily) and f.name == n for n, f in FAMILIES.items())
    assert family_of(BertConfig()) is FAMILIES["encoder"]
    assert family_of(GPT2Config()) is FAMILIES["causal"]
    assert family_of(BartConfig()) is FAMILIES["seq2seq"]
    assert model_family(AutoConfig.for_model("llama")) == "causal"


def _teacher(name, tiny_bert, tiny_tokenizer, tmp_path):
    """(folder, model, tokenizer) of a tiny frozen teacher of the family."""
    if name == "encoder":
        folder = tmp_path / "bert"
        tiny_bert.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        return str(folder), tiny_bert, tiny_tokenizer
    arch = resolve_teacher("builtin:tiny-gpt2" if name == "causal" else "builtin:tiny-bart")
    model = FAMILIES[name].load_model(arch, seed=3)
    folder = tmp_path / name
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(arch)
    tokenizer.save_pretrained(folder)
    return str(folder), freeze(model), tokenizer


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_resolves_trains_exports_and_reloads(
    name, tiny_bert, tiny_tokenizer, tmp_path
):
    family = FAMILIES[name]
    folder, teacher, tokenizer = _teacher(name, tiny_bert, tiny_tokenizer, tmp_path)
    spec = load_spec(
        None,
        [f"teacher.name={folder}", "student.layers=1", "student.init=first_k", WEIGHTS[name]],
    )
    spec = family.resolve_stage(
        spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
    )
    assert spec.student.hidden == family.size(teacher.config).hidden  # filled in
    model = family.trainable(spec, teacher, tokenizer)
    losses = train_on_one_batch(family, spec, model, teacher, tokenizer)
    assert losses[-1] < losses[0]  # one batch, five steps: the loss must fall

    out = tmp_path / "export"
    probe = family.export(model, tokenizer, out, max_length=32, st_teacher=None)
    reloaded = family.load_model(str(out))
    assert family_of(reloaded.config) is family
    assert type(reloaded).__name__ == type(model.student).__name__
    assert family.output_config(spec, "distill", teacher.config).num_hidden_layers == 1
    assert probe.shape[0] == 3  # one row per probe text


def test_generative_family_refuses_encoder_only_fields(tmp_path, tiny_bert, tiny_tokenizer):
    folder, teacher, _ = _teacher("causal", tiny_bert, tiny_tokenizer, tmp_path)
    spec = load_spec(
        None, [f"teacher.name={folder}", WEIGHTS["causal"], "student.init=width_slice"]
    )
    with pytest.raises(SpecError, match="student.init: width_slice supports BERT-family"):
        FAMILIES["causal"].resolve_stage(
            spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
        )


def test_generative_family_drops_the_quickstart_sts_sample_and_refuses_an_sts_file(
    tmp_path, tiny_bert, tiny_tokenizer
):
    folder, teacher, _ = _teacher("causal", tiny_bert, tiny_tokenizer, tmp_path)
    resolve = lambda spec: FAMILIES["causal"].resolve_stage(  # noqa: E731
        spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
    )
    quickstart = load_spec(None, [f"teacher.name={folder}", "student.layers=2"])
    assert quickstart.evaluation.sts_path == "builtin:sts-sample"
    assert resolve(quickstart).evaluation.sts_path is None  # scored by perplexity instead
    with pytest.raises(SpecError, match="evaluation.sts_path: STS Spearman scores sentence enc"):
        resolve(
            load_spec(
                None, [f"teacher.name={folder}", "evaluation.sts_path=dev.csv", "student.layers=2"]
            )
        )


def test_encoder_family_refuses_token_losses(tiny_bert):
    spec = load_spec(None, [WEIGHTS["causal"], "student.layers=2"])
    with pytest.raises(SpecError, match="objective.weights: unknown loss"):
        FAMILIES["encoder"].resolve_stage(
            spec, "distill", tiny_bert.config, teacher_has_weights=True, teacher_has_head=False
        )
