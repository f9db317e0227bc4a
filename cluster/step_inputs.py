"""What one training step feeds the trainable model besides the batch: the frozen teacher's
outputs, MixKD's mixed copy of the batch, and masked-LM inputs. Shared by the Ray worker loop
and the in-process benchmarks, so both train exactly the same way."""

from __future__ import annotations

import torch

from distill.core.mixup import mix_labels, mixup, sample_lambda
from distill.core.objective import DistillationModel, MixedBatch
from distill.core.outputs import forward_outputs, mask_tokens
from distill.core.spec import JobSpec


@torch.no_grad()
def teacher_outputs(teacher, head, batch, model: DistillationModel, inputs_embeds=None):
    if not model.objective.needs_teacher:
        return None
    if hasattr(model, "teacher_forward"):  # generative: final hidden states + LM head
        return model.teacher_forward(teacher, batch)
    return forward_outputs(
        teacher,
        batch,
        head=head,
        qkv_layers=model.objective.teacher_qkv_layers,
        inputs_embeds=inputs_embeds,
    )


def mixed_batch(batch, teacher, head, model, spec: JobSpec, generator) -> MixedBatch | None:
    """MixKD: mix each example with a random partner; the teacher runs on its own token
    embeddings mixed the same way, the student does the same inside the engine."""
    setting = spec.objective.mixup
    if setting is None:
        return None
    n = batch["input_ids"].shape[0]
    perm = torch.randperm(n, generator=generator).to(batch["input_ids"].device)
    lam = float(sample_lambda(setting.alpha, generator))
    with torch.no_grad():
        own = teacher.get_input_embeddings()(batch["input_ids"])
        t_embeds, mask = mixup(own, batch["attention_mask"], perm, lam)
    mixed = {k: v for k, v in batch.items() if k != "labels"}
    mixed["attention_mask"] = mask
    teacher_out = teacher_outputs(teacher, head, mixed, model, t_embeds)
    soft = None
    if "labels" in batch and spec.task is not None:
        classes = spec.task.num_labels if spec.task.type == "classification" else None
        soft = mix_labels(batch["labels"], perm, lam, classes)
    return MixedBatch(mixed, teacher_out, perm, lam, setting.weight, soft)


def with_mlm_masks(batch: dict, tokenizer, spec: JobSpec, generator) -> dict:
    """Masked-LM inputs (both models see the masked text) and `mlm_labels`."""
    ids = batch["input_ids"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids, device=ids.device))
    special |= batch["attention_mask"] == 0
    masked, labels = mask_tokens(
        ids,
        special,
        mask_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        probability=spec.objective.mlm_probability,
        generator=generator,
    )
    return {**batch, "input_ids": masked, "mlm_labels": labels}
