"""Tiny random teachers of every model type distill supports, each saved as a Hugging Face
folder with a real tokenizer (no hub access): encoders use the suite's 99-word WordPiece
tokenizer, decoders the packaged tiny-gpt2 byte-level BPE, encoder-decoders the packaged
tiny-bart BPE (both 2,048 tokens).

    folder = save_teacher("llama", tmp_path / "llama", wordpiece)   # config, weights, tokenizer

Shapes are the suite's: hidden 32, 4 layers (3 + 3 for encoder-decoders), 4 heads (2
key/value heads where the type has grouped-query attention), FFN 64.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
)

from distill.core.architectures import builtin_path

HIDDEN, LAYERS, HEADS, FFN = 32, 4, 4, 64
COMMON = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS)
ENCODER_IDS = dict(pad_token_id=0, max_position_embeddings=80)

# model_type -> config kwargs (tokenizer ids filled in by `tiny_config`).
ENCODERS: dict[str, dict] = {
    "bert": dict(**COMMON, intermediate_size=FFN),
    "roberta": dict(**COMMON, intermediate_size=FFN),
    "xlm-roberta": dict(**COMMON, intermediate_size=FFN),
    "electra": dict(**COMMON, intermediate_size=FFN, embedding_size=HIDDEN),
    "mpnet": dict(**COMMON, intermediate_size=FFN),
    "deberta-v2": dict(
        **COMMON,
        intermediate_size=FFN,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=16,
        max_relative_positions=32,
    ),
    "distilbert": dict(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN),
    "modernbert": dict(
        **COMMON,
        intermediate_size=FFN,
        global_attn_every_n_layers=2,
        local_attention=16,
        bos_token_id=2,
        cls_token_id=2,
        eos_token_id=3,
        sep_token_id=3,
    ),
}
DECODERS: dict[str, dict] = {
    "gpt2": dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN),
    "llama": dict(**COMMON, intermediate_size=FFN, num_key_value_heads=2),
    "mistral": dict(**COMMON, intermediate_size=FFN, num_key_value_heads=2, sliding_window=16),
    "gpt_neox": dict(**COMMON, intermediate_size=FFN, rotary_pct=0.5),
    "opt": dict(**COMMON, ffn_dim=FFN, word_embed_proj_dim=HIDDEN),
    "gpt_neo": dict(
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        num_heads=HEADS,
        intermediate_size=FFN,
        attention_types=[[["global", "local"], 2]],
        window_size=16,
    ),
    "gptj": dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, rotary_dim=4),
    "phi": dict(**COMMON, intermediate_size=FFN, num_key_value_heads=2),
    "qwen2": dict(
        **COMMON,
        intermediate_size=FFN,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=16,
        layer_types=["full_attention", "sliding_attention"] * 2,
    ),
    "qwen3": dict(**COMMON, intermediate_size=FFN, num_key_value_heads=2, head_dim=8),
    "gemma": dict(**COMMON, intermediate_size=FFN, num_key_value_heads=2, head_dim=16),
    "gemma2": dict(
        **COMMON,
        intermediate_size=FFN,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=16,
    ),
}
SEQ2SEQ: dict[str, dict] = {
    "t5": dict(
        d_model=HIDDEN, d_kv=8, d_ff=FFN, num_layers=3, num_decoder_layers=3, num_heads=HEADS
    ),
    "bart": dict(
        d_model=HIDDEN,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
    ),
}
MODEL_TYPES = {**ENCODERS, **DECODERS, **SEQ2SEQ}
AUTO = {"encoder": AutoModel, "causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}

# Model types whose job also runs in the default suite: none. There, every model type
# trains in process in the unit tier (tests/unit/core/test_model_type_coverage.py) and the
# examples run BERT, GPT-2 and BART jobs; every model type's job runs with `-m slow`.
REPRESENTATIVE: list[str] = []


def family_name(model_type: str) -> str:
    if model_type in ENCODERS:
        return "encoder"
    return "causal" if model_type in DECODERS else "seq2seq"


def lm_tokenizer(model_type: str):
    """The packaged BPE tokenizer a decoder (tiny-gpt2) or encoder-decoder (tiny-bart) uses."""
    arch = "builtin:tiny-gpt2" if model_type in DECODERS else "builtin:tiny-bart"
    return AutoTokenizer.from_pretrained(builtin_path(arch))


def tiny_config(model_type: str, tokenizer):
    """The tiny config of `model_type` with the tokenizer's special ids."""
    kwargs = dict(MODEL_TYPES[model_type])
    if model_type in ENCODERS:
        kwargs = {**ENCODER_IDS, **kwargs, "vocab_size": len(tokenizer)}
    else:
        ids = dict(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if tokenizer.bos_token_id is not None:
            ids["bos_token_id"] = tokenizer.bos_token_id
        if model_type in SEQ2SEQ:
            ids["decoder_start_token_id"] = (
                tokenizer.eos_token_id if model_type == "bart" else tokenizer.pad_token_id
            )
        else:
            ids["max_position_embeddings"] = 128
        kwargs = {**kwargs, **ids}
    return AutoConfig.for_model(model_type, **kwargs)


def build_teacher(model_type: str, tokenizer, seed: int = 0):
    """A seeded random teacher of `model_type` (eval mode)."""
    config = tiny_config(model_type, tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AUTO[family_name(model_type)].from_config(config)
    return model.eval()


def save_teacher(model_type: str, folder: str | Path, wordpiece, seed: int = 0) -> str:
    """Write a tiny random teacher of `model_type` and its tokenizer to `folder` (encoders:
    the `wordpiece` tokenizer; others: the packaged BPE one)."""
    tokenizer = wordpiece if model_type in ENCODERS else lm_tokenizer(model_type)
    model = build_teacher(model_type, tokenizer, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_lm_job(folder: Path) -> list[str]:
    """`--set` values of a small causal-LM job in `folder`: a tiny GPT-2 teacher (safetensors,
    so a worker can read parts of it alone), 64 short English lines, a 2-layer student, steps
    logged one by one (the LM service and on-policy resume tests)."""
    teacher = save_teacher("gpt2", folder / "gpt2", wordpiece=None, seed=3)
    texts = folder / "texts.txt"
    words = "the cat sat on the mat and the dog ran to the old house by the road".split()
    texts.write_text("\n".join(" ".join(words[i % 7 :] + words[: i % 5]) for i in range(64)))
    return [
        f"teacher.name={teacher}",
        f"data.train.path={texts}",
        "student.layers=2",
        "data.max_length=24",
        "data.max_eval_samples=8",
        "training.batch_size=4",
        "training.log_every=1",
        "training.warmup_steps=1",
        "evaluation.generation_length=4",
        "evaluation.throughput_texts=8",
        "evaluation.throughput_rounds=1",
    ]
