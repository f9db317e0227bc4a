"""Training a model family's trainable model for a few steps on one fixed batch, through the
family interface's own calls (`batch_functions`, `prepare_batch`, `teacher_outputs`), the
way the worker loop drives it: the check that a family's student learns at all.

    losses = train_on_one_batch(family, spec, model, teacher, tokenizer)
"""

from __future__ import annotations

import datasets
import torch

TEXTS = ["the cat sat on the mat", "a good movie and a great story", "it was a dark night"]


def train_on_one_batch(family, spec, model, teacher, tokenizer, steps: int = 5) -> list[float]:
    """The loss of each of `steps` AdamW steps on one batch of `TEXTS` (32 tokens at most);
    asserts that no teacher parameter is trained and that every term with a positive weight
    in `spec.objective.weights` is reported."""
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in model.parameters()}
    tokenize, collate = family.batch_functions(tokenizer)
    rows = tokenize(datasets.Dataset.from_dict({"text": TEXTS}), tokenizer, 32)
    batch = family.prepare_batch(model, collate(list(rows)), torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(steps):
        loss, parts = model(batch, family.teacher_outputs(model, teacher, None, batch))
        assert set(parts) == {k for k, w in spec.objective.weights.items() if w > 0}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
