"""General-domain English training text for task-agnostic distillation, one sentence per line.

The seed recipes distil on SST-2 (movie reviews) and STS-B train sentences only. This
script gathers broader public text from one pinned source, brmson/dataset-sts (e1d3375),
so every sentence's provenance is one line of `docs/benchmarks.md`:

- `wiki.txt`: English Wikipedia sentences (the "memory" sentences of the AI2 8th-grade
  science set, enwiki retrieval, all splits), CC BY-SA;
- `news.txt`: news sentences of the Microsoft Research Paraphrase Corpus (train + val),
  MSR licence (research use);
- `fiction.txt`: children's stories of MCTest (mc160 + mc500, all splits) split into
  sentences, MSR licence (research use).

Text is lightly de-tokenised (PTB brackets and spaces before punctuation), deduplicated,
kept at 4-64 words, and shuffled with a fixed seed.

    python bench/corpora.py --dataset-sts dataset-sts --out ../corpora
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

PTB = {
    "-LRB-": "(",
    "-RRB-": ")",
    "-LSB-": "[",
    "-RSB-": "]",
    "-LCB-": "{",
    "-RCB-": "}",
    "``": '"',
    "''": '"',
}


def detokenise(text: str) -> str:
    for token, char in PTB.items():
        text = text.replace(token, char)
    text = re.sub(r"\s+([.,;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{$])\s+", r"\1", text)
    text = re.sub(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def keep(sentence: str) -> bool:
    return 4 <= len(sentence.split()) <= 64


def wiki(root: Path) -> list[str]:
    csv.field_size_limit(1 << 30)
    out = []
    for split in ("train", "dev", "test"):
        with open(root / f"data/hypev/ai2-8grade/enwv0-{split}.csv", encoding="utf-8") as f:
            out += [detokenise(r["mtext"]) for r in csv.DictReader(f)]
    return out


def news(root: Path) -> list[str]:
    out = []
    for split in ("train", "val"):
        with open(root / f"data/para/msr/msr-para-{split}.tsv", encoding="utf-8-sig") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) >= 5 and row[0] in ("0", "1"):
                    out += [row[3].strip(), row[4].strip()]
    return out


def fiction(root: Path) -> list[str]:
    out = []
    for path in sorted((root / "data/hypev/mctest").glob("mc[15]*0.*.statements.tsv")):
        with open(path, encoding="utf-8") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) > 2:
                    story = row[2].replace("\\newline", " ").replace("\\tab", " ")
                    out += re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", story)
    return out


SOURCES = {"wiki": wiki, "news": news, "fiction": fiction}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset-sts", required=True, type=Path, help="checkout of brmson/dataset-sts"
    )
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, read in SOURCES.items():
        sentences = sorted({s.strip() for s in read(args.dataset_sts) if keep(s.strip())})
        random.Random(0).shuffle(sentences)
        (args.out / f"{name}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
        counts[name] = len(sentences)
        print(f"{name}: {len(sentences)} sentences", flush=True)
    (args.out / "corpora.json").write_text(
        json.dumps(
            {"source": "github.com/brmson/dataset-sts@e1d3375", "sentences": counts}, indent=2
        )
    )


if __name__ == "__main__":
    main()
