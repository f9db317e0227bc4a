"""The teacher as one shared Ray Serve deployment (`teacher.placement: service`).

One deployment (`TeacherService`, `teacher.service.replicas` replicas, each with its own CPUs
or GPUs) holds the frozen teacher; every Train worker of a run, and every trial of a sweep,
sends it its micro-batches through a deployment handle and gets back exactly what the
in-worker teacher would have computed (`distill.core.outputs.ModelOutputs`: hidden states,
pooled vectors, Q/K/V of the layers the objective reads, task-head logits). MixKD's mixed
inputs travel as (partner permutation, ratio): the replica mixes the teacher's own token
embeddings as `distill.core.mixup.mixup` does in the worker, so the teacher's inputs can be
made during training and still be served.

Requests from all callers are batched with `@serve.batch` by rows
(`teacher.service.max_batch_size` rows, waiting at most `batch_wait_timeout_s`): rows are
right-padded to the batch's longest and the padding is masked, so a row's outputs do not
depend on what it was batched with (within floating-point tolerance). Serve restarts a replica
that dies; a caller retries a call the dead replica lost with a bounded backoff, so the
training step waits instead of failing, and counts the retries for the report.

The deployment is versioned by the teacher folder's content hash (as the teacher-output cache
is): a run attaching to a deployment by name (`teacher.service.name`) is refused before any
trial starts when that deployment serves another teacher.

What the replicas served is counted in one named actor per deployment (`ServiceStats`):
each replica reports its totals after every batch, so the report sums every replica that
served, including one Serve replaced (a handle call would reach one replica at random).

What a replica computes is its family's `served_outputs`: an encoder's hidden states,
pooled vectors, Q/K/V and task-head logits; a causal or seq2seq LM's final hidden states of
the LM positions (and Q/K/V), which each worker turns into full-vocabulary logits with the
teacher's LM head, kept alone on the worker (`served_teacher_head`), so no [tokens, vocab]
tensor travels and on-policy batches (the student's own samples) are served too.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import ray
import torch
from ray import serve

from distill.cluster.teacher_on_worker import state_digest
from distill.core.cache_format import folder_digest
from distill.core.mixup import mixup
from distill.core.outputs import ModelOutputs, TaskHead
from distill.core.spec import JobSpec, SpecError
from distill.core.teacher import freeze, resolve_teacher
from distill.core.teacher_plan import TORCH_DTYPES

DEPLOYMENT = "TeacherService"
APP_PREFIX = "distill-teacher-"
STATS_NAMESPACE = "distill"


@ray.remote(num_cpus=0)
class ServiceStats:
    """The totals every replica of one deployment served, by replica process."""

    def __init__(self) -> None:
        self.by_replica: dict[int, dict] = {}

    def put(self, stats: dict) -> None:
        self.by_replica[stats["pid"]] = stats

    def all(self) -> list[dict]:
        return list(self.by_replica.values())


def stats_actor(app: str):
    """The deployment's `ServiceStats` (created by whoever asks first; it lives as long as
    the deployment: `stop` ends both)."""
    return ServiceStats.options(
        name=f"stats:{app}", namespace=STATS_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


_TRIES = 8  # calls a lost replica may cost one request before the step fails
_BACKOFF_S = (0.5, 30.0)  # first wait, longest wait between tries (doubling)
_START_TIMEOUT_S = 600.0  # a deployment not running by then is refused


@dataclass(frozen=True)
class ServiceRef:
    """Which deployment serves a run's teacher (handed to every Train worker): its Serve
    application, the content hash of the teacher it serves, and whether this driver
    started it (and so deletes it at the end) or attached to it by name."""

    app: str
    digest: str
    started_here: bool
    replicas: int = 1


def app_name(spec: JobSpec, digest: str) -> str:
    return spec.teacher.service.name or f"{APP_PREFIX}{digest[:12]}"


def request_rows(requests: list[dict]) -> int:
    return sum(int(r["input_ids"].shape[0]) for r in requests)


class TeacherService:
    """One replica: the frozen teacher at `dtype` (and its task head, when the folder has
    one), answering batched requests for its outputs."""

    def __init__(
        self,
        teacher_name: str,
        dtype: str,
        threads: int,
        max_rows: int,
        wait_s: float,
        app: str | None = None,
    ) -> None:
        from transformers import AutoConfig

        from distill.core.family_registry import family_of

        folder = resolve_teacher(teacher_name)  # on this replica's node
        torch.set_num_threads(max(1, threads))
        family = family_of(AutoConfig.from_pretrained(folder))
        self.family = family
        self.teacher = freeze(family.load_model(folder, dtype=TORCH_DTYPES[dtype]))
        head = TaskHead.load(folder)
        self.head = None if head is None else freeze(head).to(dtype=TORCH_DTYPES[dtype])
        self.info_ = {
            "digest": folder_digest(folder),
            "fingerprint": state_digest(self.teacher),  # as the in-worker teacher's
            "family": family.name,
            "dtype": dtype,
            "pid": os.getpid(),
        }
        self.batch_rows: list[int] = []  # rows of every teacher forward, in order
        self.requests = 0
        self.sink = None if app is None else stats_actor(app)  # the deployment's counts
        self.outputs.set_max_batch_size(max_rows)
        self.outputs.set_batch_wait_timeout_s(wait_s)

    def info(self) -> dict:
        return dict(self.info_)

    def stats(self) -> dict:
        """What this replica has served: requests, forwards and their rows."""
        rows = self.batch_rows
        return {
            "pid": self.info_["pid"],
            "requests": self.requests,
            "forwards": len(rows),
            "rows": sum(rows),
            "max_rows": max(rows, default=0),
        }

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01, batch_size_fn=request_rows)
    async def outputs(self, requests: list[dict]) -> list[dict]:
        self.requests += len(requests)
        # The forward runs off the event loop, which meanwhile queues the next batch.
        answers = await asyncio.to_thread(self._answer, requests)
        if self.sink is not None:
            self.sink.put.remote(self.stats())  # not awaited: counting never slows a caller
        return answers

    def _answer(self, requests: list[dict]) -> list[dict]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):  # one forward per kind of request
            key = (tuple(r["qkv_layers"]), bool(r["head"]), r.get("mix") is not None)
            groups.setdefault(key, []).append(i)
        answers: list[dict | None] = [None] * len(requests)
        for (qkv_layers, head, _), members in groups.items():
            chosen = [requests[i] for i in members]
            for i, answer in zip(members, self._forward(chosen, qkv_layers, head), strict=True):
                answers[i] = answer
        return answers

    @torch.no_grad()
    def _forward(self, requests: list[dict], qkv_layers: tuple, head: bool) -> list[dict]:
        padded = _padded(requests)
        batch = {k: torch.cat([p[k] for p in padded]) for k in padded[0]}
        embeds = None
        if requests[0].get("mix") is not None:  # MixKD: each request mixed within its rows
            table = self.teacher.get_input_embeddings()
            mixed = [
                mixup(table(p["input_ids"]), p["attention_mask"], *_mix(r["mix"]))
                for p, r in zip(padded, requests, strict=True)
            ]
            embeds = torch.cat([m[0] for m in mixed])
            batch["attention_mask"] = torch.cat([m[1] for m in mixed])
        out = self.family.served_outputs(
            self.teacher,
            self.head if head else None,
            batch,
            qkv_layers=qkv_layers,
            inputs_embeds=embeds,
        )
        self.batch_rows.append(int(batch["input_ids"].shape[0]))
        hidden = torch.stack(out.hidden)  # [layers + 1, rows, length, width]
        answers, start = [], 0
        for r in requests:
            rows, own = int(r["input_ids"].shape[0]), _positions(r)
            inputs = int(r["input_ids"].shape[1])  # Q/K/V: encoder blocks of a seq2seq LM
            span = slice(start, start + rows)
            start += rows
            answers.append(  # copies: a view would send the whole batch's storage
                {
                    "hidden": hidden[:, span, :own].clone(),
                    "pooled": out.pooled[span].clone(),
                    "logits": None if out.logits is None else out.logits[span].clone(),
                    "qkv": {
                        layer: tuple(t[span, :inputs].clone() for t in qkv)
                        for layer, qkv in out.qkv.items()
                    },
                }
            )
        return answers


# The tensors a request carries, by the length they share: the encoder's (or a decoder-only
# LM's) and, for an encoder-decoder LM, the decoder's.
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_DECODER = ("decoder_input_ids", "decoder_attention_mask")
_TENSORS = _INPUTS + _DECODER


def _positions(request: dict) -> int:
    """The positions of a request's answer: its decoder's length for an encoder-decoder LM,
    else its input length."""
    ids = request["decoder_input_ids"] if "decoder_input_ids" in request else request["input_ids"]
    return int(ids.shape[1])


def _padded(requests: list[dict]) -> list[dict]:
    """Each request's tensors right-padded (padding masked out) to the longest of the batch,
    inputs and decoder inputs each to their own longest."""
    out = [{} for _ in requests]
    for group in (_INPUTS, _DECODER):
        longest = max((int(r[k].shape[1]) for r in requests for k in group if k in r), default=0)
        for request, padded in zip(requests, out, strict=True):
            for key in group:
                if key in request:
                    value = request[key]
                    extra = longest - value.shape[1]
                    padded[key] = torch.nn.functional.pad(value, (0, extra)) if extra else value
    return out


def _mix(mix) -> tuple[torch.Tensor, float]:
    perm, lam = mix
    return torch.as_tensor(perm), float(lam)


# -- the caller's side (a Train worker) ---------------------------------------------------------


@dataclass
class ServedTeacher:
    """A Train worker's view of the deployment: `outputs` returns the teacher's
    `ModelOutputs` for a batch as the in-worker teacher would, retrying a call a dead
    replica lost (Serve restarts it) with a bounded backoff."""

    ref: ServiceRef
    has_head: bool = False  # the teacher folder has a task head: the replica applies it
    calls: int = 0
    retries: int = 0
    wait_s: float = 0.0  # time spent waiting for answers (queueing + the teacher's forward)
    handle: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.handle = serve.get_deployment_handle(DEPLOYMENT, app_name=self.ref.app)

    def info(self) -> dict:
        return self._call("info")

    def outputs(
        self,
        view: dict[str, torch.Tensor],
        *,
        qkv_layers=(),
        head: bool = False,
        mix: tuple[torch.Tensor, float] | None = None,
    ) -> ModelOutputs:
        device = view["input_ids"].device
        request = {k: view[k].detach().cpu() for k in _TENSORS if k in view}
        request.update(qkv_layers=tuple(qkv_layers), head=head)
        if mix is not None:
            request["mix"] = (mix[0].detach().cpu(), float(mix[1]))
        started = time.perf_counter()
        answer = self._call("outputs", request)
        self.wait_s += time.perf_counter() - started
        self.calls += 1
        return ModelOutputs(
            hidden=tuple(h.to(device) for h in answer["hidden"].unbind(0)),
            pooled=answer["pooled"].to(device),
            logits=None if answer["logits"] is None else answer["logits"].to(device),
            qkv={layer: tuple(t.to(device) for t in qkv) for layer, qkv in answer["qkv"].items()},
        )

    def record(self) -> dict:
        return {"calls": self.calls, "retries": self.retries, "wait_s": round(self.wait_s, 3)}

    def _call(self, method: str, *args):
        from ray.exceptions import RayError, RayTaskError

        wait = _BACKOFF_S[0]
        for attempt in range(_TRIES):
            try:
                return getattr(self.handle, method).remote(*args).result()
            except RayTaskError:
                raise  # the teacher itself failed on this input: retrying cannot help
            except RayError as exc:  # the replica died or is restarting
                if attempt == _TRIES - 1:
                    raise RuntimeError(
                        f"teacher.service: {self.ref.app} did not answer after {_TRIES} tries "
                        f"({type(exc).__name__})"
                    ) from exc
                self.retries += 1
                time.sleep(wait)
                wait = min(2 * wait, _BACKOFF_S[1])
        raise AssertionError("unreachable")


# -- the driver's side ---------------------------------------------------------------------------


def start_or_attach(spec: JobSpec) -> ServiceRef:
    """Deploy the teacher (`teacher.service.*`), or attach to the running deployment named
    `teacher.service.name`; one-line `SpecError`s naming `teacher.service` when the named
    deployment is not running, serves another teacher, or a new one cannot start (not
    enough resources, the teacher does not load). Ray must be running."""
    settings = spec.teacher.service
    digest = folder_digest(resolve_teacher(spec.teacher.name))
    name = app_name(spec, digest)
    running = _applications()
    if settings.name is not None:
        if running.get(name) != "RUNNING":
            listed = ", ".join(sorted(running)) or "none"
            raise SpecError(
                f"teacher.service.name: no running deployment named {name} (running: {listed})"
            )
        ref = ServiceRef(name, digest, started_here=False, replicas=settings.replicas)
        served = ServedTeacher(ref).info()["digest"]
        if served != digest:
            raise SpecError(
                f"teacher.service.name: {name} serves teacher {served[:12]}, this run's "
                f"teacher.name is {digest[:12]}"
            )
        return ref
    if running.get(name) == "RUNNING":  # our own deployment of this very teacher: share it
        return ServiceRef(name, digest, started_here=False, replicas=settings.replicas)
    serve.start(proxy_location="Disabled")  # callers use handles only: no HTTP proxy
    deployment = serve.deployment(
        TeacherService,
        name=DEPLOYMENT,
        num_replicas=settings.replicas,
        max_ongoing_requests=256,
        ray_actor_options={
            "num_cpus": settings.cpus_per_replica,
            "num_gpus": settings.gpus_per_replica,
        },
    )
    app = deployment.bind(
        spec.teacher.name,
        spec.teacher.dtype or spec.deepspeed.precision,
        max(1, int(settings.cpus_per_replica)),
        settings.max_batch_size,
        settings.batch_wait_timeout_s,
        name,
    )
    # Created, not awaited: a deployment that cannot be placed would otherwise wait forever.
    serve.run_many(
        [serve.RunTarget(target=app, name=name, route_prefix=None)],
        wait_for_applications_running=False,
    )
    _wait_running(name)
    print(
        f"[distill] teacher service {name}: {settings.replicas} replica(s), "
        f"{settings.cpus_per_replica} CPU / {settings.gpus_per_replica} GPU each",
        flush=True,
    )
    return ServiceRef(name, digest, started_here=True, replicas=settings.replicas)


def _applications() -> dict[str, str]:
    """Serve applications running on the cluster: {name: status}; none before Serve starts."""
    try:
        return {name: _status(app) for name, app in serve.status().applications.items()}
    except Exception:  # noqa: BLE001 - Serve not started on this cluster
        return {}


def _status(app) -> str:
    """An application's status as its plain name (`RUNNING`, `DEPLOYING`, ...)."""
    return str(getattr(app.status, "value", app.status))


