"""The teacher-output cache (issue 15): Ray Data teacher inference, bytes per target token,
top-k against full-vocabulary KD, and training throughput and memory with the cache against
a live teacher. Ratios are measured within one invocation.

    python -m bench.teacher_cache inference [--rows 2000]   # rows/s: 1 actor x 1 or 2 CPUs, 2 actors x 1 CPU
    python -m bench.teacher_cache inference --two-node --out bench/results/teacher_cache_inference_2node.json
    python -m bench.teacher_cache train [--rows 2000]       # 2-worker Ray Train job: live teacher vs cache
    python -m bench.teacher_cache lm                        # top-k bytes/token; top-k vs full KD perplexity
    python -m bench.teacher_cache lm --vocab 32768 --text ../corpora/*.txt \
        --out bench/results/teacher_cache_lm_32k.json       # the same with a 32,768-token BPE

Results go to bench/results/teacher_cache_<mode>.json; docs/benchmarks.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SST2 = "../shared/data/sst2/train.tsv"
EOS = "<|endoftext|>"


def _write(mode: str, result: dict, out: str | None = None) -> None:
    out = Path(out or f"bench/results/teacher_cache_{mode}.json")
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _inference_layouts(args, layouts: dict) -> tuple[dict, int]:
    """Build the cache once per (actors, CPUs per actor) layout on the joined Ray; rows/s
    of each and the number of alive nodes."""
    import ray

    from distill.cluster.cache_store import build_cache, resolve_cache
    from distill.cluster.storage import LocalStorage
    from distill.core.spec_loading import load_spec

    rows = {}
    for name, (actors, cpus) in layouts.items():
        spec = load_spec(
            None,
            [
                f"data.train.path={SST2}",
                f"data.max_train_samples={args.rows}",
                "data.max_length=64",
                "teacher.cache.mode=auto",
                f"teacher.inference.actors={actors}",
                f"teacher.inference.cpus_per_actor={cpus}",
                "teacher.inference.rows_per_shard=256",
                "teacher.inference.batch_size=64",
            ],
        )
        with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
            request, reason = resolve_cache(spec, LocalStorage(tmp))
            assert reason is None, reason
            started = time.perf_counter()
            info = build_cache(request)
            seconds = time.perf_counter() - started
        total = sum(info["rows"].values())
        rows[name] = {"rows": total, "seconds": seconds, "rows_per_s": total / seconds}
        print(f"[bench] {name}: {rows[name]}", flush=True)
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    ray.shutdown()
    return rows, nodes


def inference(args) -> None:
    """Build the same cache three ways on a fresh folder each; rows/s of the Ray Data job."""
    if args.two_node and not os.environ.get("RAY_ADDRESS"):
        # Two `ray start` nodes of 1 CPU each (2 actors land one per node). This process
        # holds the cluster; a child joins it, its token set before it imports Ray.
        from bench.teacher_memory import two_node_cluster

        cluster, joined = two_node_cluster()
        with cluster:
            child = [sys.executable, "-m", "bench.teacher_cache", *sys.argv[1:]]
            subprocess.run(child, env={**os.environ, **joined}, check=True)
        return
    import ray

    from distill.cluster.launch import worker_env
    from distill.core.spec import JobSpec

    env = {"env_vars": worker_env(JobSpec())}
    layouts = {"1 actor x 1 CPU": (1, 1), "1 actor x 2 CPUs": (1, 2), "2 actors x 1 CPU": (2, 1)}
    if args.two_node:
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=env, logging_level="ERROR")
        del layouts["1 actor x 2 CPUs"]  # no node has 2 CPUs
    else:
        ray.init(num_cpus=2, runtime_env=env, logging_level="ERROR")
    rows, nodes = _inference_layouts(args, layouts)
    base = rows["1 actor x 1 CPU"]["rows_per_s"]
    for r in rows.values():
        r["vs_1x1"] = r["rows_per_s"] / base
    _write(
        "inference",
        {
            "benchmark": "teacher_inference",
            "teacher": "all-MiniLM-L6-v2",
            "cluster": f"{nodes} local Ray node(s)",
            "layouts": rows,
        },
        args.out,
    )


def train(args) -> None:
    """The same 2-worker Ray Train + DeepSpeed job with the live teacher and streaming the
    cache (built beforehand by the first cached run, not timed in training samples/s)."""
    import ray

    from distill.cluster.launch import worker_env
    from distill.core.spec import JobSpec
    from distill.core.spec_loading import load_spec
    from distill.jobs.run import run_job

    ray.init(num_cpus=2, runtime_env={"env_vars": worker_env(JobSpec())}, logging_level="ERROR")
    common = [
        f"data.train.path={SST2}",
        f"data.max_train_samples={args.rows}",
        "data.max_length=64",
        "student.layers=2",
        "student.hidden=128",
        "student.heads=4",
        "student.ffn=512",
        f"training.steps={args.steps}",
        "training.batch_size=32",
        f"training.log_every={args.steps // 2}",
        f"training.eval_every={args.steps}",
        f"training.checkpoint_every={args.steps}",
        "evaluation.throughput_rounds=1",
    ]
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for mode, extra in (
            ("build", ["teacher.cache.mode=auto"]),
            ("live", ["teacher.cache.mode=off"]),
            ("cache", ["teacher.cache.mode=required", f"teacher.cache.location={tmp}/build"]),
        ):
            report = run_job(load_spec(None, common + extra), f"{tmp}/{mode}")
            history = [
                json.loads(x) for x in Path(f"{tmp}/{mode}/metrics.jsonl").read_text().splitlines()
            ]
            out[mode] = {
                "samples_per_s": report["training"]["samples_per_s"],
                "rss_peak_mb": max(h["rss_peak_mb"] for h in history),
                "ms_teacher": history[-1]["ms_teacher"],
                "final_loss": report["training"]["final_loss"],
                "teacher_cache": report["teacher_cache"],
                "teacher_partition": report["teacher"]["placement"]["partition"],
                "student_parameters": report["size"]["student_parameters"],
                "teacher_parameters": report["size"]["teacher_parameters"],
            }
    ray.shutdown()
    result = {
        "benchmark": "teacher_cache_train",
        "rows": args.rows,
        "steps": args.steps,
        "runs": out,
        "teacher_to_student_params": out["live"]["teacher_parameters"]
        / out["live"]["student_parameters"],
        "samples_per_s_cache_over_live": out["cache"]["samples_per_s"]
        / out["live"]["samples_per_s"],
        "rss_peak_cache_over_live": out["cache"]["rss_peak_mb"] / out["live"]["rss_peak_mb"],
    }
    _write("train", result)


def lm(args) -> None:
    """Bytes per target token of top-k shards against the full fp16 distribution (a
    50,257-token GPT-2 vocabulary), and student perplexity after top-k KD against full KD
    from the same trained teacher (the packaged tiny GPT-2 architecture, 2,048 tokens)."""
    from torch.utils.data import DataLoader
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config

    from distill.cluster.job_data import train_eval_texts
    from distill.core.cache_format import (
        CachePlan,
        ShardedCache,
        assemble_shard,
        build_manifest,
        lm_rows,
        shard_name,
        write_shard,
    )
    from distill.core.family_registry import FAMILIES
    from distill.core.generative import (
        BatchIds,
        GenerativeDistillationModel,
        TokenObjective,
        TokenSettings,
        generative_collate,
        lm_head,
        target_hidden,
        tokenize_generative,
    )
    from distill.core.generative_eval import perplexity
    from distill.core.spec_loading import load_spec
    from distill.core.student import StudentSize, build_student
    from distill.core.teacher import resolve_teacher

    torch.set_num_threads(2)
    family = FAMILIES["causal"]
    # 1. Bytes per target token on a GPT-2-vocabulary decoder (weights random: only sizes count).
    sizes = {}
    gpt2 = AutoModelForCausalLM.from_config(
        GPT2Config(vocab_size=50257, n_embd=64, n_layer=1, n_head=2)
    ).eval()
    ids = torch.randint(0, 50257, (8, 64), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        hidden, targets = target_hidden(gpt2, batch)
        for k in (16, 64, 256):
            tensors = assemble_shard([lm_rows(hidden, targets, lm_head(gpt2), CachePlan(topk=k))])
            facts = write_shard(f"{tmp}/s.safetensors", tensors)
            tokens = int(tensors["offsets"][-1])
            sizes[k] = {
                "bytes_per_token": facts["bytes"] / tokens,
                "of_full_fp16": facts["bytes"] / tokens / (2 * 50257),
            }
    # 2. Quality: a teacher trained on docstrings (plus --text files), students by full KD vs
    # top-k KD. --vocab N: the same architecture with a byte-level BPE vocabulary of N tokens
    # trained on that text (a large vocabulary spreads the teacher's mass over more tokens).
    spec = load_spec(None, ["data.max_length=64", "data.max_train_samples=6000"])
    train_texts, eval_texts = train_eval_texts(spec)
    extra = [line for f in args.text for line in Path(f).read_text().splitlines() if line.strip()]
    if extra:
        import datasets

        merged = list(train_texts["text"]) + extra
        train_texts = datasets.Dataset.from_dict({"text": merged}).shuffle(seed=0)
    folder = resolve_teacher("builtin:tiny-gpt2")
    if args.vocab:
        folder = _bpe_teacher_folder(folder, list(train_texts["text"]), args.vocab, args.work)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = AutoConfig.from_pretrained(folder).vocab_size
    rows = tokenize_generative(train_texts, tokenizer, 64)
    pad = generative_collate(tokenizer)
    held_out = {"text": list(eval_texts["text"])[:128]}

    def loader(seed):
        return DataLoader(
            rows.add_column("i", list(range(len(rows)))),
            batch_size=32, shuffle=True, drop_last=True,
            collate_fn=pad, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3)
    teacher.train()
    step = 0
    while step < args.teacher_steps:
        for b in loader(step):
            b.pop("i")
            loss = teacher(
                **b, labels=b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
            ).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == args.teacher_steps:
                break
    teacher.eval().requires_grad_(False)
    teacher_ppl = perplexity(teacher, tokenizer, held_out, max_length=64)
    print(f"[bench] teacher: {args.teacher_steps} steps, perplexity {teacher_ppl:.2f}", flush=True)

    def build_cache(k, tmp):
        plan = CachePlan(topk=k, temperature=1.0)
        ordered = DataLoader(rows, batch_size=64, collate_fn=pad)
        parts = [family.cache_rows(teacher, None, tokenizer, b, plan) for b in ordered]
        Path(tmp, "shards").mkdir()
        facts = write_shard(Path(tmp, shard_name("train", 0)), assemble_shard(parts))
        entry = {
            "split": "train",
            "start": 0,
            "rows": len(rows),
            "file": shard_name("train", 0),
            **facts,
        }
        manifest = build_manifest("bench", plan, {"train": len(rows)}, [entry])
        return ShardedCache(manifest, lambda f: str(Path(tmp, f)))

    def student_run(cache):
        torch.manual_seed(1)
        student = build_student(
            teacher, StudentSize(2, 128, 4, 512), init="every_other_layer",
            auto_class=AutoModelForCausalLM,
        ).train()  # fmt: skip
        model = GenerativeDistillationModel(
            student,
            TokenObjective({"lm": 0.5, "lm_kl": 0.5}, TokenSettings(num_chunks=2)),
            BatchIds.from_model(teacher.config, tokenizer),
        )
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
        step, started = 0, time.perf_counter()
        while step < args.student_steps:
            for b in loader(1000 + step):
                index = b.pop("i")
                if cache is None:
                    t_out = family.teacher_outputs(model, teacher, None, b)
                else:
                    t_out = family.cached_outputs(cache, "train", index, b, torch.float32)
                loss, _ = model(b, t_out)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step == args.student_steps:
                    break
        seconds = time.perf_counter() - started
        student.eval()
        return {
            "perplexity": perplexity(student, tokenizer, held_out, max_length=64),
            "train_s": seconds,
        }

    quality = {"full (live teacher)": student_run(None)}
    print(f"[bench] full KD: {quality['full (live teacher)']}", flush=True)
    for k in args.k:
        with tempfile.TemporaryDirectory() as tmp:
            quality[f"top-{k} (cache)"] = student_run(build_cache(k, tmp))
        print(f"[bench] top-{k} KD: {quality[f'top-{k} (cache)']}", flush=True)
    full = quality["full (live teacher)"]["perplexity"]
    for q in quality.values():
        q["vs_full"] = q["perplexity"] / full - 1
    _write(
        "lm",
        {
            "benchmark": "teacher_cache_lm",
            "bytes": {"vocab": 50257, "full_fp16_bytes_per_token": 2 * 50257, "topk": sizes},
            "quality": {
                "teacher": f"tiny-gpt2 architecture (4 x 128, {vocab:,} tokens) trained on "
                + ("docstrings" + (f" + {len(extra):,} lines of {args.text}" if extra else "")),
                "vocab": vocab,
                "train_rows": len(rows),
                "teacher_steps": args.teacher_steps,
                "teacher_perplexity": teacher_ppl,
                "student": "2 x 128, every_other_layer, {lm: 0.5, lm_kl: 0.5}, T = 1",
                "student_steps": args.student_steps,
                "held_out_rows": len(held_out["text"]),
                "runs": quality,
            },
        },
        args.out,
    )
    assert math.isfinite(full)


def _bpe_teacher_folder(base: str, texts: list[str], vocab: int, work: str | None) -> str:
    """The tiny GPT-2 architecture of `base` with a byte-level BPE tokenizer of `vocab`
    tokens trained on `texts` (every pair seen at least once may merge, so the vocabulary
    reaches its size on a few MB of text); config and tokenizer saved to a folder."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoConfig, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab, min_frequency=1, special_tokens=[EOS])
    if bpe.get_vocab_size() != vocab:
        raise SystemExit(f"--vocab {vocab}: the text yields only {bpe.get_vocab_size()} tokens")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, pad_token=EOS
    )
    config = AutoConfig.from_pretrained(base)
    config.vocab_size = vocab
    config.bos_token_id = config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    folder = Path(work or tempfile.mkdtemp(prefix="bench-bpe-")) / f"tiny-gpt2-bpe{vocab}"
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("inference")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--two-node", action="store_true", help="on two `ray start` nodes, 1 CPU each")
    p.add_argument(
        "--out", default=None, help="result file (default: teacher_cache_inference.json)"
    )
    p = sub.add_parser("train")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--steps", type=int, default=60)
    p = sub.add_parser("lm")
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--student-steps", type=int, default=150)
    p.add_argument("--k", type=int, nargs="+", default=[64])
    p.add_argument("--vocab", type=int, default=None, help="train a BPE vocabulary of N tokens")
    p.add_argument("--text", nargs="*", default=[], help="extra training text files")
    p.add_argument("--work", default=None, help="folder for the --vocab teacher folder")
    p.add_argument("--out", default=None, help="result file (default: teacher_cache_lm.json)")
    args = parser.parse_args()
    {"inference": inference, "train": train, "lm": lm}[args.mode](args)


if __name__ == "__main__":
    main()
