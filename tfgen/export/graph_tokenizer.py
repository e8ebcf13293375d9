"""Tokenizers inside the TensorFlow graph, for exports that TF Serving runs alone.

`GraphTokenizer` picks the kind of the Python-side tokenizer (`tfgen.tokenizer.tokenizer_kind`):

- byte-level BPE (GPT-2's, SmolLM's): keras-hub's `BytePairTokenizer` in its TensorFlow
  workflow: regex splitting is the one tensorflow-text op (`RegexSplitWithOffsets`); lookups,
  the merge loop and the byte mapping are core TensorFlow ops. Tokenizers that isolate each
  digit before GPT-2's regex (SmolLM, StarCoder: a `Digits` pre-tokenizer) get that split first.
- SentencePiece (Gemma, Llama 2): tensorflow-text's `SentencepieceTokenizer` (the
  `sentencepiece` library the Python side runs, as the ops `SentencepieceOp`,
  `SentencepieceTokenizeOp`, `SentencepieceDetokenizeOp`), after the same split at control
  and user-defined tokens (`RegexSplitWithOffsets` with the Python side's pattern).

No Python runs at serving time.
"""
from __future__ import annotations

import json

import tensorflow as tf

from tfgen.tokenizer import SENTENCEPIECE, tokenizer_kind


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
    """Strings [B] <-> ragged token ids, with the same ids and text as the Python-side tokenizer.

    Special tokens written in the text (such as "<|endoftext|>", "<start_of_turn>") map to their
    ids, as the Python-side tokenizer does.
    """

    def __init__(self, tokenizer, name="tokenizer"):
        super().__init__(name=name)
        if tokenizer_kind(tokenizer) == SENTENCEPIECE:
            self.backend = SentencePieceGraphTokenizer(tokenizer)
        else:
            self.backend = BytePairGraphTokenizer(tokenizer)

    @property
    def split_digits(self) -> bool:
        """Whether digits are split off first (byte-level BPE of the SmolLM kind)."""
        return getattr(self.backend, "split_digits", False)

    def encode(self, text):
        """string [B] -> int32 ragged [B, None]."""
        return self.backend.encode(text)

    def decode(self, ids):
        """int32 ragged [B, None] -> string [B] (valid UTF-8)."""
        return self.backend.decode(ids)


class BytePairGraphTokenizer(tf.Module):
    """Byte-level BPE in the graph (keras-hub's tokenizer, core TF ops and one regex split)."""

    def __init__(self, tokenizer, name="byte_pair"):
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
        return tf.cast(_texts_of_pieces(self.bpe.tokenize(pieces.flat_values), pieces), tf.int32)

    def decode(self, ids):
        """int32 ragged [B, None] -> string [B]; bytes that are not valid UTF-8 become U+FFFD."""
        text = self.bpe.detokenize(ids)
        return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


class SentencePieceGraphTokenizer(tf.Module):
    """A `tfgen.sentencepiece_tokenizer.SentencePieceTokenizer` in the graph, step for step.

    Encode: split each text at its control and user-defined tokens (llama.cpp's first step; the
    Python side's pattern, in RE2), look those up, and run SentencePiece (the Python side's
    encoding model) on the stretches between them. Decode: SentencePiece with the Python side's
    decoding model.
    """

    def __init__(self, tokenizer, name="sentencepiece"):
        super().__init__(name=name)
        import tensorflow_text as tf_text

        from tfgen.sentencepiece_tokenizer import split_pattern

        self.encoder = tf_text.SentencepieceTokenizer(model=tokenizer.encoding_proto)
        self.decoder = (self.encoder if tokenizer.decoding_proto is tokenizer.encoding_proto
                        else tf_text.SentencepieceTokenizer(model=tokenizer.decoding_proto))
        split = tokenizer.split_tokens()  # text -> id
        self.pattern = split_pattern(split, _re2_char) if split else None
        if split:
            texts, ids = tf.constant(list(split)), tf.constant(list(split.values()), tf.int32)
            self.split_ids = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(texts, ids),
                                                       default_value=-1)

    def encode(self, text):
        """string [B] -> int32 ragged [B, None]."""
        if self.pattern is None:
            return self.encoder.tokenize(text)
        import tensorflow_text as tf_text

        pieces = tf_text.regex_split(text, self.pattern, self.pattern)  # ragged [B, pieces], none empty
        flat = pieces.flat_values  # [pieces]
        token = self.split_ids.lookup(flat)  # [pieces]: a split token's id, else -1
        is_token = token >= 0
        # The stretches of text through SentencePiece (a split token as "", which gives no ids) ...
        ids = self.encoder.tokenize(tf.where(is_token, tf.constant(""), flat))  # ragged [pieces, None]
        # ... and each split token as its one id, then every piece's ids in the text's order.
        tokens = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(token, is_token),
                                                  tf.cast(is_token, tf.int64))  # ragged [pieces, 0 or 1]
        return _texts_of_pieces(tf.concat([ids, tokens], axis=1), pieces)

    def decode(self, ids):
        """int32 ragged [B, None] -> string [B]; control and unknown tokens add nothing."""
        return self.decoder.detokenize(ids)


def _texts_of_pieces(ids, pieces):
    """Each piece's ids (ragged [pieces, None]) as each text's (ragged [B, None]), the texts split
    into pieces as `pieces` (ragged [B, pieces]) says."""
    return tf.RaggedTensor.from_row_splits(ids.flat_values, tf.gather(ids.row_splits, pieces.row_splits))


def _re2_char(char: str) -> str:
    """One character as an RE2 literal: ASCII letters and digits as they are, the rest as \\x{hex}."""
    return char if char.isascii() and char.isalnum() else f"\\x{{{ord(char):x}}}"
