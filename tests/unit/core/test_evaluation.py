"""Evaluation: STS file parsing, Spearman, cosine agreement and throughput."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distill.core.data import BUILTIN_STS, StsPairs, load_sts_pairs, sts_file
from distill.core.evaluation import (
    cosine_agreement,
    measure_throughput,
    similarity_agreement,
    sts_spearman,
)
from distill.core.export import SentenceEncoder


def test_load_sts_pairs_tolerates_extra_fields_and_quotes(tmp_path):
    path = tmp_path / "sts.csv"
    rows = [
        "main-captions\tMSRvid\t2012\t0001\t5.000\tA plane takes off.\tAn air plane takes off.",
        "main-news\theadlines\t2013\t0002\t1.5\tHe said \"no\".\tShe said 'yes'.\tsrc-a\tsrc-b",
        "too\tshort\tline",
        "main-forum\tdeft\t2014\t0003\t0.25\tA man plays.\tA dog runs.",
    ]
    path.write_text("\n".join(rows) + "\n")
    pairs = load_sts_pairs(str(path))
    assert pairs.scores == [5.0, 1.5, 0.25]
    assert pairs.first == ["A plane takes off.", 'He said "no".', "A man plays."]
    assert pairs.second == ["An air plane takes off.", "She said 'yes'.", "A dog runs."]
    assert load_sts_pairs(str(path), limit=2).scores == [5.0, 1.5]


def test_packaged_sts_sample_is_the_cc_by_sa_captions_of_the_dev_split_with_its_notice():
    pairs = load_sts_pairs(BUILTIN_STS)
    assert len(pairs.scores) == 375 and min(pairs.scores) >= 0 and max(pairs.scores) <= 5
    assert len(set(pairs.scores)) > 20  # graded scores, not a constant
    sample = Path(sts_file(BUILTIN_STS))
    sources = {line.split("\t")[1] for line in sample.read_text().splitlines()}
    assert sources == {"images", "track5.en-en"}  # the two CC BY-SA sources only
    notice = (sample.parent / "LICENSE.txt").read_text()
    assert "CC BY-SA 4.0" in notice and "SemEval-2017" in notice
    with pytest.raises(ValueError, match="builtin:nope is no packaged STS set"):
        load_sts_pairs("builtin:nope")


def test_load_sts_pairs_without_rows_names_the_file(tmp_path):
    path = tmp_path / "sts.csv"
    path.write_text("only\tthree\tfields\n")
    with pytest.raises(ValueError, match=r"sts\.csv has no STS rows"):
        load_sts_pairs(str(path))


@pytest.mark.parametrize("score", ["nan", "inf", "five"])
def test_load_sts_pairs_refuses_a_score_that_is_not_a_finite_number(tmp_path, score):
    path = tmp_path / "sts.csv"
    path.write_text(f"g\tf\t2012\t1\t4.0\ta\tb\ng\tf\t2012\t2\t{score}\tc\td\n")
    with pytest.raises(ValueError, match=rf"sts\.csv line 2: score '{score}' is not a finite"):
        load_sts_pairs(str(path))


class FixedEncoder:
    """Stands in for a SentenceEncoder: each text maps to a fixed vector."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def encode(self, texts, batch_size=64, max_length=128):
        return torch.tensor([self.vectors[t] for t in texts])


def _angle_pairs() -> tuple[FixedEncoder, list[float]]:
    # Pair i compares [1, 0] with a vector at angle a_i, so its cosine is cos(a_i).
    angles = [0.1, 0.5, 0.9, 1.3, 2.0, 2.8]
    vectors = {"anchor": [1.0, 0.0]} | {
        f"t{i}": [math.cos(a), math.sin(a)] for i, a in enumerate(angles)
    }
    return FixedEncoder(vectors), [math.cos(a) for a in angles]


def test_sts_spearman_is_one_for_a_monotone_function_of_the_cosine():
    encoder, cosines = _angle_pairs()
    second = [f"t{i}" for i in range(len(cosines))]
    first = ["anchor"] * len(cosines)
    scores = [math.exp(3 * c) for c in cosines]  # monotone, not linear
    assert sts_spearman(encoder, StsPairs(first, second, scores)) == pytest.approx(1.0)
    assert sts_spearman(encoder, StsPairs(first, second, [-s for s in scores])) == pytest.approx(
        -1.0
    )


def test_cosine_agreement_by_hand():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    teacher = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    # cosines 1, 1/sqrt(2), -1
    assert cosine_agreement(student, teacher) == pytest.approx((1 + 1 / math.sqrt(2) - 1) / 3)
    assert cosine_agreement(student.half(), student.half()) == pytest.approx(1.0, abs=1e-3)


def test_similarity_agreement_compares_geometry_across_widths():
    # Student pair cosines (1,2)=0, (1,3)=1, (2,3)=0; teacher 1/sqrt2, 0, 1/sqrt2: a
    # perfect inverse relation (r = -1); the teacher against itself in 3 extra dims: 1.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert similarity_agreement(student, teacher) == pytest.approx(-1.0)
    wider = torch.cat([teacher, torch.zeros(3, 3)], dim=1)
    assert similarity_agreement(wider, teacher) == pytest.approx(1.0)


def test_measure_throughput_reports_every_encoder(tiny_bert, tiny_tokenizer):
    encoders = {
        "teacher": SentenceEncoder(tiny_bert, tiny_tokenizer),
        "student": SentenceEncoder(tiny_bert, tiny_tokenizer, torch.nn.Linear(32, 8)),
    }
    speeds = measure_throughput(
        encoders, ["the cat sat", "a good film"] * 4, rounds=2, batch_size=4
    )
    assert set(speeds) == {"teacher", "student"}
    assert all(math.isfinite(v) and v > 0 for v in speeds.values())
