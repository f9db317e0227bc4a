"""Slices of a sharded safetensors checkpoint: each rank's ZeRO-3 range of every tensor read
without its shard, equal to the same range of the full tensor; bad checkpoints named."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from distill.core.checkpoint_slices import (
    CheckpointTensors,
    NotSliceable,
    partition_range,
    shard_files,
    tensor_names_for,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A tiny GPT-2 saved in shards of at most 20 kB: tensors fall on uneven boundaries,
    some shards hold one tensor, others several."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=24, n_head=4, vocab_size=99))
    folder = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(folder, max_shard_size="20kB")
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


def test_partition_range_is_deepspeeds_layout():
    assert partition_range(10, 3, 0) == (0, 4, 4)
    assert partition_range(10, 3, 2) == (8, 10, 4)  # the last partition is padded
    assert partition_range(2, 4, 3) == (2, 2, 1)  # more ranks than elements: empty
    ranges = [partition_range(1001, 4, r) for r in range(4)]
    assert sum(stop - start for start, stop, _ in ranges) == 1001


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_rank_reads_exactly_its_slice_of_every_tensor(sharded, world):
    folder, state = sharded
    assert len(set(shard_files(folder).values())) > 2  # really sharded
    with CheckpointTensors(folder) as tensors:
        for name in tensors.names():
            full = state[name].reshape(-1)
            parts = []
            for rank in range(world):
                start, stop, _ = partition_range(full.numel(), world, rank)
                part = tensors.flat_range(name, start, stop, torch.float32)
                assert torch.equal(part, full[start:stop]), (name, rank)
                parts.append(part)
            assert torch.equal(torch.cat(parts), full)


def test_slices_are_cast_per_slice(sharded):
    folder, state = sharded
    with CheckpointTensors(folder) as tensors:
        name = "transformer.h.0.mlp.c_fc.weight"
        part = tensors.flat_range(name, 5, 700, torch.bfloat16)
    assert part.dtype == torch.bfloat16
    assert torch.equal(part, state[name].reshape(-1)[5:700].to(torch.bfloat16))


def test_names_map_across_base_prefix_and_tied_weights():
    available = {"transformer.wte.weight", "transformer.h.0.attn.c_attn.weight"}
    aliases = {
        "transformer.wte.weight": ["transformer.wte.weight", "lm_head.weight"],
        "transformer.h.0.attn.c_attn.weight": ["transformer.h.0.attn.c_attn.weight"],
    }
    assert tensor_names_for(aliases, available, "transformer") == {
        "transformer.wte.weight": "transformer.wte.weight",
        "transformer.h.0.attn.c_attn.weight": "transformer.h.0.attn.c_attn.weight",
    }
    # A base model (no prefix) reading a checkpoint saved with its head, and the tied
    # lm_head only present under its own name.
    assert tensor_names_for({"wte.weight": ["wte.weight"]}, available, "transformer") == {
        "wte.weight": "transformer.wte.weight"
    }
    assert tensor_names_for({"a": ["a", "lm_head.weight"]}, {"lm_head.weight"}, "x") == {
        "a": "lm_head.weight"
    }
    with pytest.raises(NotSliceable, match="no checkpoint tensor for missing"):
        tensor_names_for({"missing": ["missing"]}, available, "transformer")


def test_a_bin_checkpoint_is_not_sliceable(tmp_path):
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(NotSliceable):
        CheckpointTensors(tmp_path)
