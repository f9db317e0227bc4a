"""Packaged model architectures without weights, for offline machines: `builtin:tiny-gpt2`
and `builtin:tiny-bart` are folders holding a `config.json` and a byte-level BPE tokenizer
(2,048 tokens, trained on the built-in docstring corpus), but no weights. A `kind: pretrain`
stage trains one from scratch; later stages use it as `teacher.name: stage:NAME`.

Regenerate the folders (deterministic for a given Python and `tokenizers` version):

    python -m distill.core.architectures.build
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_PREFIX = "builtin:"
ROOT = Path(__file__).resolve().parent
VOCAB_SIZE = 2048
MAX_POSITIONS = 128


def builtin_architectures() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "config.json").is_file())


def builtin_path(name: str) -> str | None:
    """The packaged folder for `builtin:NAME`, or None when `name` names no architecture."""
    if not name.startswith(BUILTIN_PREFIX):
        return None
    folder = ROOT / name.removeprefix(BUILTIN_PREFIX)
    return str(folder) if (folder / "config.json").is_file() else None


def _write_tokenizer(folder: Path, special_tokens: dict[str, str], post_processor=None):
    """Train the byte-level BPE tokenizer on the built-in docstring corpus and save it to
    `folder` as a fast tokenizer whose roles (`bos_token`, `pad_token`, ...) are
    `special_tokens`; the special tokens take the first ids, in the order the roles name
    them. `post_processor`: the template that adds them around a text (BART's <s> ... </s>).
    Returns the trained `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from distill.core.corpus import docstring_sentences

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(dict.fromkeys(special_tokens.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docstring_sentences(), trainer)
    if post_processor is not None:
        tok.post_processor = post_processor
    PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens).save_pretrained(folder)
    return tok


def _gpt2(folder: Path) -> None:
    from transformers import GPT2Config

    end = "<|endoftext|>"
    # GPT-2 has one special token for every role, padding too (padding is masked out).
    roles = ("bos_token", "eos_token", "unk_token", "pad_token")
    tok = _write_tokenizer(folder, dict.fromkeys(roles, end))
    eos = tok.token_to_id(end)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=MAX_POSITIONS,
        n_embd=128,
        n_layer=4,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    config.save_pretrained(folder)


def _bart(folder: Path) -> None:
    from tokenizers import processors
    from transformers import BartConfig

    special_tokens = {
        "bos_token": "<s>",  # ids 0-4, in this order
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    }
    template = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    _write_tokenizer(folder, special_tokens, template)
    config = BartConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=MAX_POSITIONS,
        d_model=128,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        dropout=0.1,
    )
    config.save_pretrained(folder)


def main() -> None:
    for name, make in (("tiny-gpt2", _gpt2), ("tiny-bart", _bart)):
        folder = ROOT / name
        folder.mkdir(exist_ok=True)
        make(folder)
        print(f"wrote {folder}: {sorted(p.name for p in folder.iterdir())}")
