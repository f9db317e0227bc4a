"""Shared pytest fixtures: tiny CPU models and a real tokenizer over a 99-word vocabulary.

Tiers: `tests/unit/` (no Ray, no S3 server, no packaged-teacher training; mirrors the
packages: core, cluster, jobs) and `tests/integration/` (Ray, S3 on loopback, the CLI end to
end). Every test gets the marker of its tier, so `-m unit` / `-m integration` select them.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers.s3_fixtures import bucket, locked_s3, moto_endpoint  # noqa: F401  (S3 on loopback)
from transformers import BertConfig, BertModel, BertTokenizerFast

from distill.core.teacher import freeze

# Ray Train's controller polls its workers every 2 s and starts a preemption watcher actor per
# run; for the many short jobs of the suite a 0.25 s poll and no watcher take about 4 s off
# each `distill run` (28.9 s vs 33.1 s for an example --smoke, measured at 589e3a9). Set here,
# before any Ray instance starts, so local clusters and CLI subprocesses inherit them.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = item.path.parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)


# ---------------------------------------------------------------------------
# Tiny teacher model
# ---------------------------------------------------------------------------

TINY_BERT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


@pytest.fixture
def tiny_bert() -> BertModel:
    """A seeded, frozen 4-layer BERT (hidden 32, vocab 99); the global RNG is left untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = BertModel(BertConfig(**TINY_BERT))
    return freeze(model)


# ---------------------------------------------------------------------------
# Tiny tokenizer
# ---------------------------------------------------------------------------

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """
the a an and or but not no is was are were be been it this that these those i you he she we
they my your his her our their cat dog bird fish mat sat on in at of to for with by from
good bad great awful fine very quite really movie film story plot actor music scene end
man woman child people day night time year world life love hate like make made see seen
run ran walk house car road tree water fire light dark old new big small
""".split()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> BertTokenizerFast:
    """A real BERT WordPiece tokenizer whose ids all stay below 99."""
    vocab = SPECIAL_TOKENS + WORDS
    assert len(vocab) == len(set(vocab)) == 99
    path = tmp_path_factory.mktemp("tokenizer") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    # transformers 5: the keyword is `vocab`; `vocab_file=` is silently ignored (empty vocab).
    tokenizer = BertTokenizerFast(vocab=str(path))
    assert len(tokenizer) == 99
    return tokenizer


@pytest.fixture
def teacher_dir(tmp_path, tiny_bert, tiny_tokenizer):
    """A teacher folder as `save_pretrained` writes it: the tiny BERT and its tokenizer."""
    folder = tmp_path / "teacher"
    tiny_bert.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


# --- Ray integration (tests/test_ray_*.py) ---------------------------------------------------


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs) shared by the integration tests."""
    ray = pytest.importorskip("ray")
    from distill.cluster.launch import worker_env
    from distill.core.spec import JobSpec

    ray.init(num_cpus=2, runtime_env={"env_vars": worker_env(JobSpec())}, logging_level="WARNING")
    yield ray
    ray.shutdown()
