"""The job spec's schema: pydantic models of every section, validated strictly.

Every model forbids unknown fields, so a typo fails on load with the field's dotted path.
Secrets never live here: credentials come from the environment (see
`distill_core/spec_loading.py: redacted`). Reading YAML and `--set key=value` overrides into
a `JobSpec`, and writing one back, is `distill_core/spec_loading.py`; the smoke mode is
`distill_core/smoke.py`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from distill.core.packaged_teacher import PACKAGED_TEACHER

# Counts and sizes end up in torch, numpy and Ray as C integers: a 32-bit bound turns a
# mistyped 1e30 into a spec error instead of an overflow on a worker.
MAX_COUNT = 2**31 - 1
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
# numpy's and `datasets`' shuffles take seeds in [0, 2**32); torch takes those too.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class SpecError(ValueError):
    """Bad user input; the message is one line naming the field or file."""


class Strict(BaseModel):
    """Base of every spec model: unknown fields are errors, and a float must be finite
    (`.inf` or `.nan` would train on nan, or overflow when steps are derived from it)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )


class Zero3TeacherSpec(Strict):
    """DeepSpeed stage-3 settings of a partitioned teacher: how far ahead its forward
    gathers the next layers' parameters, so gathers overlap the current layer's compute."""

    # Elements fetched ahead of the layer being run (stage3_prefetch_bucket_size).
    prefetch_bucket_size: PositiveInt = 50_000_000
    # Gathered elements alive at once, and how soon a gathered parameter must be reused to be
    # kept: a teacher's forward uses each layer once per step, so anything kept between
    # steps is a second copy of the teacher. DeepSpeed's defaults (1e9 each) keep most of a
    # 1B teacher gathered; these bound the gathered memory to about one prefetch window.
    max_live_parameters: PositiveInt = 100_000_000
    max_reuse_distance: Annotated[int, Field(ge=0)] = 0
    param_persistence_threshold: Annotated[int, Field(ge=0)] = 100_000  # smaller stay whole
    # The partitions live in CPU memory and only the gathered layers visit the GPU
    # (DeepSpeed `offload_param`): a teacher larger than the GPUs' memory. No effect on CPU.
    offload: bool = False


class TeacherInferenceSpec(Strict):
    """The Ray Data job that builds a teacher-output cache: an actor pool of teacher
    replicas, each loaded once at `teacher.dtype`, each call writing one cache shard."""

    actors: PositiveInt = 1
    cpus_per_actor: PositiveInt = 1
    gpus_per_actor: Annotated[float, Field(ge=0)] = 0.0
    batch_size: PositiveInt = 64  # rows per teacher forward
    rows_per_shard: PositiveInt = 1024  # rows per cache shard (one actor call)


TOPK_DEFAULT = 64
SAMPLES_DEFAULT = 12


