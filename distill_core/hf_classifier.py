"""A task student that Hugging Face's Auto classes load with its trained head.

The head distill trains (`outputs.TaskHead`) is a linear layer over the *mean-pooled*
token states, which no built-in `*ForSequenceClassification` computes (BERT's pools the
[CLS] token through a tanh layer). So the export carries a small modeling file,
`modeling_distill.py`, registered in `config.json` under `auto_map`, the way models with
their own head are published on the Hub:

    AutoModelForSequenceClassification.from_pretrained(student, trust_remote_code=True)
    pipeline("text-classification", model=student, trust_remote_code=True)

The encoder's weights stay at the root of `model.safetensors` under their plain names
(so `AutoModel.from_pretrained(student)` and sentence-transformers load the encoder as
before) and the head's are added as `classifier.*`; `task_head/` stays too (distill's own
readers and the BiLSTM student, which has no HF classifier, use it).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from transformers import MODEL_MAPPING, AutoConfig

from distill.core.outputs import TaskHead

MODELING_FILE = "modeling_distill.py"
CLASS_NAME = "DistillMeanPooledClassifier"

_MODELING = '''"""Written by distill: the trained task head over the mean-pooled token states.

Load with AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
or pipeline("text-classification", model=folder, trust_remote_code=True).
"""

import inspect

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel, {config_class}
from transformers.modeling_outputs import SequenceClassifierOutput


class {class_name}(PreTrainedModel):
    config_class = {config_class}
    base_model_prefix = "{prefix}"

    def __init__(self, config):
        super().__init__(config)
        self.{prefix} = AutoModel.from_config(config)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear({width}, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {{"input_ids": input_ids, "attention_mask": attention_mask}}
        accepts = inspect.signature(self.{prefix}.forward).parameters
        if token_type_ids is not None and "token_type_ids" in accepts:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.{prefix}(**inputs).last_hidden_state
        mask = attention_mask.to(torch.float32).unsqueeze(-1)
        pooled = (hidden.to(torch.float32) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype)))
        loss = None
        if labels is not None:
            if self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


def write_sequence_classifier(folder: str | Path, head: TaskHead) -> None:
    """Make an exported encoder folder (config.json, model.safetensors) loadable by
    `AutoModelForSequenceClassification` / `pipeline("text-classification")` with `head`."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    base = _base_class(config["model_type"])
    num_labels = head.linear.out_features
    (folder / MODELING_FILE).write_text(
        _MODELING.format(
            config_class=base.config_class.__name__,
            class_name=CLASS_NAME,
            prefix=base.base_model_prefix,
            width=head.linear.in_features,
        )
    )
    regression = head.task_type == "regression"
    labels = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    config.update(
        architectures=[CLASS_NAME],
        auto_map={
            **config.get("auto_map", {}),
            "AutoModelForSequenceClassification": f"{MODELING_FILE[:-3]}.{CLASS_NAME}",
        },
        problem_type="regression" if regression else "single_label_classification",
        id2label=labels,
        label2id={name: int(i) for i, name in labels.items()},
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    state["classifier.weight"] = head.linear.weight.detach().float().contiguous().cpu()
    state["classifier.bias"] = head.linear.bias.detach().float().contiguous().cpu()
    save_file(state, str(weights), metadata={"format": "pt"})


def _base_class(model_type: str):
    """The AutoModel class of a model type (its config class and weight prefix)."""
    return MODEL_MAPPING[type(AutoConfig.for_model(model_type))]
