"""The generative families: causal LMs (GPT-2 / Llama-style decoders) and seq2seq LMs
(BART-style encoder-decoders). Token-level distillation: the objective is a weighted sum of
`generative.TOKEN_LOSSES` on target tokens, optionally with MiniLM / MiniLMv2 attention
relations (`attention_terms`) of one decoder block (causal) or encoder block (seq2seq);
seq2seq batches of plain text become BART text infilling, task pairs get decoder inputs. A
pretrained causal student with its own tokenizer reads its own token ids while the teacher
reads its own (batches carry both), trained on the LM loss and ULD
(`token_losses.uld_distance`). A `pretrain` stage trains the teacher's
architecture from scratch; `finetune` trains a copy of the teacher on the LM loss.
Exported as a plain HF folder loadable by the family's Auto LM class; reported as held-out
perplexity (and BLEU / chrF for seq2seq tasks) and generated tokens/s.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from distill.core.attention_terms import (
    ATTENTION_LOSSES,
    attention_settings,
    check_attention_objective,
)
from distill.core.cache_format import bypass_reason, lm_plan_for, lm_rows, row_seeds
from distill.core.data import (
    BUILTIN_STS,
    collate_for_both,
    teacher_view,
    tokenize_for_both,
    tokenizers_differ,
)
from distill.core.export import PROBE_TEXTS
from distill.core.family_interface import ModelFamily
from distill.core.generative import (
    CROSS_TOKENIZER_LOSSES,
    ON_POLICY_LOSSES,
    SAMPLED_TARGET_LOSSES,
    SHARED_VOCABULARY_LOSSES,
    TOKEN_LOSSES,
    BatchIds,
    GenerativeDistillationModel,
    OnPolicySettings,
    TokenObjective,
    TokenSettings,
    causal_targets,
    generative_collate,
    lm_head,
    lm_hidden,
    num_chunks,
    on_policy_step,
    prepare_seq2seq_batch,
    probe_logits,
    sample_continuations,
    sampling_seed,
    target_hidden,
    tokenize_generative,
    with_teacher_tokens,
)
from distill.core.generative_eval import (
    bleu_chrf,
    char_perplexity,
    generate_texts,
    generation_throughput,
    perplexity,
    shared_prefixes,
)
from distill.core.internals import capture_qkv
from distill.core.model_files import has_weights
from distill.core.model_types import model_type_of
from distill.core.outputs import ModelOutputs, RemoteTeacher
from distill.core.spec import SpecError
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


class GenerativeFamily(ModelFamily):
    """`causal` or `seq2seq`: the two differ in their Auto class, batch preparation and
    which spec fields apply (decoder depth, seq2seq tasks, sequence-level KD)."""

    losses = TOKEN_LOSSES

    def __init__(self, name: str) -> None:
        if name not in ("causal", "seq2seq"):
            raise ValueError(f"generative family: {name!r} is not causal or seq2seq")
        self.name = name
        self.auto_class = AutoModelForSeq2SeqLM if name == "seq2seq" else AutoModelForCausalLM

    def load_model(
        self, folder: str, *, seed: int = 0, dtype: torch.dtype | None = None
    ) -> nn.Module:
        """The LM in `folder`; a weightless architecture (`builtin:tiny-gpt2`) is built with
        seeded random weights, for a `kind: pretrain` stage to train."""
        if has_weights(folder):
            return super().load_model(folder, seed=seed, dtype=dtype)
        from transformers import AutoConfig

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = self.auto_class.from_config(AutoConfig.from_pretrained(folder))
        return model if dtype is None else model.to(dtype)

    # -- preflight --------------------------------------------------------------------------

    def default_weights(self, kind, spec, cross_tokenizer=False):
        """Token-level KD plus the LM loss on the data (MiniLLM / DistilGPT2-style); across
        tokenizers (causal), ULD in place of the KL; a pretrain or finetune stage trains on
        the LM loss alone."""
        if kind in ("pretrain", "finetune"):
            return {"lm": 1.0}
        if cross_tokenizer and self.name == "causal":
            return {"lm": 1.0, "uld": 1.0}
        return {"lm_kl": 1.0, "lm": 1.0}

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
        tc, family = teacher_config, self.name
        spec = self.with_default_objective(spec, kind, cross_tokenizer)
        sts = spec.evaluation.sts_path
        if sts == BUILTIN_STS:  # the quickstart's sample: LMs are scored by perplexity
            evaluation = spec.evaluation.model_copy(update={"sts_path": None})
            spec = spec.model_copy(update={"evaluation": evaluation})
        elif sts:
            raise SpecError(
                f"evaluation.sts_path: STS Spearman scores sentence encoders; a {family} "
                f"teacher ({tc.model_type}) is scored by held-out perplexity (remove it)"
            )
        o, s = spec.objective, spec.student
        used = used_losses(spec)
        unknown = sorted(used - set(TOKEN_LOSSES))
        if unknown:
            raise SpecError(
                f"objective.weights: {unknown} do not apply to a {family} teacher "
                f"({tc.model_type}); choose from {sorted(TOKEN_LOSSES)}"
            )
        if o.mixup is not None:
            raise SpecError("objective.mixup: MixKD needs an encoder teacher")
        if spec.task is not None and (family == "causal" or spec.task.type != "seq2seq"):
            allowed = "no task (it trains on plain text)" if family == "causal" else "type: seq2seq"
            raise SpecError(f"task.type: a {family} teacher ({tc.model_type}) takes {allowed}")
        if o.sequence_kd is not None and (
            kind != "distill" or (family == "seq2seq" and spec.task is None)
        ):
            raise SpecError(f"objective.sequence_kd: {SEQUENCE_KD_NEEDS}")
        if (
            o.sequence_kd is not None
            and family == "seq2seq"
            and "prefix_fraction" in o.sequence_kd.model_fields_set
        ):
            raise SpecError(
                "objective.sequence_kd.prefix_fraction: only for causal teachers (a seq2seq "
                "teacher generates the whole target from the source)"
            )
        if o.on_policy_fraction > 0:
            self._check_on_policy(spec, kind, used, teacher_has_head)
        cache = spec.teacher.cache
        unsampled = sorted(used & (SHARED_VOCABULARY_LOSSES - SAMPLED_TARGET_LOSSES))
        if kind == "distill" and cache.mode != "off" and cache.targets == "sampled" and unsampled:
            raise SpecError(
                f"teacher.cache.targets: sampled estimates the forward KL (lm_kl) only; "
                f"objective.weights {unsampled} need the teacher's probability wherever the "
                "student puts mass (use targets: topk, or teacher.cache.mode: off)"
            )
        if kind in ("pretrain", "finetune") and used != {"lm"}:
            raise SpecError(
                f"objective.weights: a {kind} stage trains on the LM loss only: {{lm: 1.0}}"
            )
        if kind != "pretrain" and not teacher_has_weights:
            raise SpecError(
                f"teacher.name: {spec.teacher.name} is an architecture without weights; train it "
                "first with a `kind: pretrain` stage and name it as teacher.name: stage:NAME"
            )
        if s.kind != "transformer":
            raise SpecError(f"student.kind: a {family} teacher takes a transformer student")
        if s.decoder_layers is not None and family != "seq2seq":
            raise SpecError("student.decoder_layers: only for seq2seq (encoder-decoder) teachers")
        size = self.size(tc)
        if kind in ("pretrain", "finetune"):  # the trained model is the teacher's architecture
            return as_teacher_copy(spec, size, "random" if kind == "pretrain" else "first_k")
        if s.init == PRETRAINED or s.name is not None:
            spec = resolve_pretrained_student(spec, family)
            if cross_tokenizer:
                self._check_cross_tokenizer(spec, used)
            check_attention_objective(spec, used, tc, student_model_config(spec, tc))
            return spec
        if s.init == "width_slice":
            raise SpecError(
                "student.init: width_slice supports BERT-family encoders; use uniform_map, "
                "every_other_layer, first_k or random for a generative teacher"
            )
        s = resolve_width(s, size, narrow_only=True, grouped=model_type_of(tc).kv_heads is not None)
        decoder_layers = (s.decoder_layers or s.layers) if family == "seq2seq" else None
        check_layer_choice(s, size.layers, s.layers)
        if decoder_layers is not None:
            check_layer_choice(
                s.model_copy(update={"teacher_layers": None}), size.decoder_layers, decoder_layers
            )
        if s.teacher_layers is not None and family == "seq2seq":
            raise SpecError(
                "student.teacher_layers: not supported for seq2seq; choose student.init"
            )
        spec = spec.model_copy(
            update={"student": s.model_copy(update={"decoder_layers": decoder_layers})}
        )
        check_attention_objective(spec, used, tc, student_model_config(spec, tc))
        return spec

    def _check_on_policy(self, spec, kind: str, used: set[str], teacher_has_head: bool) -> None:
        """Where `objective.on_policy` applies: a distill stage whose objective has a
        divergence to train the samples on, prompts to sample from, room for the samples,
        and a live teacher to score them."""
        o, family = spec.objective, self.name
        if kind != "distill":
            raise SpecError(
                f"objective.on_policy: needs a distill stage (a {kind} stage trains on its data)"
            )
        if teacher_has_head:
            raise SpecError(
                "objective.on_policy: the teacher has a task head; on-policy distillation "
                "scores the student's samples with a language-model teacher"
            )
        if not used & ON_POLICY_LOSSES:
            raise SpecError(
                f"objective.on_policy: trains the student's samples on a divergence from the "
                f"teacher; objective.weights {sorted(used)} has none (add one of "
                f"{sorted(ON_POLICY_LOSSES)})"
            )
        if family == "seq2seq" and spec.task is None:
            raise SpecError(
                "objective.on_policy: no prompts: a seq2seq teacher needs a seq2seq task (each "
                "source is a prompt); plain text trains by text infilling, which has none"
            )
        n, length = o.on_policy.max_new_tokens, spec.data.max_length
        if n >= length + (family == "seq2seq"):
            where = "its target" if family == "seq2seq" else "prompt and sample together"
            raise SpecError(
                f"objective.on_policy.max_new_tokens: {n} does not fit data.max_length "
                f"{length} ({where})"
            )
        if spec.teacher.cache.mode == "required":
            raise SpecError(
                "teacher.cache.mode: required, but objective.on_policy scores the student's "
                "new samples with the live teacher every on-policy step (no cache holds "
                "them); use mode auto (the run then bypasses the cache) or off"
            )

    def _check_cross_tokenizer(self, spec, used: set[str]) -> None:
        """The student tokenizes the text itself: a causal student trains on the LM loss and
        ULD (target positions aligned by their order in each tokenization); losses that
        compare one vocabulary token by token are refused, as is any seq2seq student."""
        name = spec.student.name
        if self.name != "causal":
            raise SpecError(
                f"student.name: the student's tokenizer ({name}) differs from the teacher's; a "
                "seq2seq student needs the teacher's tokenizer (cross-tokenizer ULD is for "
                "causal teachers)"
            )
        if attention := sorted(used & ATTENTION_LOSSES):
            raise SpecError(
                f"objective.weights: {attention} compare self-attention position by position, "
                f"but the student's tokenizer ({name}) differs from the teacher's; use "
                f"{sorted(CROSS_TOKENIZER_LOSSES)}"
            )
        shared = sorted(used - CROSS_TOKENIZER_LOSSES)
        if shared:
            raise SpecError(
                f"objective.weights: {shared} compare next-token distributions over one "
                f"vocabulary, but the student's tokenizer ({name}) differs from the teacher's; "
                f"use {sorted(CROSS_TOKENIZER_LOSSES)}"
            )

    def output_config(self, spec, kind, teacher_config):
        if kind in ("finetune", "pretrain"):
            return teacher_config
        return student_model_config(spec, teacher_config)

    # -- training ---------------------------------------------------------------------------

    def trainable(
        self, spec, teacher, tokenizer, *, kind="distill", previous_student=None, gather=no_gather
    ):
        spec = self.with_default_objective(spec, kind)
        if kind == "finetune":
            student = copy.deepcopy(teacher).requires_grad_(True).train()
        elif kind == "pretrain":
            student = self.auto_class.from_config(teacher.config).train()
        elif previous_student is not None:
            student = self.auto_class.from_pretrained(previous_student).train()
        elif spec.student.init == PRETRAINED:
            student = load_pretrained_student(spec, self.auto_class)
        else:
            student = build_student(
                teacher,
                student_size(spec),
                init=spec.student.init,
                teacher_layers=spec.student.teacher_layers,
                seed=spec.training.seed,
                auto_class=self.auto_class,
                gather=gather,
            ).train()
        if spec.student.freeze_word_embeddings and kind == "distill":
            freeze_word_embeddings(student)
        o = spec.objective
        settings = TokenSettings(
            temperature=o.temperature,
            jsd_beta=o.jsd_beta,
            num_chunks=num_chunks(spec.training.batch_size, spec.data.max_length, o.logit_chunk),
            attention=attention_settings(
                spec, student.config, teacher.config, causal=self.name == "causal"
            ),
        )
        ids = BatchIds.from_model(teacher.config, tokenizer, noise_ratio=o.noise_ratio)
        return GenerativeDistillationModel(student, TokenObjective(o.weights, settings), ids)

    def batch_functions(self, tokenizer, teacher_tokenizer=None):
        """Token ids of the text (and targets); with a `teacher_tokenizer` (a causal student
        with its own tokenizer) the teacher's own ids of the same text too (`teacher_*`)."""
        if teacher_tokenizer is None:
            return tokenize_generative, generative_collate(tokenizer)
        tokenize = functools.partial(
            tokenize_for_both, teacher_tokenizer=teacher_tokenizer, by=tokenize_generative
        )
        return tokenize, collate_for_both(tokenizer, teacher_tokenizer, by=generative_collate)

    def prepare_batch(self, model, batch, generator):
        """Seq2seq inputs: text infilling for plain text, decoder inputs for pairs."""
        if self.name == "seq2seq":
            return prepare_seq2seq_batch(batch, model.batch_ids, generator)
        return batch

    def on_policy_batch(
        self, model, batch, spec, *, step, stream=(), tokenizer=None, teacher_tokenizer=None
    ):
        """GKD: on a step drawn on-policy (`generative.on_policy_step`, from the seed and the
        step) the student's own continuations of the batch's prompts
        (`generative.sample_continuations`), re-tokenized for a teacher with another
        tokenizer (`with_teacher_tokens`); else the batch itself."""
        seed, o = spec.training.seed, spec.objective
        if not on_policy_step(seed, step, o.on_policy_fraction):
            return batch
        p = o.on_policy
        settings = OnPolicySettings(p.max_new_tokens, p.temperature, p.top_p, spec.data.max_length)
        sampled = sample_continuations(
            model.student,
            batch,
            model.batch_ids,
            settings,
            seed=sampling_seed(seed, step, *stream),
        )
        if teacher_tokenizer is None:
            return sampled
        return with_teacher_tokens(sampled, tokenizer, teacher_tokenizer, spec.data.max_length)

    @torch.no_grad()
    def teacher_outputs(self, model, teacher, teacher_head, batch):
        """The teacher's final hidden states on its own token ids (`teacher_view`) and its
        LM head (logits are built per chunk in the loss, so no [tokens, vocab] tensor of
        the teacher is kept whole), plus the Q/K/V of the layer attention terms read. A
        served teacher (`teacher.placement: service`) returns the hidden states and Q/K/V;
        its LM head is `teacher_head`, kept on this worker (`served_teacher_head`)."""
        if not model.objective.needs_teacher:
            return None
        layers = model.objective.teacher_qkv_layers
        if isinstance(teacher, RemoteTeacher):
            out = teacher.outputs(teacher_view(batch), qkv_layers=layers)
            out.head = teacher_head
            return out
        out = self.served_outputs(teacher, None, teacher_view(batch), qkv_layers=layers)
        out.head = lm_head(teacher)
        return out

    @torch.no_grad()
    def served_outputs(self, teacher, teacher_head, view, *, qkv_layers=(), inputs_embeds=None):
        """The final hidden states of the LM positions and the Q/K/V of `qkv_layers`; the
        [tokens, vocab] logits are left to whoever holds the LM head."""
        with capture_qkv(teacher, [layer - 1 for layer in qkv_layers]) as captured:
            hidden = lm_hidden(teacher, view)
        qkv = {layer + 1: value for layer, value in captured.items()}
        return ModelOutputs(hidden=(hidden,), pooled=hidden.new_zeros(0), qkv=qkv)

    def served_teacher_head(self, module, keep):
        """The LM head of a served teacher: its output embeddings (vocabulary x width, tied
        to the input embeddings in most LMs) read from the checkpoint alone, so each worker
        turns the hidden states the service returns into full-vocabulary logits per chunk,
        exactly as with the teacher in the worker, and no [tokens, vocab] tensor travels."""
        keep(list(module.get_output_embeddings().parameters()))
        return OutputHead(module)

    def cache_plan(self, spec, teacher_config, columns):
        o = self.with_default_objective(spec, "distill").objective
        reason = bypass_reason(
            o.weights,
            mixup=False,
            infilling=self.name == "seq2seq" and "labels" not in columns,
            sequence_kd=o.sequence_kd is not None,
            on_policy=o.on_policy_fraction > 0,
        )
        if reason:
            return None, reason
        c = spec.teacher.cache
        plan = lm_plan_for(o.weights, c.topk, o.temperature, targets=c.targets, samples=c.samples)
        return (None, "the objective reads no teacher output") if plan.empty else (plan, None)

    def cache_rows(self, teacher, teacher_head, tokenizer, batch, plan):
        if self.name == "seq2seq":  # pairs: decoder inputs only (no noise, so deterministic)
            ids = BatchIds.from_model(teacher.config, tokenizer)
            batch = prepare_seq2seq_batch(batch, ids, torch.Generator())
        hidden, targets = target_hidden(teacher, batch)
        seeds = row_seeds(batch["input_ids"], batch["attention_mask"], targets)
        return lm_rows(hidden, targets, lm_head(teacher), plan, seeds=seeds)

    def cached_outputs(self, cache, split, index, batch, dtype):
        targets = batch["labels"] if self.name == "seq2seq" else causal_targets(batch)
        return cache.lm_outputs(split, index, targets)

    # -- export -----------------------------------------------------------------------------

    def export(self, model, tokenizer, folder, *, max_length, st_teacher):
        student = type(model.student)(model.student.config)
        student.load_state_dict(
            {k: v.detach().float().cpu() for k, v in model.student.state_dict().items()}
        )
        student.eval()
        student.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return probe_logits(student, tokenizer, PROBE_TEXTS, max_length)

    def student_from_state(self, spec, teacher_config, state):
        student = self.auto_class.from_config(student_model_config(spec, teacher_config))
        load_state(
            student,
            {k[len(STUDENT_PREFIX) :]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)},
        )
        settings = TokenSettings()
        ids = BatchIds(seq2seq=self.name == "seq2seq", pad=0)
        return GenerativeDistillationModel(student.eval(), TokenObjective({}, settings), ids)

    # -- report -----------------------------------------------------------------------------

    def evaluate(self, spec, teacher_dir, student_dir, eval_rows, probe, speed=None):
        # `speed` is an encoder's (sentences/s from the latency rounds): generation is
        # timed here, in new tokens/s.
        teacher = self.load_model(teacher_dir).eval()
        student = self.auto_class.from_pretrained(student_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(student_dir)
        # Each model reads text through its own tokenizer (they differ for a student with
        # its own, `student.init: pretrained`).
        own = {"teacher": AutoTokenizer.from_pretrained(teacher_dir), "student": tokenizer}
        e, max_len = spec.evaluation, spec.data.max_length
        rows = {"text": list(eval_rows["text"])}
        if "target" in eval_rows.column_names:
            rows["target"] = list(eval_rows["target"])
        export_diff = float(
            (probe_logits(student, tokenizer, PROBE_TEXTS, max_len) - probe).abs().max()
        )
        models = {"teacher": teacher, "student": student}
        texts = (rows["text"] * (e.throughput_texts // max(len(rows["text"]), 1) + 1))[
            : e.throughput_texts
        ]
        speed = generation_throughput(
            models,
            own,
            texts,
            new_tokens=e.generation_length,
            rounds=e.throughput_rounds,
            batch_size=e.batch_size,
        )
        t_params, s_params = count_parameters(teacher), count_parameters(student)
        t_size, s_size = self.size(teacher.config), self.size(student.config)
        return {
            "teacher": {
                "name": spec.teacher.name,
                "family": self.name,
                "parameters": t_params,
                "layers": t_size.layers,
                "decoder_layers": t_size.decoder_layers,
                "hidden": t_size.hidden,
            },
            "student": {
                "parameters": s_params,
                "layers": s_size.layers,
                "decoder_layers": s_size.decoder_layers,
                "hidden": s_size.hidden,
                "heads": s_size.heads,
                "ffn": s_size.ffn,
                "init": spec.student.init,
                "kind": spec.student.kind,
                **on_policy_record(spec),
            },
            "size": {
                "teacher_parameters": t_params,
                "student_parameters": s_params,
                "compression": t_params / s_params,
            },
            "quality": self._quality(spec, models, own, rows),
            "task": self._task(spec, teacher, student, tokenizer, rows),
            "speed": {
                "unit": "tokens/s",
                "teacher": speed["teacher"],
                "student": speed["student"],
                "speedup": speed["student"] / speed["teacher"],
                "texts": len(texts),
                "new_tokens": e.generation_length,
                "batch_size": e.batch_size,
                "threads": torch.get_num_threads(),
            },
            "export_check": {
                "max_abs_diff": export_diff,
                "probe_texts": len(PROBE_TEXTS),
                "compared": "LM logits",
            },
        }

    def _quality(self, spec, models: dict, own: dict, rows: dict) -> dict:
        """Held-out perplexity per token; across tokenizers (whose tokens differ) per
        character of the same text, each model scoring its own tokens of it."""
        e, max_len = spec.evaluation, spec.data.max_length
        if tokenizers_differ(own["teacher"], own["student"]):
            metric = "char_perplexity"
            texts = shared_prefixes(rows["text"], list(own.values()), max_len)
            score = {
                who: char_perplexity(
                    m, own[who], texts, max_length=max_len, batch_size=e.batch_size
                )
                for who, m in models.items()
            }
        else:
            metric = "perplexity"
            score = {
                who: perplexity(
                    m,
                    own[who],
                    rows,
                    max_length=max_len,
                    batch_size=e.batch_size,
                    noise_ratio=spec.objective.noise_ratio,
                    seed=spec.training.seed,
                )
                for who, m in models.items()
            }
        return {
            "metric": metric,
            "split": "held-out",
            "n": len(rows["text"]),
            "teacher": score["teacher"],
            "student": score["student"],
            "retention": score["teacher"] / score["student"],
        }

    def _task(self, spec, teacher, student, tokenizer, rows) -> dict | None:
        """BLEU and chrF of greedy generations against the references (seq2seq tasks)."""
        if self.name != "seq2seq" or "target" not in rows:
            return None
        e = spec.evaluation
        scores = {
            who: bleu_chrf(
                generate_texts(
                    m,
                    tokenizer,
                    rows["text"],
                    max_new_tokens=e.generation_length * 2,
                    batch_size=e.batch_size,
                    max_length=spec.data.max_length,
                ),
                rows["target"],
            )
            for who, m in (("teacher", teacher), ("student", student))
        }
        return {
            "metric": "bleu",
            "n": len(rows["text"]),
            "teacher": scores["teacher"]["bleu"],
            "student": scores["student"]["bleu"],
            "retention": scores["student"]["bleu"] / scores["teacher"]["bleu"]
            if scores["teacher"]["bleu"]
            else None,
            "chrf": {who: s["chrf"] for who, s in scores.items()},
        }


def on_policy_record(spec) -> dict:
    """The report's `student.on_policy` (with `objective.on_policy`): its settings and the
    steps that trained on the student's samples (the draw is a function of the seed and
    the step, so this is what every rank did)."""
    p = spec.objective.on_policy
    if p is None:
        return {}
    steps = spec.training.steps or 0
    drawn = sum(on_policy_step(spec.training.seed, s, p.fraction) for s in range(1, steps + 1))
    return {
        "on_policy": {
            **p.model_dump(),
            "steps": drawn,
            "of_steps": steps,
            "fraction_of_steps": drawn / steps if steps else None,
        }
    }


class OutputHead(nn.Module):
    """A teacher's LM head (`lm_head`) as a module of its own: the worker moves and casts it
    like a task head, while the rest of the teacher stays a weightless skeleton."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.embeddings = model.get_output_embeddings()
        self.head = lm_head(model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)