class TeacherCacheSpec(Strict):
    """The teacher-output cache (`distill.core.cache_format`). off: the teacher runs live
    in every step; auto: use a complete cache of the same key, else build one with Ray Data
    before training; required: use a complete cache or stop before training."""

    mode: Literal["off", "auto", "required"] = "off"

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off_is_false(cls, mode):
        return "off" if mode is False else mode  # YAML 1.1 reads a bare `off` as false

    # A folder or s3:// prefix holding caches by key (shared between runs and sweeps);
    # None: the run's or sweep's own storage.
    location: str | None = None
    # LM teachers: what the cache keeps per target token. topk: the teacher's k largest
    # logits, the rest lumped into one bucket (biased: the tail's shape is lost); sampled:
    # `samples` token ids drawn from the teacher's distribution with their log-probabilities,
    # an unbiased estimate of the forward KL and its gradient (Anshumann et al., ACL 2025,
    # "Sparse Logit Sampling"; lm_kl only).
    targets: Literal["topk", "sampled"] = "topk"
    # targets topk: logits kept per target token (8k + 4 bytes per token; 64 is 0.8% of a
    # 32k-vocabulary fp16 distribution).
    topk: Annotated[int, Field(ge=1, le=4096)] = TOPK_DEFAULT
    # targets sampled: draws per target token, with replacement (8S bytes per token: 96 at
    # the default 12).
    samples: Annotated[int, Field(ge=1, le=4096)] = SAMPLES_DEFAULT

    # Fields are validated in order, so `targets` is known here; a default is never
    # validated, and a resolved config (every field written out) re-reads without error.
    @field_validator("topk")
    @classmethod
    def _topk_is_for_topk_targets(cls, topk: int, info: ValidationInfo) -> int:
        if info.data.get("targets") == "sampled" and topk != TOPK_DEFAULT:
            raise ValueError(
                f"{topk} logits per token apply to targets: topk; targets: sampled keeps "
                "teacher.cache.samples draws instead (remove topk, or set targets: topk)"
            )
        return topk

    @field_validator("samples")
    @classmethod
    def _samples_are_for_sampled_targets(cls, samples: int, info: ValidationInfo) -> int:
        if info.data.get("targets") == "topk" and samples != SAMPLES_DEFAULT:
            raise ValueError(
                f"{samples} draws per token apply to targets: sampled; targets is topk, which "
                "keeps teacher.cache.topk logits instead (set targets: sampled, or remove samples)"
            )
        return samples


class TeacherServiceSpec(Strict):
    """The teacher as one shared Ray Serve deployment (`teacher.placement: service`,
    `cluster/teacher_service.py`): every worker of the run, and every trial of a sweep,
    queries it; requests from all of them are batched together."""

    # Attach to this running deployment (another run's or sweep's, same teacher) instead of
    # starting one; None: the run (or sweep) starts its own and deletes it at the end.
    name: (
        Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")] | None
    ) = None
    replicas: Annotated[int, Field(gt=0, le=1024)] = 1
    # Fractions allowed; 0 reserves none (the replica shares the workers' CPUs: a laptop).
    cpus_per_replica: Annotated[float, Field(ge=0, le=1024)] = 1.0
    gpus_per_replica: Annotated[float, Field(ge=0, le=64)] = 0.0
    max_batch_size: PositiveInt = 256  # rows per teacher forward, gathered across callers
    batch_wait_timeout_s: Annotated[float, Field(ge=0, le=10)] = 0.01  # for a fuller batch


class TeacherSpec(Strict):
    name: str = PACKAGED_TEACHER
    # Teacher weights' precision; None: the run's (deepspeed.precision: fp32 on the CPU).
    dtype: Literal["fp32", "bf16", "fp16"] | None = None
    # Where the teacher runs. replicate: every worker holds the whole teacher; zero3: each of
    # N workers holds 1/N of its parameters (DeepSpeed ZeRO-3) and gathers a layer at a time
    # in the forward; service: one shared Ray Serve deployment that every worker (and every
    # trial of a sweep) queries (`teacher.service`); auto: replicate when it fits
    # comfortably in a worker's memory, else zero3, never service (see
    # `distill.core.teacher_plan`). Resolved before Ray starts; report.json records it.
    placement: Literal["auto", "replicate", "zero3", "service"] = "auto"
    zero3: Zero3TeacherSpec = Zero3TeacherSpec()
    service: TeacherServiceSpec = TeacherServiceSpec()
    inference: TeacherInferenceSpec = TeacherInferenceSpec()
    cache: TeacherCacheSpec = TeacherCacheSpec()

    @model_validator(mode="before")
    @classmethod
    def _partition_is_placement(cls, data):
        """`teacher.partition` (the name before `service` existed) is read as
        `teacher.placement`, with a one-line note."""
        if isinstance(data, dict) and "partition" in data:
            if "placement" in data:
                raise ValueError("give teacher.placement only (teacher.partition is its old name)")
            data = {("placement" if k == "partition" else k): v for k, v in data.items()}
            print(RENAMED_NOTE, file=sys.stderr, flush=True)
        return data


RENAMED_NOTE = "distill: note: teacher.partition is now teacher.placement (read as such)"


