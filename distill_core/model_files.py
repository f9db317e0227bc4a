"""What a model folder must hold for transformers to load it, checked from the file names
and headers only (no tensor is read): a config, weights in a format transformers 5 reads,
and tokenizer files. Preflight checks a local teacher folder with these before Ray starts.
"""

from __future__ import annotations

import json
from pathlib import Path

# What transformers 5 loads a model from (a sharded checkpoint: the index plus its shards).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Any one of these makes a tokenizer; without them transformers 5 builds one whose vocabulary
# is its special tokens only, silently.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "tekken.json",
)


def has_weights(folder: str) -> bool:
    """False for a local folder without any weights file (e.g. a packaged architecture)."""
    path = Path(folder)
    return not path.is_dir() or any((path / f).is_file() for f in WEIGHT_FILES)


def _safetensors_problem(file: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own error types for a bad header
        return f"{file.name} is not a readable safetensors file ({_first_line(exc)})"
    return None


def _weights_problem(folder: Path) -> str | None:
    """Why the weights in `folder` cannot be loaded (checked without reading tensors)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            try:
                shards = sorted(
                    set(json.loads((folder / index).read_text())["weight_map"].values())
                )
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                return f"{index} is not a shard index (a JSON object with a weight_map)"
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing or not shards:
                return f"{index} names shards that are missing: {missing[:3] or 'none listed'}"
            if index.startswith("model.safetensors"):
                problems = (_safetensors_problem(folder / s) for s in shards)
                return next((p for p in problems if p), None)
            return None
    if (folder / "model.safetensors").is_file():
        return _safetensors_problem(folder / "model.safetensors")
    weights = folder / "pytorch_model.bin"
    if weights.is_file() and weights.stat().st_size == 0:
        return "pytorch_model.bin is empty"
    return None


def teacher_folder_problem(folder: str, *, needs_weights: bool = True) -> str | None:
    """Why a local teacher folder cannot be loaded by the workers, or None: a
    `config.json`, weights in a format transformers reads (none at all is fine when not
    `needs_weights`: an architecture that a `pretrain` stage trains), and tokenizer files."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        return "no config.json (a teacher folder is what save_pretrained writes)"
    if needs_weights and not has_weights(folder):
        return f"no weights (expected one of {', '.join(WEIGHT_FILES)})"
    problem = _weights_problem(path)
    if problem:
        return problem
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        return (
            f"no tokenizer (expected one of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer with the model"
        )
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
