"""Evaluation of generative students against their teacher, in one process so machine
noise hits both alike: held-out perplexity, BLEU / chrF of generations (sacrebleu, offline)
for seq2seq tasks, and generation throughput in new tokens per second."""

from __future__ import annotations

import math
import statistics
import time

import torch

from distill.core.data import tokenized_batches
from distill.core.generative import (
    BatchIds,
    lm_head,
    prepare_seq2seq_batch,
    target_hidden,
    text_prefixes,
)
from distill.core.student import is_encoder_decoder
from distill.core.token_losses import IGNORE_INDEX


def _batches(tokenizer, rows: dict[str, list[str]], batch_size: int, max_length: int):
    texts, targets = rows["text"], rows.get("target")
    labels = (
        tokenized_batches(tokenizer, targets, batch_size, max_length)
        if targets is not None
        else None
    )
    for i, enc in enumerate(tokenized_batches(tokenizer, texts, batch_size, max_length)):
        if labels is not None:
            lab = labels[i]
            enc["labels"] = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, IGNORE_INDEX)
        yield enc


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    rows: dict[str, list[str]],
    *,
    max_length: int = 64,
    batch_size: int = 32,
    noise_ratio: float = 0.3,
    seed: int = 0,
) -> float:
    """exp(mean token cross-entropy) on held-out rows: next tokens of `text` (causal);
    `target` given `text` (seq2seq pairs), or `text` from its text-infilled copy (seq2seq
    without targets; the same noise for every model, from `seed`)."""
    total, count = _nll(model, tokenizer, rows, max_length, batch_size, noise_ratio, seed)
    return math.exp(total / max(count, 1))


@torch.no_grad()
def char_perplexity(
    model, tokenizer, texts: list[str], *, max_length: int = 64, batch_size: int = 32
) -> float:
    """exp(cross-entropy per character) of a causal LM on `texts`: comparable across
    tokenizers when every model scores the same characters (`shared_prefixes`). A model's
    first token has no prediction, so its characters count without a loss (slightly
    favouring the model whose first token is longer)."""
    total, _ = _nll(model, tokenizer, {"text": texts}, max_length, batch_size, 0.3, 0)
    return math.exp(total / max(sum(len(t) for t in texts), 1))


def shared_prefixes(texts: list[str], tokenizers, max_length: int) -> list[str]:
    """Each text cut to the characters that every tokenizer keeps within `max_length` tokens
    (special tokens included), so models with different tokenizers score the same text."""
    out = list(texts)
    for _ in range(2):  # a prefix may tokenize into more pieces at its cut: settle twice
        for tokenizer in tokenizers:
            enc = tokenizer(
                out, truncation=True, max_length=max_length, return_offsets_mapping=True
            )
            out = [
                text[: max((end for _, end in offsets), default=0)]
                for text, offsets in zip(out, enc["offset_mapping"])
            ]
    return out


def _nll(model, tokenizer, rows, max_length, batch_size, noise_ratio, seed) -> tuple[float, int]:
    """(summed target-token cross-entropy, target tokens) of `perplexity`."""
    model.eval()
    seq2seq = is_encoder_decoder(model.config)
    ids = BatchIds.from_model(model.config, tokenizer, noise_ratio=noise_ratio)
    generator = torch.Generator().manual_seed(seed)
    head = lm_head(model)
    total, count = 0.0, 0
    for batch in _batches(tokenizer, rows, batch_size, max_length):
        if seq2seq:
            batch = prepare_seq2seq_batch(batch, ids, generator)
        hidden, targets = target_hidden(model, batch)
        keep = targets != IGNORE_INDEX
        logits = head(hidden[keep]).float()
        total += float(torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum"))
        count += int(keep.sum())
    return total, count


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    sources: list[str],
    *,
    max_new_tokens: int = 48,
    num_beams: int = 1,
    batch_size: int = 32,
    max_length: int = 64,
) -> list[str]:
    model.eval()
    out: list[str] = []
    for enc in tokenized_batches(tokenizer, sources, batch_size, max_length):
        ids = model.generate(
            **{k: v.to(model.device) for k, v in enc.items()},
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            early_stopping=num_beams > 1,
        )
        out += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return out