class LstmSpec(Strict):
    """The BiLSTM student (Tang et al., 2019; BERT->LSTM sentence approximation)."""

    embedding_dim: PositiveInt = 300
    hidden: PositiveInt = 300  # per direction; the output width is twice this
    layers: PositiveInt = 1
    pooling: Literal["mean", "max"] = "mean"
    init_embeddings: Literal["teacher_projection", "random"] = "teacher_projection"


class StudentSpec(Strict):
    kind: Literal["transformer", "lstm"] = "transformer"
    lstm: LstmSpec = LstmSpec()
    layers: PositiveInt = 3
    hidden: PositiveInt | None = None  # None: the teacher's width
    heads: PositiveInt | None = None
    # Grouped-query attention (Llama-style teachers): key/value heads; None keeps the
    # teacher's group size (heads per key/value head).
    kv_heads: PositiveInt | None = None
    ffn: PositiveInt | None = None
    # `pretrained`: start from the model in `student.name` (a folder with its own config,
    # weights and tokenizer); its shape is its own, so layers/hidden/heads/ffn do not apply.
    init: Literal[
        "random", "every_other_layer", "uniform_map", "first_k", "width_slice", "pretrained"
    ] = "every_other_layer"
    name: str | None = None  # the pretrained student's folder (or hub id), with init: pretrained
    teacher_layers: list[int] | None = None  # explicit 0-based teacher layer per student layer
    # How width_slice ranks the teacher's hidden channels, heads and FFN neurons: by its
    # weights alone, or by its activations on calibration text (512 of the packaged English
    # Wikipedia sentences, `builtin:wiki-sentences`).
    importance: Literal["weights", "activations"] = "weights"
    # Seq2seq (BART-style) students: decoder depth; None = `layers` (encoder depth).
    decoder_layers: PositiveInt | None = None
    # Keep the teacher's token embeddings frozen. None: freeze when they are copied from the
    # teacher at full width (they are then already trained; updating the 30k x H table
    # dominates the optimizer step on CPU).
    freeze_word_embeddings: bool | None = None

    @field_validator("importance")
    @classmethod
    def _importance_ranks_a_width_slice(cls, importance: str, info: ValidationInfo) -> str:
        init = info.data.get("init")
        if importance == "activations" and init is not None and init != "width_slice":
            raise ValueError(f"activations ranks what init: width_slice keeps; init is {init}")
        return importance

    @field_validator("heads")
    @classmethod
    def _heads_divide_hidden(cls, heads: int | None, info: ValidationInfo) -> int | None:
        hidden = info.data.get("hidden")
        if heads is not None and hidden is not None and hidden % heads:
            raise ValueError(f"{heads} does not divide student.hidden {hidden}")
        return heads


class TaskSpec(Strict):
    """A supervised task: a linear head over the mean-pooled sentence vector, or (`seq2seq`,
    encoder-decoder teachers) source text -> `target_column` text."""

    type: Literal["classification", "regression", "seq2seq"]
    num_labels: PositiveInt = 2  # regression: 1; unused by seq2seq
    label_column: str = "label"
    target_column: str = "target"  # seq2seq: the column holding the target text

    @field_validator("num_labels")
    @classmethod
    def _regression_has_one_output(cls, n: int, info: ValidationInfo) -> int:
        if info.data.get("type") == "seq2seq":
            return n
        if info.data.get("type") == "regression" and n != 1:
            raise ValueError(f"regression has one output, got {n}")
        if info.data.get("type") == "classification" and n < 2:
            raise ValueError(f"classification needs >= 2 labels, got {n}")
        return n


class SourceSpec(Strict):
    path: str
    format: Literal[
        "auto", "csv", "tsv", "json", "jsonl", "parquet", "txt", "sts", "hub", "builtin"
    ] = "auto"
    split: str = "train"
    config_name: str | None = None


