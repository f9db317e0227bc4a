"""The encoder family (BERT, RoBERTa, MiniLM, MPNet, ...): sentence-level and token-level
distillation into a transformer student built from the teacher's config, or into a BiLSTM
(`student.kind: lstm`). The objective is a weighted sum of `objective.LOSSES`; MixKD mixes
token embeddings; the `mlm` loss masks both models' inputs; a task adds a linear head on the
pooled vector. Exported as an HF folder (plus sentence-transformers modules when the
teacher is one) and reported as STS Spearman or cosine agreement, task accuracy and
sentences/s.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig

from distill.core.attention_terms import (
    ATTENTION_LOSSES,
    attention_settings,
    check_attention_objective,
)
from distill.core.cache_format import bypass_reason, encoder_rows, plan_for
from distill.core.data import (
    collate,
    collate_for_both,
    load_sts_pairs,
    teacher_view,
    tokenize,
    tokenize_for_both,
    tokenized_batches,
    wiki_sentences,
)
from distill.core.evaluation import (
    cosine_agreement,
    measure_throughput,
    similarity_agreement,
    spearman_of_embeddings,
    sts_spearman,
    task_scores,
)
from distill.core.export import PROBE_TEXTS, SentenceEncoder, export_student, load_encoder
from distill.core.family_interface import Batch, ModelFamily
from distill.core.lstm_student import build_lstm_student
from distill.core.mixup import mix_labels, mixup, sample_lambda
from distill.core.model_types import model_type_name, model_type_of
from distill.core.objective import (
    LOSSES,
    POOLED_LOSSES,
    TASK_LOSSES,
    TEACHERLESS_LOSSES,
    DistillationModel,
    MixedBatch,
    Objective,
    ObjectiveSettings,
    layer_pairs,
)
from distill.core.outputs import (
    MlmHead,
    MlmMasking,
    RemoteTeacher,
    TaskHead,
    forward_outputs,
    mask_tokens,
)
from distill.core.spec import JobSpec, SpecError
from distill.core.student import (
    build_student,
    count_parameters,
    freeze_word_embeddings,
    no_gather,
)
from distill.core.student_resolution import (
    PRETRAINED,
    SEQUENCE_KD_NEEDS,
    STUDENT_PREFIX,
    as_teacher_copy,
    check_layer_choice,
    load_pretrained_student,
    load_state,
    resolve_pretrained_student,
    resolve_width,
    student_model_config,
    student_size,
    used_losses,
)

# Losses that compare whole sentences, so student and teacher may tokenize differently.
SENTENCE_LEVEL_LOSSES = POOLED_LOSSES | TASK_LOSSES
_POOLED = "objective.projections.pooled."


def depth(config: PretrainedConfig) -> int:
    """Number of layers behind `hidden_states` (index 0 is the embeddings)."""
    layers = getattr(config, "num_hidden_layers", None)
    return layers if layers is not None else config.num_layers


class EncoderFamily(ModelFamily):
    name = "encoder"
    losses = LOSSES
    auto_class = AutoModel

    # -- preflight --------------------------------------------------------------------------

    def default_weights(self, kind, spec, cross_tokenizer=False):
        """Sentence-level distillation (TinyBERT-style hidden states + the pooled vector; the
        pooled vector alone when the student tokenizes differently); a finetune stage trains
        its task head on labels."""
        if kind == "finetune":
            return {"hard_label": 1.0}
        if cross_tokenizer:
            return {"pooled_mse": 1.0, "pooled_cosine": 1.0}
        return {"hidden_mse": 1.0, "pooled_cosine": 1.0}

    def resolve_stage(
        self,
        spec,
        kind,
        teacher_config,
        *,
        teacher_has_weights,
        teacher_has_head,
        cross_tokenizer=False,
    ):
        tc = teacher_config
        spec = self.with_default_objective(spec, kind, cross_tokenizer)
        if kind == "pretrain":
            raise SpecError(
                "kind: pretrain needs a generative (causal or seq2seq) teacher architecture"
            )
        if kind == "finetune":
            if any(
                w > 0 and n not in TEACHERLESS_LOSSES for n, w in spec.objective.weights.items()
            ):
                raise SpecError(
                    "objective.weights: a finetune stage trains on labels only "
                    f"({sorted(TEACHERLESS_LOSSES)})"
                )
            spec = as_teacher_copy(spec, self.size(tc), "first_k")
        elif spec.student.init == PRETRAINED or spec.student.name is not None:
            spec = resolve_pretrained_student(spec, self.name)
        else:
            spec = self._resolve_student(spec, tc)
        self._check_objective(spec, tc, teacher_has_head)
        if cross_tokenizer:
            _check_cross_tokenizer(spec)
        return spec

    def _resolve_student(self, spec: JobSpec, tc) -> JobSpec:
        s = spec.student
        if s.kind == "lstm":
            if s.init not in ("random", "every_other_layer") or s.teacher_layers:
                raise SpecError(
                    "student.init: an LSTM student takes no teacher layers; drop student.init"
                )
            if s.decoder_layers is not None:
                raise SpecError(
                    "student.decoder_layers: only for seq2seq (encoder-decoder) teachers"
                )
            student = s.model_copy(
                update={"freeze_word_embeddings": bool(s.freeze_word_embeddings)}
            )
            return spec.model_copy(update={"student": student})
        if s.decoder_layers is not None:
            raise SpecError("student.decoder_layers: only for seq2seq (encoder-decoder) teachers")
        entry = model_type_of(tc)
        s = resolve_width(s, self.size(tc), narrow_only=False, grouped=entry.kv_heads is not None)
        if s.init == "width_slice":
            if not entry.width_slice:
                raise SpecError(
                    f"student.init: width_slice supports BERT-family encoders (BERT, RoBERTa, "
                    f"ELECTRA, XLM-R); {model_type_name(tc)} takes uniform_map, "
                    "every_other_layer, first_k or random"
                )
            _check_width_slice(s.hidden, s.heads, s.ffn, tc)
        check_layer_choice(s, tc.num_hidden_layers, s.layers)
        return spec.model_copy(update={"student": s})

    def _check_objective(self, spec: JobSpec, tc, teacher_has_head: bool) -> None:
        o, s = spec.objective, spec.student
        unknown = sorted(set(o.weights) - set(LOSSES))
        if unknown:
            raise SpecError(
                f"objective.weights: unknown loss {unknown}; choose from {sorted(LOSSES)}"
            )
        used = used_losses(spec)
        if spec.task is not None and spec.task.type == "seq2seq":
            raise SpecError("task.type: seq2seq needs an encoder-decoder (seq2seq) teacher")
        if o.sequence_kd is not None:
            raise SpecError(f"objective.sequence_kd: {SEQUENCE_KD_NEEDS}")
        if o.on_policy_fraction > 0:
            raise SpecError(
                "objective.on_policy: the student samples text to be scored token by token; "
                f"needs a causal or seq2seq teacher, not an encoder ({tc.model_type})"
            )
        student_depth = s.lstm.layers if s.kind == "lstm" else s.layers
        try:
            layer_pairs(o.layer_map, student_depth, tc.num_hidden_layers)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        if used & TASK_LOSSES and spec.task is None:
            raise SpecError(
                f"objective.weights: {sorted(used & TASK_LOSSES)} need a task (task.type)"
            )
        if {"logit_kl", "logit_mse"} & used and not teacher_has_head:
            raise SpecError(
                "objective.weights: logit_kl/logit_mse need a teacher with a task head: a "
                "finetune stage (teacher.name: stage:NAME) or a folder with task_head/"
            )
        if "logit_kl" in used and spec.task and spec.task.type == "regression":
            raise SpecError(
                "objective.weights: logit_kl needs classification; use logit_mse for regression"
            )
        if "mlm" in used and s.kind == "lstm":
            raise SpecError("objective.weights: mlm needs a transformer student")
        attention = used & ATTENTION_LOSSES
        if attention and s.kind == "lstm":
            raise SpecError(f"objective.weights: {sorted(attention)} need a transformer student")
        if attention:
            check_attention_objective(spec, used, tc, student_model_config(spec, tc))

    def output_config(self, spec, kind, teacher_config):
        if kind == "finetune":
            return teacher_config
        if spec.student.kind == "lstm":
            return None  # a BiLSTM cannot teach
        return student_model_config(spec, teacher_config)

    # -- training ---------------------------------------------------------------------------

    def trainable(
        self, spec, teacher, tokenizer, *, kind="distill", previous_student=None, gather=no_gather
    ):
        spec = self.with_default_objective(spec, kind)
        projection, head = None, None
        if kind == "finetune":
            student = copy.deepcopy(teacher).requires_grad_(True).train()
        elif previous_student is not None:
            encoder = load_encoder(previous_student)
            student, projection = encoder.model.train(), encoder.projection
            head = TaskHead.load(previous_student)
        elif spec.student.init == PRETRAINED:
            student = load_pretrained_student(spec, AutoModel)
        else:
            student = _fresh_student(spec, teacher, gather, tokenizer)
        if spec.student.freeze_word_embeddings and kind != "finetune":
            freeze_word_embeddings(student)
        if spec.task is not None:
            t = spec.task
            if head is None or head.linear.out_features != t.num_labels or head.task_type != t.type:
                head = TaskHead(student.config.hidden_size, t.num_labels, t.type)
        elif head is not None:
            head = None  # a task-agnostic stage after a task stage: the head does not train
        objective = Objective(
            spec.objective.weights,
            student_hidden=student.config.hidden_size,
            teacher_hidden=teacher.config.hidden_size,
            pairs=layer_pairs(
                spec.objective.layer_map, depth(student.config), depth(teacher.config)
            ),
            settings=objective_settings(spec, student, teacher),
        )
        if projection is not None and "pooled" in objective.projections:
            target = objective.projections["pooled"]
            if target.weight.shape == projection.weight.shape:
                target.load_state_dict(projection.state_dict())
        mlm_head = None
        if spec.objective.weights.get("mlm", 0) > 0:
            mlm_head = MlmHead(
                student.get_input_embeddings().weight.detach(),
                eps=getattr(student.config, "layer_norm_eps", 1e-12),
            )
            masking = MlmMasking.from_tokenizer(tokenizer, spec.objective.mlm_probability)
            return DistillationModel(student, objective, head, mlm_head, masking)
        return DistillationModel(student, objective, head)

    def batch_functions(self, tokenizer, teacher_tokenizer=None):
        if teacher_tokenizer is None:
            return tokenize, collate(tokenizer)
        both = functools.partial(tokenize_for_both, teacher_tokenizer=teacher_tokenizer)
        return both, collate_for_both(tokenizer, teacher_tokenizer)

    def prepare_batch(self, model: DistillationModel, batch: Batch, generator) -> Batch:
        """Masked-LM inputs (both models see the masked text) and `mlm_labels`, when the
        objective has the `mlm` loss."""
        m = model.masking
        if m is None:
            return batch
        ids = batch["input_ids"]
        special = torch.isin(ids, torch.tensor(m.special_ids, device=ids.device))
        special |= batch["attention_mask"] == 0
        masked, labels = mask_tokens(
            ids,
            special,
            mask_id=m.mask_id,
            vocab_size=m.vocab_size,
            probability=m.probability,
            generator=generator,
        )
        return {**batch, "input_ids": masked, "mlm_labels": labels}

    @torch.no_grad()
    def teacher_outputs(self, model, teacher, teacher_head, batch, inputs_embeds=None):
        if not model.objective.needs_teacher:
            return None
        if isinstance(teacher, RemoteTeacher):  # `teacher.placement: service`
            return teacher.outputs(
                teacher_view(batch),
                qkv_layers=model.objective.teacher_qkv_layers,
                head=teacher.has_head,
            )
        return self.served_outputs(
            teacher,
            teacher_head,
            teacher_view(batch),
            qkv_layers=model.objective.teacher_qkv_layers,
            inputs_embeds=inputs_embeds,
        )

    def served_outputs(self, teacher, teacher_head, view, *, qkv_layers=(), inputs_embeds=None):
        return forward_outputs(
            teacher, view, head=teacher_head, qkv_layers=qkv_layers, inputs_embeds=inputs_embeds
        )

    def mixed_batch(self, model, batch, teacher, teacher_head, spec, generator):
        """MixKD: mix each example with a random partner; the teacher runs on its own token
        embeddings mixed the same way, the student does the same inside the engine."""
        setting = spec.objective.mixup
        if setting is None:
            return None
        n = batch["input_ids"].shape[0]
        perm = torch.randperm(n, generator=generator).to(batch["input_ids"].device)
        lam = float(sample_lambda(setting.alpha, generator))
        mixed = {k: v for k, v in batch.items() if k != "labels"}
        if isinstance(teacher, RemoteTeacher):  # the service mixes its own embeddings
            mixed["attention_mask"] = torch.maximum(
                batch["attention_mask"], batch["attention_mask"][perm]
            )
            teacher_out = None
            if model.objective.needs_teacher:
                teacher_out = teacher.outputs(
                    teacher_view(batch),
                    qkv_layers=model.objective.teacher_qkv_layers,
                    head=teacher.has_head,
                    mix=(perm, lam),
                )
        else:
            with torch.no_grad():
                own = teacher.get_input_embeddings()(batch["input_ids"])
                t_embeds, mask = mixup(own, batch["attention_mask"], perm, lam)
            mixed["attention_mask"] = mask
            teacher_out = self.teacher_outputs(model, teacher, teacher_head, mixed, t_embeds)
        soft = None
        if "labels" in batch and spec.task is not None:
            classes = spec.task.num_labels if spec.task.type == "classification" else None
            soft = mix_labels(batch["labels"], perm, lam, classes)
        return MixedBatch(mixed, teacher_out, perm, lam, setting.weight, soft)

    def eval_counts(self, model, batch):
        if model.head is None or model.head.task_type != "classification":
            return None
        logits = forward_outputs(model.student, batch, head=model.head).logits
        return int((logits.argmax(-1) == batch["labels"]).sum()), len(batch["labels"])

    @torch.no_grad()
    def in_training_quality(self, model, tokenizer, pairs, max_length: int) -> float:
        """STS Spearman of the in-training student's sentence vectors (through the pooled
        projection, as exported): the signal Tune's schedulers stop trials on."""
        projection = model.objective.projections["pooled"] if _has_pooled(model) else None
        device = next(model.student.parameters()).device

        def embed(texts: list[str]) -> torch.Tensor:
            vectors = []
            for batch in tokenized_batches(tokenizer, texts, 64, max_length):
                batch = {k: v.to(device) for k, v in batch.items()}
                pooled = forward_outputs(model.student, batch).pooled
                if projection is not None:
                    pooled = projection(pooled.to(projection.weight.dtype))
                vectors.append(pooled.float())
            return torch.cat(vectors)

        return spearman_of_embeddings(embed, pairs)

    def cache_plan(self, spec, teacher_config, columns):
        spec = self.with_default_objective(spec, "distill")
        o, s = spec.objective, spec.student
        # A pretrained student with its own tokenizer reads the same cache: rows are the
        # teacher's tokenization (the batches' `teacher_*` columns), and the objectives
        # allowed across tokenizers (pooled vector, task logits) are one vector per row.
        reason = bypass_reason(o.weights, mixup=o.mixup is not None)
        if reason:
            return None, reason
        student_depth = s.lstm.layers if s.kind == "lstm" else s.layers
        pairs = layer_pairs(o.layer_map, student_depth, depth(teacher_config))
        plan = plan_for(o.weights, pairs)
        return (None, "the objective reads no teacher output") if plan.empty else (plan, None)

    def cache_rows(self, teacher, teacher_head, tokenizer, batch, plan):
        return encoder_rows(teacher, teacher_head, batch, plan)

    def cached_outputs(self, cache, split, index, batch, dtype):
        mask = teacher_view(batch)["attention_mask"]  # the cache holds the teacher's tokens
        return cache.encoder_outputs(split, index, mask, dtype)

    # -- export -----------------------------------------------------------------------------

    def export(self, model, tokenizer, folder, *, max_length, st_teacher):
        student, projection, head = _plain_fp32_copy(model)
        export_student(
            student,
            tokenizer,
            folder,
            projection=projection,
            sentence_transformer_teacher=st_teacher,
            max_seq_length=max_length,
            head=head,
        )
        return SentenceEncoder(student, tokenizer, projection).encode(
            PROBE_TEXTS, max_length=max_length
        )

    def student_from_state(self, spec, teacher_config, state):
        student = AutoModel.from_config(student_model_config(spec, teacher_config))
        projection = None
        if f"{_POOLED}weight" in state:
            w = state[f"{_POOLED}weight"]
            bias = state.get(f"{_POOLED}bias")
            projection = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        objective = Objective({}, student_hidden=0, teacher_hidden=0, pairs=[])
        if projection is not None:
            objective.projections["pooled"] = projection
        model = DistillationModel(student, objective)
        keep = {k: v for k, v in state.items() if k.startswith((STUDENT_PREFIX, _POOLED))}
        load_state(model, keep)
        return model

    # -- report -----------------------------------------------------------------------------

    def evaluate(self, spec, teacher_dir, student_dir, eval_rows, probe, speed=None):
        teacher, student = load_encoder(teacher_dir), load_encoder(student_dir)
        max_len, e = spec.data.max_length, spec.evaluation
        eval_texts = list(eval_rows["text"])
        export_diff = float((student.encode(PROBE_TEXTS, max_length=max_len) - probe).abs().max())
        if speed is None:  # no latency rounds to reuse (latency: none, or other latency_threads)
            speed = _measure_speed(spec, teacher, student, eval_texts)
        t_params, s_params = count_parameters(teacher), count_parameters(student)
        s, t = spec.student, teacher.model.config
        return {
            "teacher": {
                "name": spec.teacher.name,
                "family": self.name,
                "parameters": t_params,
                "layers": t.num_hidden_layers,
                "hidden": t.hidden_size,
            },
            "student": {
                "parameters": s_params,
                "layers": s.layers,
                "hidden": s.hidden,
                "heads": s.heads,
                "ffn": s.ffn,
                "init": s.init,
                "kind": s.kind,
            },
            "size": {
                "teacher_parameters": t_params,
                "student_parameters": s_params,
                "compression": t_params / s_params,
            },
            "quality": _quality(spec, teacher, student, eval_texts),
            "task": _task_quality(spec, teacher_dir, student_dir, eval_rows),
            "speed": {
                "unit": "sentences/s",
                "speedup": speed["student"] / speed["teacher"],
                "batch_size": e.batch_size,
                **speed,
            },
            "export_check": {"max_abs_diff": export_diff, "probe_texts": len(PROBE_TEXTS)},
        }


