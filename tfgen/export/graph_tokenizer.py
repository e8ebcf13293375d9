"""GPT-2 byte-level BPE inside the TensorFlow graph, for exports that TF Serving runs alone.

Built on keras-hub's `BytePairTokenizer` in its TensorFlow workflow: regex splitting is the one
tensorflow-text op (`RegexSplitWithOffsets`); lookups, the merge loop and the byte mapping are
core TensorFlow ops. No Python runs at serving time.
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

    def encode(self, text):
        """string [B] -> int32 ragged [B, None]."""
        return tf.cast(self.bpe.tokenize(text), tf.int32)

    def decode(self, ids):
        """int32 ragged [B, None] -> string [B]; bytes that are not valid UTF-8 become U+FFFD."""
        text = self.bpe.detokenize(ids)
        return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
