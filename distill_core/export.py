"""Export a trained student as a Hugging Face folder (plus a sentence-transformers layout
when the teacher is one), and load it back as a sentence encoder.

Layout: `save_pretrained` files and the tokenizer at the root; for sentence-transformers
teachers the folder is then saved by sentence-transformers itself (`modules.json`,
`1_Pooling/`, `2_Dense/` with the learned student->teacher projection when widths differ,
`3_Normalize/` when the teacher normalises, and its configs). Task students also carry
`task_head/` and load through `AutoModelForSequenceClassification` (`hf_classifier`).
A BiLSTM student (`lstm_student.py`) is exported as the plain HF folder plus `2_Dense/`
only: sentence-transformers cannot load it, and its pooling is `config.pooling`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from distill.core.data import by_length, tokenized_batches
from distill.core.hf_classifier import write_sequence_classifier
from distill.core.lstm_student import BiLSTMConfig, register_lstm_student
from distill.core.outputs import TaskHead, sentence_pool

_DENSE = "2_Dense"
# Fixed texts whose outputs the trained in-memory model records at export time; the report
# reloads the export and compares (`export_check`).
PROBE_TEXTS = [
    "A quick check that the exported student matches the trained one.",
    "Knowledge distillation compresses a large teacher into a small student.",
    "Short text.",
]


def _teacher_normalizes(teacher_dir: Path) -> bool:
    """Whether a sentence-transformers teacher ends in a Normalize module."""
    modules = json.loads((teacher_dir / "modules.json").read_text())
    return any(m["type"].endswith("Normalize") for m in modules)


def _save_sentence_transformer(
    out: Path,
    width: int,
    projection: nn.Linear | None,
    teacher_dir: Path,
    max_seq_length: int,
) -> None:
    """sentence-transformers writes its own folder over the HF export in `out`: modules.json,
    1_Pooling (mean), 2_Dense (the learned projection, when widths differ), Normalize when
    the teacher normalises, its configs and its model card."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    modules = [Transformer(str(out), max_seq_length=max_seq_length), Pooling(width, "mean")]
    if projection is not None:
        modules.append(
            Dense(
                projection.in_features,
                projection.out_features,
                bias=projection.bias is not None,
                activation_function=nn.Identity(),
                init_weight=projection.weight.detach().float().cpu(),
                init_bias=None
                if projection.bias is None
                else projection.bias.detach().float().cpu(),
            )
        )
    if _teacher_normalizes(teacher_dir):
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))


def export_student(
    student: nn.Module,
    tokenizer,
    out_dir: str | Path,
    *,
    projection: nn.Linear | None = None,
    sentence_transformer_teacher: str | Path | None = None,
    max_seq_length: int = 256,
    head: TaskHead | None = None,
) -> Path:
    """Write the student, its tokenizer, (optionally) the sentence-transformers modules and
    a task head (`task_head/`, and for transformer students the Auto-class classifier of
    `hf_classifier`).

    The sentence-transformers modules are skipped for a BiLSTM student, whatever
    `sentence_transformer_teacher` says: that library only loads transformer folders.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    lstm = _is_lstm(student)
    if sentence_transformer_teacher is not None and not lstm:
        _save_sentence_transformer(
            out,
            student.config.hidden_size,
            projection,
            Path(sentence_transformer_teacher),
            min(max_seq_length, student.config.max_position_embeddings),
        )
    elif projection is not None:
        _save_dense(out / _DENSE, projection)
    if head is not None:
        head.save(out)
        if not lstm:  # written last: the sentence-transformers save rewrites the weights
            write_sequence_classifier(out, head)
    return out


def _save_dense(folder: Path, projection: nn.Linear) -> None:
    """The projection in sentence-transformers' Dense layout (read by `load_encoder`)."""
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(
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
    save_file(weights, str(folder / "model.safetensors"))


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
        ordered, places = by_length(texts)  # rows of similar lengths share a batch
        for batch in tokenized_batches(self.tokenizer, ordered, batch_size, max_length):
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            pooled = sentence_pool(self.model, out.last_hidden_state, batch["attention_mask"])
            if self.projection is not None:
                pooled = self.projection(pooled)
            chunks.append(pooled)
        return torch.cat(chunks)[places] if chunks else torch.empty(0)


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
