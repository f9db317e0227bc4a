"""Teacher placement before Ray starts: the memory estimate (hand-computed for a tiny BERT
config) and the dtype / partition resolution with its one-line refusals."""

from __future__ import annotations

import pytest
from transformers import AutoModel

from distill.core.spec import SpecError
from distill.core.spec_loading import load_spec
from distill.core.teacher_plan import (
    COMFORT,
    ZERO3_SHARE,
    TeacherFootprint,
    footprint,
    resolve_placement,
    worker_memory_bytes,
    worker_memory_on_nodes,
)


def test_footprint_counts_parameters_by_hand(tiny_bert):
    config = tiny_bert.config  # hidden 32, 4 layers, FFN 64, vocab 99, 64 positions
    fp = footprint(config, AutoModel)
    h, f, v, p, t = 32, 64, 99, 64, 2
    embeddings = v * h + p * h + t * h + 2 * h  # word, position, token type, LayerNorm
    block = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h  # q,k,v,o + LN + FFN + LN
    pooler = h * h + h
    assert fp.parameters == embeddings + 4 * block + pooler
    assert fp.parameters == sum(p.numel() for p in tiny_bert.parameters())
    assert fp.largest_gather == block  # a block (12,608) is bigger than the word table (3,168)


def _spec(*overrides):
    return load_spec(None, list(overrides))


# 1,000,000 parameters, the largest gathered unit 100,000: fp32 whole = 4 MB.
TEACHER = TeacherFootprint(parameters=1_000_000, largest_gather=100_000)
MB = 1_000_000
GB = 2**30


def test_dtype_defaults_to_the_run_precision_and_fp16_needs_a_gpu():
    assert resolve_placement(_spec(), TEACHER, None).dtype == "fp32"
    assert resolve_placement(_spec("deepspeed.precision=bf16"), TEACHER, None).dtype == "bf16"
    assert resolve_placement(_spec("teacher.dtype=bf16"), TEACHER, None).dtype == "bf16"
    with pytest.raises(SpecError, match="^teacher.dtype: fp16 needs a GPU"):
        resolve_placement(_spec("teacher.dtype=fp16"), TEACHER, None)


def test_auto_replicates_what_fits_and_partitions_what_does_not():
    fits = resolve_placement(_spec(), TEACHER, worker_memory=int(4 * MB / COMFORT))
    assert (fits.partition, fits.parameter_bytes, fits.per_worker_bytes) == (
        "replicate",
        4 * MB,
        4 * MB,
    )
    big = resolve_placement(_spec(), TEACHER, worker_memory=int(4 * MB / COMFORT) - 1)
    # 1/2 of the teacher plus one gathered unit, at 4 bytes a parameter.
    assert (big.partition, big.per_worker_bytes) == ("zero3", (500_000 + 100_000) * 4)
    bf16 = resolve_placement(_spec("teacher.dtype=bf16"), TEACHER, worker_memory=6 * MB)
    assert (bf16.partition, bf16.per_worker_bytes) == ("replicate", 2 * MB)
    unknown = resolve_placement(_spec(), TEACHER, worker_memory=None)
    assert unknown.partition == "replicate" and "unknown" in unknown.reason
    one = resolve_placement(_spec("scaling.num_workers=1"), TEACHER, worker_memory=8 * MB)
    assert one.partition == "replicate"
    with pytest.raises(SpecError, match="^teacher.placement: replicate puts the whole teacher"):
        resolve_placement(_spec("scaling.num_workers=1"), TEACHER, worker_memory=MB)


def test_a_placement_that_cannot_fit_is_one_line_naming_the_field():
    with pytest.raises(SpecError, match=r"^teacher.placement: replicate puts the whole teacher"):
        resolve_placement(_spec("teacher.placement=replicate"), TEACHER, worker_memory=6 * MB)
    zero3 = resolve_placement(_spec("teacher.placement=zero3"), TEACHER, worker_memory=3 * MB)
    assert zero3.per_worker_bytes == 2_400_000 <= ZERO3_SHARE * 3 * MB  # below the teacher's 4 MB
    with pytest.raises(SpecError, match=r"^scaling.num_workers: 2 workers leave each") as err:
        resolve_placement(_spec("teacher.placement=zero3"), TEACHER, worker_memory=2 * MB)
    assert "\n" not in str(err.value)
    four = resolve_placement(
        _spec("teacher.placement=zero3", "scaling.num_workers=4"), TEACHER, worker_memory=2 * MB
    )
    assert four.per_worker_bytes == (250_000 + 100_000) * 4


