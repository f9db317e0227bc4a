"""Held-out sentence-similarity sets for judging students on data no recipe was chosen on.

Recipes are chosen on STS-B dev (`../shared/data/stsb/sts-dev.csv`). This script assembles,
from public copies, the sets they are *reported* on, all written in the STS Benchmark
layout (7 tab-separated fields, score in field 5) so `distill.core.evaluation.load_sts_pairs`
reads every one of them:

- `stsb-test.csv`: the STS Benchmark test split (same genres as train/dev, unseen pairs);
- other-domain sets (`domain-*.csv`): SemEval STS 2012-2016 subsets that are not part of
  the STS Benchmark (MT output, WordNet/FrameNet glosses, tweets, student answers, forum
  beliefs, plagiarism, post-edited MT, questions) and SICK-R test (compositional captions).

Any pair with a sentence that occurs in the distillation corpora (SST-2 train, STS-B
train/dev, and the corpora of `bench/corpora.py`) or in STS-B itself is dropped, so no
"other-domain" sentence was ever seen in training or model choice; `provenance.json`
records sources, commits, licences and the number of pairs kept and dropped per set.

    git clone https://github.com/brmson/dataset-sts            # at e1d3375
    git clone https://github.com/luffycodes/parSentExtract     # at b39fca6 (STS-B test)
    python bench/heldout.py --dataset-sts dataset-sts --stsb-test parSentExtract/sts-test.csv \
        parSentExtract/sts-test-stackoverflow.csv --out ../heldout

The data is not shipped with distill (the SemEval subsets carry their own licences, SICK is
CC BY-NC-SA 3.0); `docs/benchmarks.md` lists provenance and licences.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from distill.core.data import load_source, load_sts_pairs

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
MIN_PAIRS = 150

# name -> (path inside dataset-sts, what it is, licence)
SEMEVAL = {
    "sts12-europarl": (
        "data/sts/semeval-sts/2012/SMTeuroparl.test.tsv",
        "MT output vs reference, Europarl",
        "SemEval-2012 STS; Europarl (free use)",
    ),
    "sts12-onwn": (
        "data/sts/semeval-sts/2012/OnWN.test.tsv",
        "OntoNotes vs WordNet sense glosses",
        "SemEval-2012 STS; WordNet licence",
    ),
    "sts13-fnwn": (
        "data/sts/semeval-sts/2013/FNWN.test.tsv",
        "FrameNet vs WordNet glosses",
        "SemEval-2013 STS; FrameNet/WordNet licences",
    ),
    "sts14-onwn": (
        "data/sts/semeval-sts/2014/OnWN.test.tsv",
        "OntoNotes vs WordNet sense glosses",
        "SemEval-2014 STS; WordNet licence",
    ),
    "sts14-tweets": (
        "data/sts/semeval-sts/2014/tweet-news.test.tsv",
        "tweets vs news headlines",
        "SemEval-2014 STS; research use",
    ),
    "sts15-students": (
        "data/sts/semeval-sts/2015/answers-students.test.tsv",
        "student answers (BEETLE)",
        "SemEval-2015 STS; research use",
    ),
    "sts15-belief": (
        "data/sts/semeval-sts/2015/belief.test.tsv",
        "forum statements of belief (LDC DEFT)",
        "SemEval-2015 STS; LDC research use",
    ),
    "sts16-plagiarism": (
        "data/sts/semeval-sts/2016/plagiarism.test.tsv",
        "short-answer plagiarism corpus",
        "SemEval-2016 STS; CC BY 3.0",
    ),
    "sts16-postediting": (
        "data/sts/semeval-sts/2016/postediting.test.tsv",
        "MT output vs post-edited MT",
        "SemEval-2016 STS; research use",
    ),
    "sts16-questions": (
        "data/sts/semeval-sts/2016/question-question.test.tsv",
        "Stack Exchange questions",
        "SemEval-2016 STS; CC BY-SA 3.0",
    ),
}
SICK = (
    "data/sts/sick2014/SICK_test_annotated.txt",
    "SICK-R test: compositional image/video captions",
    "CC BY-NC-SA 3.0",
)


def normalise(sentence: str) -> str:
    """Key for overlap checks: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]+", " ", sentence.lower()).strip()