def _wait_running(name: str, timeout_s: float = _START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        status = _status(app) if app is not None else "NOT_STARTED"
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
            message = " ".join((app.message if app is not None else "").split())[:300]
            serve.delete(name)
            why = f"{status}: {message}" if message else f"not running after {timeout_s:.0f} s"
            raise SpecError(f"teacher.service: the teacher deployment did not start ({why})")
        time.sleep(0.5)


def service_record(ref: ServiceRef) -> dict:
    """What the report keeps of the service: where the teacher ran, its replicas, the rows
    of the teacher forwards they ran (the batching across callers)."""
    replicas = {s["pid"]: s for s in ray.get(stats_actor(ref.app).all.remote())}
    forwards = sum(s["forwards"] for s in replicas.values())
    rows = sum(s["rows"] for s in replicas.values())
    return {
        "app": ref.app,
        "teacher_digest": ref.digest,
        "started_here": ref.started_here,
        "replicas": ref.replicas,
        "replicas_seen": len(replicas),
        "forwards": forwards,
        "requests": sum(s["requests"] for s in replicas.values()),
        "mean_rows_per_forward": round(rows / forwards, 2) if forwards else None,
        "max_rows_per_forward": max((s["max_rows"] for s in replicas.values()), default=0),
    }


def stop(ref: ServiceRef | None) -> None:
    """Delete the deployment if this driver started it."""
    if ref is not None and ref.started_here:
        serve.delete(ref.app)
        ray.kill(stats_actor(ref.app))