class DataSpec(Strict):
    # One source, or several whose rows are concatenated (e.g. SST-2 and STS-B sentences).
    train: list[SourceSpec] = [SourceSpec(path="builtin:docstrings")]
    eval: SourceSpec | None = None  # a held-out source; else `eval_fraction` of train
    eval_fraction: float = Field(0.05, gt=0.0, lt=0.5)
    text_columns: list[str] | None = (
        None  # None: guess (text/sentence/content or the only string column)
    )
    max_length: PositiveInt = 64
    max_train_samples: PositiveInt | None = None
    max_eval_samples: PositiveInt = 512

    @field_validator("train", mode="before")
    @classmethod
    def _one_source_is_a_list_of_one(cls, train):
        if isinstance(train, (dict, SourceSpec)):
            return [train]
        if isinstance(train, list) and not train:
            raise ValueError("needs at least one source")
        return train

    @property
    def train_sources(self) -> list[SourceSpec]:
        return list(self.train)


class MixupSpec(Strict):
    """MixKD (Liang et al., 2021): each step also trains on a mixed copy of the batch."""

    alpha: Annotated[float, Field(gt=0)] = 0.4  # lambda ~ Beta(alpha, alpha)
    weight: Annotated[float, Field(ge=0)] = 1.0  # of the objective on the mixed batch


class SequenceKdSpec(Strict):
    """Sequence-level KD (Kim & Rush, 2016), generated once and cached in the run's
    storage: a seq2seq student trains on the teacher's outputs for the training sources
    instead of the references; a causal student on each training row's first
    `prefix_fraction` of tokens (the teacher's) followed by the teacher's continuation,
    as text (so a student with another tokenizer reads it with its own)."""

    num_beams: PositiveInt = 4  # 1: greedy
    max_new_tokens: PositiveInt = 64
    batch_size: PositiveInt = 32
    prefix_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5  # causal teachers only


class OnPolicySpec(Strict):
    """On-policy distillation (GKD, Agarwal et al. 2024; MiniLLM, Gu et al. 2024): on a
    `fraction` of the steps (drawn from the seed and the step, alike on every rank) the
    student samples continuations of the batch's prompts and trains on the objective's
    divergences over its own tokens, scored by the teacher; the other steps train on the
    data as without it. Prompts: a `prompt` column, else each text's first
    `sequence_kd.prefix_fraction` (0.5); a seq2seq task's source."""

    fraction: Annotated[float, Field(ge=0, le=1)] = 0.0  # GKD's lambda; 0: off
    temperature: Annotated[float, Field(gt=0)] = 1.0  # of the student's sampling
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0  # nucleus sampling; 1: the whole vocabulary
    max_new_tokens: PositiveInt = 32  # sampled per prompt (the same on every rank)


class ObjectiveSpec(Strict):
    # Loss name -> weight. None: the teacher family's default (encoders: hidden_mse +
    # pooled_cosine; causal and seq2seq: lm_kl + lm; a causal teacher's student with another
    # tokenizer: lm + uld; finetune stages: their label loss), filled in by preflight, so the
    # resolved config names the losses that ran.
    weights: dict[str, Annotated[float, Field(ge=0.0)]] | None = None
    layer_map: Literal["uniform", "last"] | list[int] = "uniform"
    temperature: Annotated[float, Field(gt=0)] = 1.0  # logit_kl, lm_kl & co, uld
    # MiniLM / MiniLMv2 (every family with Q/K/V projections): the teacher layer (1-based;
    # seq2seq: of the encoder) whose self-attention is distilled into the student's last
    # layer; None = the teacher's last layer.
    attention_layer: PositiveInt | None = None
    relation_heads: PositiveInt | None = None  # MiniLMv2; None = the teacher's heads
    mixup: MixupSpec | None = None
    mlm_probability: Annotated[float, Field(gt=0, lt=1)] = 0.15  # the `mlm` loss's masking
    # Generative teachers (lm_kl / lm_reverse_kl / lm_jsd / uld / lm):
    jsd_beta: Annotated[float, Field(gt=0, lt=1)] = 0.5  # lm_jsd's mixture weight
    logit_chunk: PositiveInt = 2048  # tokens per chunk of [tokens, vocab] logits
    noise_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.3  # seq2seq text infilling (BART)
    sequence_kd: SequenceKdSpec | None = None  # train on the teacher's generations
    on_policy: OnPolicySpec | None = None  # train on the student's own samples (GKD)

    @property
    def on_policy_fraction(self) -> float:
        """The fraction of steps that sample from the student (0 without `on_policy`)."""
        return self.on_policy.fraction if self.on_policy is not None else 0.0


