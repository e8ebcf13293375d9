"""Byte-level BPE (GPT-2's, SmolLM's) inside the TensorFlow graph, for exports that TF Serving runs alone.

Built on keras-hub's `BytePairTokenizer` in its TensorFlow workflow: regex splitting is the one
tensorflow-text op (`RegexSplitWithOffsets`); lookups, the merge loop and the byte mapping are
core TensorFlow ops. No Python runs at serving time. Tokenizers that isolate each digit before
GPT-2's regex (SmolLM, StarCoder: a `Digits` pre-tokenizer) get that split in the graph first.
"""
from __future__ import annotations

import json

import tensorflow as tf


def vocabulary_and_merges(tokenizer):
    """(vocab dict, merges list of "a b" strings) of a transformers byte-level BPE tokenizer."""
    vocab = dict(tokenizer.get_vocab())
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"the in-graph tokenizer needs a byte-level BPE tokenizer, got {model.get('type')}")
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m for m in model["merges"]]
    return vocab, merges


def splits_digits(tokenizer) -> bool:
    """Whether the tokenizer isolates each digit before GPT-2's byte-level regex.

    Raises:
        ValueError: a pre-tokenizer the in-graph tokenizer cannot reproduce (a custom regex).
    """
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if any(kind not in ("ByteLevel", "Digits") for kind in kinds) or any(
            part.get("type") == "ByteLevel" and not part.get("use_regex", True) for part in parts):
        raise ValueError(f"the in-graph tokenizer reproduces GPT-2's byte-level regex, optionally after "
                         f"splitting digits; this tokenizer's pre-tokenizers are {kinds}")
    return any(part.get("type") == "Digits" and part.get("individual_digits") for part in parts)


class GraphTokenizer(tf.Module):
    """Strings [B] <-> ragged token ids, with the same ids as the Python-side tokenizer.

    Special tokens written in the text (such as "<|endoftext|>") map to their ids, as the
    transformers tokenizer does.
    """

    def __init__(self, tokenizer, name="tokenizer"):
        super().__init__(name=name)
        import keras_hub

        vocab, merges = vocabulary_and_merges(tokenizer)
        specials = [t for t in tokenizer.all_special_tokens if t in vocab]
        self.bpe = keras_hub.tokenizers.BytePairTokenizer(
            vocabulary=vocab, merges=merges, unsplittable_tokens=specials, dtype="int32",
            _allow_python_workflow=False,
        )
        # The merge cache is a mutable table the layer does not expose to tracking.
        self.merge_cache = self.bpe.cache.id2value
        self.split_digits = splits_digits(tokenizer)

    def encode(self, text):
        """string [B] -> int32 ragged [B, None]."""
        if not self.split_digits:
            return tf.cast(self.bpe.tokenize(text), tf.int32)
        import tensorflow_text as tf_text

        # Each digit alone, then GPT-2's regex inside each piece (as `tokenizers` applies them).
        pieces = tf_text.regex_split(text, r"\p{N}", r"\p{N}")  # ragged [B, pieces]
        # Known difference: keras-hub splits a run of 2+ whitespace characters at the end of a
        # piece (so right before a digit, e.g. "\n    1") into two tokens where `tokenizers`
        # keeps one; the text is the same, only its tokenization differs.
        ids = self.bpe.tokenize(pieces.flat_values)  # ragged [pieces, tokens]
        ids = tf.RaggedTensor.from_row_splits(ids.flat_values, tf.gather(ids.row_splits, pieces.row_splits))
        return tf.cast(ids, tf.int32)

    def decode(self, ids):
        """int32 ragged [B, None] -> string [B]; bytes that are not valid UTF-8 become U+FFFD."""
        text = self.bpe.detokenize(ids)
        return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