@torch.no_grad()
def continue_texts(
    model,
    tokenizer,
    texts: list[str],
    *,
    prefix_fraction: float = 0.5,
    num_beams: int = 1,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    max_length: int = 64,
) -> list[str]:
    """Sequence-level KD for a decoder teacher on plain text (Kim & Rush 2016): each text
    cut to its first `prefix_fraction` of tokens (`generative.text_prefixes`: of its first
    `max_length`, at least one; special tokens such as BOS are kept but not counted) and
    continued by the model's beam search (greedy at `num_beams=1`) for up to
    `max_new_tokens`. Returns text, in order:
    the row's own characters up to the prefix's last token followed by the decoded
    continuation, so a student with another tokenizer can read it. A text without tokens
    comes back as it is."""
    model.eval()
    cuts = text_prefixes(tokenizer, texts, prefix_fraction=prefix_fraction, max_length=max_length)
    prefixes = [cut[0] if cut else None for cut in cuts]
    ends = [cut[1] if cut else 0 for cut in cuts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    todo = [i for i, p in enumerate(prefixes) if p is not None]
    out = list(texts)
    for start in range(0, len(todo), batch_size):
        rows = todo[start : start + batch_size]
        chunk = [prefixes[i] for i in rows]
        width = max(len(p) for p in chunk)
        # Left padding: every prompt ends where generation starts.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=model.device)
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device
        )
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            early_stopping=num_beams > 1,
            pad_token_id=pad,
        )[:, width:]
        for i, new in zip(rows, generated.tolist()):
            out[i] = texts[i][: ends[i]] + _decoded_continuation(tokenizer, prefixes[i], new)
    return out


def _decoded_continuation(tokenizer, prefix: list[int], new: list[int]) -> str:
    """The text `new` adds after `prefix`: decoded together and minus the prefix's own
    decoding, so a continuation that starts a word keeps its space (SentencePiece drops a
    leading one when `new` is decoded alone)."""
    whole = tokenizer.decode(prefix + new, skip_special_tokens=True)
    head = tokenizer.decode(prefix, skip_special_tokens=True)
    if whole.startswith(head):
        return whole[len(head) :]
    return tokenizer.decode(new, skip_special_tokens=True)


def bleu_chrf(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, default tokenisation): standard, offline."""
    import sacrebleu

    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
    }


def _prompts(model, tokenizer, texts: list[str], prompt_tokens: int, batch_size: int):
    """Left-padded prompt batches (decoders) or source batches (seq2seq)."""
    seq2seq = is_encoder_decoder(model.config)
    side = tokenizer.padding_side
    tokenizer.padding_side = "right" if seq2seq else "left"
    try:
        return tokenized_batches(
            tokenizer,
            texts,
            batch_size,
            64 if seq2seq else prompt_tokens,
            return_token_type_ids=False,  # BERT-style tokenizers of LMs: not an input
        )
    finally:
        tokenizer.padding_side = side


@torch.no_grad()
def generation_throughput(
    models: dict,
    tokenizer,
    texts: list[str],
    *,
    new_tokens: int = 32,
    rounds: int = 3,
    batch_size: int = 16,
    prompt_tokens: int = 16,
) -> dict[str, float]:
    """New tokens per second of greedy generation for each model: exactly `new_tokens` per
    prompt (no early stop), a warm-up pass, then `rounds` interleaved timed passes; the
    median round counts. `tokenizer`: one for every model, or {model name: its own}."""
    own = tokenizer if isinstance(tokenizer, dict) else dict.fromkeys(models, tokenizer)
    batches = {
        name: _prompts(m, own[name], texts, prompt_tokens, batch_size) for name, m in models.items()
    }

    def run(model, prompt_batches, tokenizer) -> int:
        produced = 0
        for enc in prompt_batches:
            out = model.generate(
                **enc,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
            )
            produced += enc["input_ids"].shape[0] * new_tokens
            del out
        return produced

    for name, model in models.items():
        model.eval()
        run(model, batches[name][:1], own[name])
    timings: dict[str, list[float]] = {name: [] for name in models}
    produced = {}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            produced[name] = run(model, batches[name], own[name])
            timings[name].append(time.perf_counter() - start)
    return {name: produced[name] / statistics.median(t) for name, t in timings.items()}