class SpikeSpec(Strict):
    """`training.stop_on_spike` (`distill.core.spike_guard`): stop when the loss (averaged
    over the ranks) stays above `factor` x its running median of the last `window` healthy
    steps for `steps` steps in a row. The defaults only catch a loss two orders of magnitude
    above its usual value for 20 steps: no healthy run does that, a diverged one does."""

    factor: Annotated[float, Field(gt=1)] = 100.0
    steps: PositiveInt = 20
    window: Annotated[int, Field(ge=2, le=100_000)] = 50


class TrainingSpec(Strict):
    steps: PositiveInt | None = 100
    epochs: Annotated[float, Field(gt=0)] | None = None  # overrides steps when set
    batch_size: PositiveInt = 16  # per worker
    learning_rate: Annotated[float, Field(gt=0)] = 2e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_steps: Count = 10
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    seed: Seed = 42
    # Micro-batches per optimizer step (each of `batch_size` rows per worker); `steps`
    # counts optimizer steps, so a step reads batch_size x workers x this many rows.
    gradient_accumulation_steps: PositiveInt = 1
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 50
    checkpoint_every: PositiveInt = 50
    keep_checkpoints: PositiveInt = 2
    # A diverging run stops after this many consecutive steps whose loss (any part) or
    # gradient norm is not finite; those steps update nothing, and the newest checkpoint
    # stays the last finite state.
    stop_after_nonfinite: PositiveInt = 3
    stop_on_spike: SpikeSpec | None = SpikeSpec()  # null: off


class ScalingSpec(Strict):
    num_workers: PositiveInt = 2
    cpus_per_worker: PositiveInt = 1
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: Count = 0
    # Memory each worker may use (Ray's `memory` resource, GB); None: this machine's memory
    # shared by the workers (a local run) or unknown (a remote cluster). Preflight sizes the
    # teacher's placement against it.
    memory_per_worker_gb: Annotated[float, Field(gt=0)] | None = None


