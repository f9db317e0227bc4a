"""Export a trained student as a Hugging Face folder (plus a sentence-transformers layout
when the teacher is one), and load it back as a sentence encoder.

Layout: `save_pretrained` files and the tokenizer at the root; for sentence-transformers
teachers also `modules.json`, `1_Pooling/`, `2_Dense/` (the learned student->teacher
projection, when widths differ) and `3_Normalize/` when the teacher normalises.
A BiLSTM student (`lstm_student.py`) is exported as the plain HF folder plus `2_Dense/`
only: sentence-transformers cannot load it, and its pooling is `config.pooling`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from distill.core.lstm_student import BiLSTMConfig, register_lstm_student
from distill.core.outputs import sentence_pool

_DENSE = "2_Dense"
# Fixed texts whose outputs the trained in-memory model records at export time; the report
# reloads the export and compares (`export_check`).
PROBE_TEXTS = [
    "A quick check that the exported student matches the trained one.",
    "Knowledge distillation compresses a large teacher into a small student.",
    "Short text.",
]


def _modules(teacher_dir: Path, has_dense: bool) -> list[dict]:
    teacher_modules = json.loads((teacher_dir / "modules.json").read_text())
    normalize = any(m["type"].endswith("Normalize") for m in teacher_modules)
    mods = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if has_dense:
        mods.append(
            {"idx": 2, "name": "2", "path": _DENSE, "type": "sentence_transformers.models.Dense"}
        )
    if normalize:
        i = len(mods)
        mods.append(
            {
                "idx": i,
                "name": str(i),
                "path": f"{i}_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    return mods


def export_student(
    student: nn.Module,
    tokenizer,
    out_dir: str | Path,
    *,
    projection: nn.Linear | None = None,
    sentence_transformer_teacher: str | Path | None = None,
    max_seq_length: int = 256,
) -> Path:
    """Write the student, its tokenizer and (optionally) the sentence-transformers modules.

    The sentence-transformers modules are skipped for a BiLSTM student, whatever
    `sentence_transformer_teacher` says: that library only loads transformer folders.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if projection is not None:
        (out / _DENSE).mkdir(exist_ok=True)
        (out / _DENSE / "config.json").write_text(
            json.dumps(
                {
                    "in_features": projection.in_features,
                    "out_features": projection.out_features,
                    "bias": projection.bias is not None,
                    "activation_function": "torch.nn.modules.linear.Identity",
                }
            )
        )
        weights = {"linear.weight": projection.weight.detach().float().contiguous().cpu()}
        if projection.bias is not None:
            weights["linear.bias"] = projection.bias.detach().float().contiguous().cpu()
        save_file(weights, str(out / _DENSE / "model.safetensors"))
    if sentence_transformer_teacher is not None and not _is_lstm(student):
        teacher_dir = Path(sentence_transformer_teacher)
        modules = _modules(teacher_dir, projection is not None)
        (out / "modules.json").write_text(json.dumps(modules, indent=2))
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": student.config.hidden_size,
                    "pooling_mode_cls_token": False,
                    "pooling_mode_mean_tokens": True,
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                },
                indent=2,
            )
        )
        (out / "sentence_bert_config.json").write_text(
            json.dumps(
                {
                    "max_seq_length": min(max_seq_length, student.config.max_position_embeddings),
                    "do_lower_case": False,
                }
            )
        )
        for extra in ("config_sentence_transformers.json",):
            if (teacher_dir / extra).is_file():
                shutil.copy(teacher_dir / extra, out / extra)
        for m in modules:
            if m["type"].endswith("Normalize"):
                (out / m["path"]).mkdir(exist_ok=True)
    return out


def _is_lstm(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == BiLSTMConfig.model_type


class SentenceEncoder(nn.Module):
    """Encoder + masked pooling (+ optional projection): the embedding used everywhere
    for evaluation, so teacher and student are measured the same way. Pooling is the mean
    over real tokens, or `model.config.pooling` where the model has one (BiLSTM students)."""

    def __init__(self, model: nn.Module, tokenizer, projection: nn.Linear | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.projection = projection

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
        chunks = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            pooled = sentence_pool(self.model, out.last_hidden_state, batch["attention_mask"])
            if self.projection is not None:
                pooled = self.projection(pooled)
            chunks.append(pooled)
        return torch.cat(chunks) if chunks else torch.empty(0)


def load_encoder(folder: str | Path) -> SentenceEncoder:
    """Load a teacher folder or an exported student as a `SentenceEncoder`."""
    folder = Path(folder)
    register_lstm_student()  # so AutoModel can read an exported BiLSTM student
    model = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    projection = None
    if (folder / _DENSE / "config.json").is_file():
        cfg = json.loads((folder / _DENSE / "config.json").read_text())
        projection = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg["bias"])
        projection.load_state_dict(
            {
                k.removeprefix("linear."): v
                for k, v in load_file(str(folder / _DENSE / "model.safetensors")).items()
            }
        )
        projection.eval()
    return SentenceEncoder(model, tokenizer, projection)