def test_worker_memory_from_the_spec_or_the_machine():
    assert worker_memory_bytes(_spec("scaling.memory_per_worker_gb=2"), local=False) == 2 * 2**30
    assert worker_memory_bytes(_spec(), local=False) is None
    assert worker_memory_bytes(_spec("scaling.num_workers=2"), local=True) > 0


def test_worker_memory_on_a_running_cluster_is_the_smallest_share_a_worker_gets():
    """Ray's node resources (memory in bytes): a node's memory over the workers its CPUs (and
    GPUs) can host; nodes that host none, or report no memory, do not count."""
    head = {"CPU": 2.0, "memory": 8 * GB}  # two 1-CPU workers: 4 GiB each
    big = {"CPU": 8.0, "memory": 64 * GB}  # eight: 8 GiB each
    small = {"CPU": 0.5, "memory": 2 * GB}  # hosts no 1-CPU worker
    assert worker_memory_on_nodes([head, big, small], 1, 0) == 4 * GB
    assert worker_memory_on_nodes([big], 2, 0) == 16 * GB  # 4 workers of 2 CPUs
    gpu = {"CPU": 16.0, "GPU": 2.0, "memory": 96 * GB}  # GPUs limit it to 2 workers
    assert worker_memory_on_nodes([gpu, head], 1, 1) == 48 * GB  # the head has no GPU
    assert worker_memory_on_nodes([small], 1, 0) is None
    assert worker_memory_on_nodes([{"CPU": 4.0}], 1, 0) is None
    assert worker_memory_on_nodes([], 1, 0) is None


def test_the_worker_peak_estimate_adds_its_terms_and_refuses_what_cannot_fit():
    from transformers import GPT2Config

    from distill.core.teacher_plan import (
        RUNTIME_BYTES,
        STUDENT_BYTES_PER_PARAMETER,
        estimate_worker_peak,
    )

    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=1000)
    spec = _spec("teacher.placement=zero3", "data.max_length=16", "training.batch_size=2")
    teacher = TeacherFootprint(
        parameters=10_000_000, largest_gather=1_000_000, largest_layer=500_000
    )
    z3 = estimate_worker_peak(spec, teacher, config, "zero3", "fp32", student=2_000_000)
    window = 1_000_000 + min(
        spec.teacher.zero3.prefetch_bucket_size, spec.teacher.zero3.max_live_parameters
    )
    assert z3.teacher == (5_000_000 + window) * 4  # half the teacher + the gather window
    assert z3.student == 2_000_000 * STUDENT_BYTES_PER_PARAMETER
    assert z3.activations == 2 * 16 * 4 * 10 * 1000  # logits copies dominate at this width
    assert z3.total == RUNTIME_BYTES + z3.teacher + z3.student + z3.activations
    rep = estimate_worker_peak(spec, teacher, config, "replicate", "bf16", student=2_000_000)
    assert rep.teacher == 10_000_000 * 2

    fits = resolve_placement(spec, teacher, 8 * 2**30, config=config, student_parameters=2_000_000)
    assert fits.estimate == z3
    with pytest.raises(SpecError) as err:  # the teacher's share fits, the whole worker not
        resolve_placement(
            _spec("teacher.placement=zero3", "scaling.memory_per_worker_gb=1"),
            teacher,
            2**30,
            config=config,
            student_parameters=20_000_000,
        )
    message = str(err.value)
    assert message.startswith("scaling.memory_per_worker_gb: a worker's peak is estimated at")
    assert "runtime" in message and "student 457.8 MiB" in message and "\n" not in message