class DeepSpeedSpec(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    offload_optimizer: bool = False
    # ZeRO-3 only: the student's parameters live in CPU memory between uses (offload_param).
    offload_parameters: bool = False
    # Your own DeepSpeed config, a JSON/YAML file or an inline mapping, deep-merged over the
    # one distill generates (`distill.cluster.deepspeed_config`). Fields distill owns (batch
    # sizes, accumulation, ZeRO stage, precision, clipping) must agree with the spec's.
    config: str | dict[str, Any] | None = None


class EvaluationSpec(Strict):
    sts_path: str | None = None  # STS Benchmark-format pairs; quality = Spearman
    max_sts_pairs: PositiveInt | None = None
    throughput_texts: PositiveInt = 256
    throughput_rounds: PositiveInt = 3
    generation_length: PositiveInt = 32  # generative teachers: new tokens per prompt (tokens/s)
    batch_size: PositiveInt = 32
    # Serving speed in report.json (encoders): batch-1 latency p50/p95 and batch-32
    # throughput of teacher and student, interleaved. onnx: PyTorch, ONNX fp32 and ONNX int8;
    # pytorch: PyTorch only; none: not measured.
    latency: Literal["onnx", "pytorch", "none"] = "onnx"
    latency_rounds: PositiveInt = 100  # batch-1 calls per model and backend
    # Threads of both backends while timing (torch and onnxruntime intra-op); None: torch's
    # current count. 1 gives stable numbers on a machine that other jobs load.
    latency_threads: PositiveInt | None = None


# botocore takes a region that is one DNS label.
_REGION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def url_problem(url: str) -> str | None:
    """Why `url` is not an `http(s)://host[:port]` address, or None when it is one."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL, got {url!r}"
    if not parts.hostname:
        return f"{url!r} has no host (expected http://HOST[:PORT])"
    if port == 0:
        return f"{url!r}: port 0 is not a port"
    return None


class S3Spec(Strict):
    """Where an `s3://` output lives; credentials come from the AWS chain, never from here."""

    endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL(_S3) or AWS; e.g. http://minio:9000
    region: str | None = None  # None: AWS_REGION / AWS_DEFAULT_REGION / profile
    addressing_style: Literal["auto", "path", "virtual"] = "auto"  # MinIO: path
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: PositiveInt = 10  # per request (boto3 and pyarrow), exponential backoff

    @field_validator("region")
    @classmethod
    def _region_is_a_name(cls, region: str | None) -> str | None:
        if region is not None and not _REGION.match(region):
            raise ValueError(f"expected a region name such as eu-west-1, got {region!r}")
        return region

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, url: str | None) -> str | None:
        problem = url_problem(url) if url is not None else None
        if problem:
            raise ValueError(problem)
        return url


class MlflowSpec(Strict):
    """MLflow tracking through Ray's `setup_mlflow` (runs) / `MLflowLoggerCallback` (sweeps).
    Credentials come from MLflow's environment (MLFLOW_TRACKING_TOKEN, _USERNAME, _PASSWORD),
    never from here."""

    # None: MLFLOW_TRACKING_URI of the driver, else SQLite `mlflow.db` in a local run/sweep folder.
    tracking_uri: str | None = None
    experiment: str | None = None  # None: the run's or sweep's output.name

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        if uri and urlsplit(uri).password is not None:
            raise ValueError(
                "holds a password; give it in MLFLOW_TRACKING_PASSWORD (never in a config)"
            )
        return uri


class WandbSpec(Strict):
    """Weights & Biases through Ray's `setup_wandb` (runs) / `WandbLoggerCallback` (sweeps).
    The API key comes from WANDB_API_KEY or `wandb login`, never from here."""

    project: str = Field(min_length=1)
    entity: str | None = None
    group: str | None = None
    mode: Literal["online", "offline"] = "online"  # offline: files under the run's wandb/


class TrackingSpec(Strict):
    """Experiment trackers beside metrics.jsonl and TensorBoard (which are always written)."""

    mlflow: MlflowSpec | None = None
    wandb: WandbSpec | None = None


class OutputSpec(Strict):
    dir: str = "runs"  # a local folder or s3://bucket/prefix
    s3: S3Spec = S3Spec()
    name: str = Field("quickstart", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # How long the folder's lease lasts after each renewal (renewed every quarter of it): a
    # driver that dies, or pauses this long, loses the folder to the next writer.
    lease_ttl_s: float = Field(120.0, ge=4.0, le=86400.0)


STAGE_TEACHER_PREFIX = "stage:"  # teacher.name "stage:NAME": the model a previous stage made
STAGE_SECTIONS = ("teacher", "student", "task", "data", "objective", "training")


class StageSpec(Strict):
    """One step of a pipeline. Sections given here replace (deep-merge into) the job's own;
    `objective.weights` is replaced whole. `kind: finetune` trains a full copy of the
    teacher with a task head on labels; its output can be a later stage's teacher."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    # pretrain: trains the teacher's architecture from scratch (random init) with the
    # family's pre-training loss (`lm`): the offline stand-in for a downloaded teacher.
    kind: Literal["distill", "finetune", "pretrain"] = "distill"
    teacher: dict | None = None
    student: dict | None = None
    task: dict | None = None
    data: dict | None = None
    objective: dict | None = None
    training: dict | None = None


class JobSpec(Strict):
    teacher: TeacherSpec = TeacherSpec()
    student: StudentSpec = StudentSpec()
    task: TaskSpec | None = None
    data: DataSpec = DataSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    training: TrainingSpec = TrainingSpec()
    scaling: ScalingSpec = ScalingSpec()
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    output: OutputSpec = OutputSpec()
    tracking: TrackingSpec = TrackingSpec()
    stages: list[StageSpec] = []

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[StageSpec]) -> list[StageSpec]:
        names = [s.name for s in stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {dupes}")
        return stages

    def map_paths(self, fn: PathFn) -> JobSpec:
        """A copy with every field that may name a local file or folder (`PATH_FIELDS`, in
        the job and in each stage's sections) passed through `fn(value, field)`."""
        return map_spec_paths(self, fn)


def format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    # Drop union-branch tags such as "literal['uniform','last']" from the location.
    # and model-class tags of unions ("SourceSpec").
    parts = [
        str(p)
        for p in first["loc"]
        if isinstance(p, int) or (str(p).isidentifier() and not str(p)[0].isupper())
    ]
    loc = ".".join(parts) or "config"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "literal_error":
        msg = f"got {first['input']!r}; {msg.lower()}"
    return f"{loc}: {msg}"


# -- fields that name local files ----------------------------------------------------------

# Every spec field whose value may be a local file or folder, declared once for all that
# rewrite paths: preflight (made absolute), `distill submit` (bundled into the job's
# working dir) and a submitted job's nodes (rebased onto their copy of it). Dotted paths
# below the job, or below a stage (whose sections are raw dicts); `*` is each list item.
PATH_FIELDS = (
    "teacher.name",
    "teacher.cache.location",
    "student.name",
    "data.train.*.path",
    "data.eval.path",
    "evaluation.sts_path",
    "deepspeed.config",
)
# Values that never name a local path, whatever is on disk: builtin architectures and
# corpora, another stage's model, object storage, and the packaged teacher.
_NOT_LOCAL_PREFIXES = ("builtin:", STAGE_TEACHER_PREFIX, "s3://")

PathFn = Callable[[str, str], str]
"""`fn(value, field)` -> the new value; `field` is dotted (`stages.1.data.train.0.path`).
A value may also be a hub name (a model or dataset id): `fn` returns it unchanged when
nothing is on disk there."""


def may_name_local_path(value: object) -> bool:
    """True for a non-empty string that could be a local file or folder by its form."""
    return (
        isinstance(value, str)
        and bool(value)
        and value != PACKAGED_TEACHER
        and not value.startswith(_NOT_LOCAL_PREFIXES)
    )


def _child(node, key: str):
    if isinstance(node, BaseModel):
        return getattr(node, key) if key in type(node).model_fields else None
    return node.get(key) if isinstance(node, dict) else None


def _map_at(node, parts: list[str], fn: PathFn, field: str):
    if not parts:
        return fn(node, field) if may_name_local_path(node) else node
    key, rest = parts[0], parts[1:]
    if key == "*":
        if isinstance(node, list):
            return [_map_at(item, rest, fn, f"{field}.{i}") for i, item in enumerate(node)]
        return _map_at(node, rest, fn, field)  # YAML may give one source instead of a list
    child = _child(node, key)
    if child is None:
        return node
    return _with(node, key, child, _map_at(child, rest, fn, f"{field}.{key}" if field else key))


def _with(node, key: str, old, new):
    """`node` (a model or a dict) with `key` set to `new`; `node` itself when unchanged."""
    if new == old:
        return node
    if isinstance(node, BaseModel):
        return node.model_copy(update={key: new})
    return {**node, key: new}


def _map_section_paths(node, fn: PathFn, prefix: str):
    for dotted in PATH_FIELDS:
        node = _map_at(node, dotted.split("."), fn, prefix)
    return node


def map_spec_paths(spec, fn: PathFn):
    """`PATH_FIELDS` of a spec passed through `fn`, job first, then stage by stage. `spec`
    is a `JobSpec` or the raw mapping (YAML as loaded, before validation); returns a new
    one of the same kind and leaves `spec` as it was."""
    spec = _map_section_paths(spec, fn, "")
    stages = _child(spec, "stages")
    if not isinstance(stages, list):
        return spec
    mapped = [_map_section_paths(s, fn, f"stages.{i}") for i, s in enumerate(stages)]
    return _with(spec, "stages", stages, mapped)