def _measure_speed(spec: JobSpec, teacher, student, eval_texts: list[str]) -> dict:
    """Teacher and student sentences/s on the held-out texts (PyTorch, batch
    `evaluation.batch_size`, the median of `evaluation.throughput_rounds` interleaved rounds)."""
    e = spec.evaluation
    texts = (eval_texts * (e.throughput_texts // max(len(eval_texts), 1) + 1))[: e.throughput_texts]
    speed = measure_throughput(
        {"teacher": teacher, "student": student},
        texts,
        rounds=e.throughput_rounds,
        batch_size=e.batch_size,
        max_length=spec.data.max_length,
    )
    return {**speed, "texts": len(texts), "threads": torch.get_num_threads()}


def _check_cross_tokenizer(spec: JobSpec) -> None:
    """Student and teacher tokenize the text themselves: only sentence-level losses (the
    pooled vectors, through a projection, and task logits) compare them."""
    aligned = sorted(used_losses(spec) - SENTENCE_LEVEL_LOSSES)
    if aligned:
        raise SpecError(
            f"objective.weights: {aligned} compare the models token by token, but the student's "
            f"tokenizer ({spec.student.name}) differs from the teacher's; use "
            f"{sorted(SENTENCE_LEVEL_LOSSES)}"
        )
    if spec.objective.mixup is not None:
        raise SpecError(
            "objective.mixup: MixKD mixes both models' token embeddings position by position; "
            "the student's tokenizer differs from the teacher's"
        )


def objective_settings(spec: JobSpec, student: nn.Module, teacher: nn.Module) -> ObjectiveSettings:
    return ObjectiveSettings(
        temperature=spec.objective.temperature,
        task_type=spec.task.type if spec.task else None,
        attention=attention_settings(spec, student.config, teacher.config, causal=False),
    )


CALIBRATION_SENTENCES = 512  # Minitron calibrates on 1,024 samples; 512 here (not tuned)


def calibration_batches(
    tokenizer, max_length: int, *, sentences: int = CALIBRATION_SENTENCES, batch_size: int = 16
) -> list[dict[str, torch.Tensor]]:
    """The first `sentences` packaged Wikipedia sentences, tokenized as training batches are:
    the text `student.importance: activations` ranks a width_slice student's widths on."""
    return tokenized_batches(tokenizer, wiki_sentences()[:sentences], batch_size, max_length)


def _fresh_student(spec: JobSpec, teacher: nn.Module, gather, tokenizer) -> nn.Module:
    s = spec.student
    if s.kind == "lstm":
        with gather(list(teacher.get_input_embeddings().parameters())):
            return build_lstm_student(
                teacher,
                embedding_dim=s.lstm.embedding_dim,
                hidden=s.lstm.hidden,
                layers=s.lstm.layers,
                pooling=s.lstm.pooling,
                init_embeddings=s.lstm.init_embeddings,
                seed=spec.training.seed,
            )
    return build_student(
        teacher,
        student_size(spec),
        init=s.init,
        teacher_layers=s.teacher_layers,
        seed=spec.training.seed,
        gather=gather,
        calibration=(
            calibration_batches(tokenizer, spec.data.max_length)
            if s.importance == "activations"
            else None
        ),
    )


def _check_width_slice(hidden: int, heads: int, ffn: int, tc) -> None:
    """width_slice keeps whole teacher heads and can only narrow the teacher."""
    for field, value, most in (
        ("hidden", hidden, tc.hidden_size),
        ("heads", heads, tc.num_attention_heads),
        ("ffn", ffn, tc.intermediate_size),
    ):
        if value > most:
            raise SpecError(
                f"student.{field}: width_slice can only narrow the teacher; {value} > {most}"
            )
    head_dim = tc.hidden_size // tc.num_attention_heads
    if hidden != heads * head_dim:
        raise SpecError(
            f"student.heads: width_slice keeps whole teacher heads of {head_dim}, so hidden "
            f"{hidden} needs heads={hidden // head_dim}, got {heads}"
        )


def _has_pooled(model: DistillationModel) -> bool:
    return "pooled" in model.objective.projections


def _fp32_copy(module: nn.Module, fresh: nn.Module) -> nn.Module:
    fresh.load_state_dict({k: v.detach().float().cpu() for k, v in module.state_dict().items()})
    return fresh.eval()


def _plain_fp32_copy(model: DistillationModel):
    """A detached fp32 copy of the student, pooled projection and task head outside the
    engine, so exporting never changes the dtype or partitioning of what is trained."""
    student = _fp32_copy(model.student, type(model.student)(model.student.config))
    projection = None
    if _has_pooled(model):
        src = model.objective.projections["pooled"]
        projection = _fp32_copy(
            src, nn.Linear(src.in_features, src.out_features, bias=src.bias is not None)
        )
    head = None
    if model.head is not None:
        linear = model.head.linear
        head = _fp32_copy(
            model.head, TaskHead(linear.in_features, linear.out_features, model.head.task_type)
        )
    return student, projection, head


def _quality(spec: JobSpec, teacher, student, eval_texts: list[str]) -> dict:
    e, max_len = spec.evaluation, spec.data.max_length
    if e.sts_path:
        pairs = load_sts_pairs(e.sts_path, e.max_sts_pairs)
        t, s = sts_spearman(teacher, pairs, max_len), sts_spearman(student, pairs, max_len)
        return {
            "metric": "sts_spearman",
            "split": e.sts_path,
            "n": len(pairs.scores),
            "teacher": t,
            "student": s,
            "retention": s / t if t else None,
        }
    t_emb = teacher.encode(eval_texts, max_length=max_len)
    s_emb = student.encode(eval_texts, max_length=max_len)
    if s_emb.shape[-1] != t_emb.shape[-1]:  # no projection (width-free objective)
        return {
            "metric": "similarity_agreement",
            "split": "held-out",
            "n": len(eval_texts),
            "teacher": 1.0,
            "student": (s := similarity_agreement(s_emb, t_emb)),
            "retention": s,
        }
    s = cosine_agreement(s_emb, t_emb)
    return {
        "metric": "cosine_agreement",
        "split": "held-out",
        "n": len(eval_texts),
        "teacher": 1.0,
        "student": s,
        "retention": s,
    }


def _task_quality(spec: JobSpec, teacher_dir: str, student_dir, eval_rows) -> dict | None:
    """Accuracy (classification) or Spearman (regression) of each model's own task head on
    the held-out labelled rows; None when the stage has no task or the teacher no head."""
    if spec.task is None or TaskHead.load(teacher_dir) is None:
        return None
    scores = {
        who: task_scores(folder, eval_rows, max_length=spec.data.max_length)
        for who, folder in (("teacher", teacher_dir), ("student", student_dir))
    }
    t, s = scores["teacher"], scores["student"]
    return {
        "metric": "accuracy" if spec.task.type == "classification" else "spearman",
        "n": len(eval_rows),
        "teacher": t,
        "student": s,
        "retention": s / t if t else None,
    }