def semeval_pairs(path: Path) -> list[tuple[float, str, str]]:
    """brmson/dataset-sts SemEval file: score<TAB>s1<TAB>s2; unscored pairs have no score."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 3 and row[0].strip():
                pairs.append((float(row[0]), row[1].strip(), row[2].strip()))
    return pairs


def sick_pairs(path: Path) -> list[tuple[float, str, str]]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(float(r["relatedness_score"]), r["sentence_A"], r["sentence_B"]) for r in rows]


def write_sts(path: Path, name: str, pairs: list[tuple[float, str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, (score, a, b) in enumerate(pairs):
            clean = [s.replace("\t", " ").replace("\n", " ") for s in (a, b)]
            f.write(f"heldout\t{name}\t-\t{i:05d}\t{score:.3f}\t{clean[0]}\t{clean[1]}\n")


def seen_sentences(extra_corpora: list[Path]) -> set[str]:
    """Every sentence that training or model choice may have read."""
    seen: set[str] = set()
    for split in ("sts-train.csv", "sts-dev.csv"):
        pairs = load_sts_pairs(str(SHARED / "stsb" / split))
        seen.update(normalise(s) for s in pairs.first + pairs.second)
    seen.update(normalise(s) for s in load_source(str(SHARED / "sst2/train.tsv"))["sentence"])
    for corpus in extra_corpora:
        seen.update(normalise(s) for s in corpus.read_text(encoding="utf-8").splitlines())
    seen.discard("")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset-sts", required=True, type=Path, help="checkout of brmson/dataset-sts"
    )
    parser.add_argument(
        "--stsb-test",
        nargs="+",
        type=Path,
        required=True,
        help="STS-B test file(s), STS-B layout with a header",
    )
    parser.add_argument(
        "--corpora",
        nargs="*",
        type=Path,
        default=[],
        help="extra training corpora (one sentence per line) to exclude",
    )
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seen = seen_sentences(args.corpora)
    provenance: dict = {"sets": {}}

    test = [p for f in args.stsb_test for p in _stsb_rows(f)]
    write_sts(args.out / "stsb-test.csv", "stsb-test", test)
    provenance["sets"]["stsb-test"] = {
        "file": "stsb-test.csv",
        "role": "stsb-heldout",
        "pairs": len(test),
        "dropped": 0,
        "source": "github.com/luffycodes/parSentExtract@b39fca630ce3bcd87b25ef9a7626fb7b5b3651d8 sts-test.csv + sts-test-stackoverflow.csv",
        "what": "STS Benchmark test split (Cer et al. 2017)",
        "licence": "CC BY-SA 4.0 (scores); texts per STS-B LICENSE",
    }
    stsb_all = seen | {normalise(s) for _, a, b in test for s in (a, b)}

    sources = {name: (semeval_pairs, *entry) for name, entry in SEMEVAL.items()}
    sources["sick-r"] = (sick_pairs, *SICK)
    for name, (reader, relative, what, licence) in sources.items():
        pairs = reader(args.dataset_sts / relative)
        kept = [
            p for p in pairs if normalise(p[1]) not in stsb_all and normalise(p[2]) not in stsb_all
        ]
        entry = {
            "role": "other-domain",
            "pairs": len(kept),
            "dropped": len(pairs) - len(kept),
            "source": f"github.com/brmson/dataset-sts@e1d3375 {relative}",
            "what": what,
            "licence": licence,
        }
        if len(kept) >= MIN_PAIRS:
            entry["file"] = f"domain-{name}.csv"
            write_sts(args.out / entry["file"], name, kept)
        else:
            entry["skipped"] = f"fewer than {MIN_PAIRS} pairs left after removing seen sentences"
        provenance["sets"][name] = entry
        print(f"{name}: kept {len(kept)} of {len(pairs)} pairs", flush=True)
    (args.out / "provenance.json").write_text(json.dumps(provenance, indent=2))


def _stsb_rows(path: Path) -> list[tuple[float, str, str]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7 and re.fullmatch(r"[0-9.]+", row[4].strip()):
                rows.append((float(row[4]), row[5].strip(), row[6].strip()))
    return rows


if __name__ == "__main__":
    main()
