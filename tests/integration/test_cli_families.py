"""`distill run` on model-family input a family cannot take: exit 2 and one stderr line naming
the field, before Ray starts (the CLI in a subprocess, as `test_cli.py` runs it).

Teachers and students are tiny random models of `helpers.family_zoo`, saved with their
tokenizers; the cases run two at a time once per module.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers.family_zoo import build_teacher, lm_tokenizer, save_teacher
from transformers import AutoConfig, AutoModel, AutoTokenizer

from distill.core.packaged_teacher import packaged_teacher_path

ERROR_PREFIX = "distill: error: "
SMALL = ["training.steps=2", "data.max_train_samples=64", "data.max_length=32"]

# name -> (teacher model type, overrides, the field the line starts with, a phrase in it)
CASES: dict[str, tuple[str, list[str], str, str]] = {
    # Decoders take MiniLMv2 relations; Qwen2's grouped-query K/V (2 heads of 8) cannot be
    # re-split into 32 relation heads.
    "decoder-relation-heads-gqa": (
        "qwen2",
        ["objective.weights={lm: 1, minilmv2_relations: 1}", "objective.relation_heads=32"],
        "objective.relation_heads",
        "does not divide the teacher's K/V width 16 (grouped-query attention",
    ),
    "gqa-kv-heads": ("llama", ["student.kv_heads=3"], "student.kv_heads", "does not divide"),
    "gqa-group": (
        "mistral",
        ["student.hidden=24", "student.heads=3"],
        "student.heads",
        "query heads per key/value head",
    ),
    "width-slice-distilbert": (
        "distilbert",
        ["student.init=width_slice"],
        "student.init",
        "distilbert",
    ),
    "deberta-v1-qkv": (
        "deberta",
        ["objective.weights={minilmv2_relations: 1}"],
        "objective.weights",
        "Q/K/V",
    ),
    "student-without-tokenizer": (
        "bert",
        ["student.init=pretrained", "student.name={dir}/bare"],
        "student.name",
        "no tokenizer",
    ),
    "cross-tokenizer-token-loss": (
        "bert",
        ["student.init=pretrained", "student.name={dir}/bpe", "objective.weights={hidden_mse: 1}"],
        "objective.weights",
        "differs from the teacher's",
    ),
    "cross-tokenizer-decoder-kl": (
        "llama",
        [
            "student.init=pretrained",
            "student.name={dir}/wordpiece_lm",
            "objective.weights={lm: 1, lm_kl: 1}",
        ],
        "objective.weights",
        "['lm_kl'] compare next-token distributions over one vocabulary",
    ),
    "sequence-kd-prefix-seq2seq": (
        "bart",
        ["task={type: seq2seq}", "objective.sequence_kd={prefix_fraction: 0.3}"],
        "objective.sequence_kd.prefix_fraction",
        "only for causal teachers",
    ),
    "cross-tokenizer-seq2seq": (
        "bart",
        ["student.init=pretrained", "student.name={dir}/bart_gpt2_bpe"],
        "student.name",
        "a seq2seq student needs the teacher's tokenizer",
    ),
}


def _deberta_v1(folder: Path, tokenizer) -> None:
    config = AutoConfig.for_model(
        "deberta", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=80,
    )  # fmt: skip
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _prepare(root: Path) -> None:
    """Every teacher and student folder the cases name."""
    wordpiece = AutoTokenizer.from_pretrained(packaged_teacher_path())
    for model_type in sorted({c[0] for c in CASES.values()} - {"deberta"}):
        save_teacher(model_type, root / model_type, wordpiece)
    _deberta_v1(root / "deberta", wordpiece)
    build_teacher("bert", wordpiece).save_pretrained(root / "bare")  # no tokenizer files
    save_teacher("distilbert", root / "bpe", lm_tokenizer("gpt2"))
    lm = build_teacher("qwen2", wordpiece)  # a causal LM on another tokenizer than llama's
    lm.save_pretrained(root / "wordpiece_lm")
    wordpiece.save_pretrained(root / "wordpiece_lm")
    bpe = lm_tokenizer("gpt2")  # an encoder-decoder on the decoders' BPE, not BART's own
    build_teacher("bart", bpe).save_pretrained(root / "bart_gpt2_bpe")
    bpe.save_pretrained(root / "bart_gpt2_bpe")


def _run(root: Path, name: str) -> subprocess.CompletedProcess:
    model_type, overrides, _, _ = CASES[name]
    pretrained = "student.init=pretrained" in overrides  # keeps its own depth
    args = [f"teacher.name={root / model_type}", *SMALL]
    args += [] if pretrained else ["student.layers=2"]
    args += [o.replace("{dir}", str(root)) for o in overrides]
    folder = root / f"case-{name}"
    folder.mkdir()
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_TMPDIR": str(folder / "ray")}
    return subprocess.run(
        [sys.executable, "-m", "distill.jobs.cli", "run", "--set", *args],
        cwd=folder,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    root = tmp_path_factory.mktemp("families")
    _prepare(root)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, root, name) for name in CASES}
        return {name: (f.result(), root / f"case-{name}") for name, f in futures.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_family_refusals_are_one_line_exit_2_before_ray(name, outcomes):
    proc, folder = outcomes[name]
    _, _, field, phrase = CASES[name]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX + field + ":"), proc.stderr[-2000:]
    assert phrase in lines[0], lines[0]
    assert not (folder / "ray").exists(), "ray.init ran"
