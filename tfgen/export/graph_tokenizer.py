"""Tokenizers inside the TensorFlow graph, for exports that TF Serving runs alone.

`GraphTokenizer` picks the kind of the Python-side tokenizer (`tfgen.tokenizer.tokenizer_kind`):

- byte-level BPE (GPT-2's, SmolLM's, Llama 3's, Qwen's): the pre-tokenizer's split regexes in
  RE2 (`SPLIT_REGEXES`; the one tensorflow-text op `RegexSplitWithOffsets`, plus core string ops
  for the lookahead RE2 lacks), then keras-hub's `BytePairTokenizer` merge loop, lookups and byte
  mapping (core TensorFlow ops); NFC (tensorflow-text's `NormalizeUTF8`) where the tokenizer
  normalizes so.
- SentencePiece (Gemma, Llama 2): tensorflow-text's `SentencepieceTokenizer` (the
  `sentencepiece` library the Python side runs, as the ops `SentencepieceOp`,
  `SentencepieceTokenizeOp`, `SentencepieceDetokenizeOp`), after the same split at control
  and user-defined tokens (`RegexSplitWithOffsets` with the Python side's pattern).

No Python runs at serving time.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from tfgen.tokenizer import (GPT2_SPLIT_REGEX, LLAMA3_SPLIT_REGEX, QWEN2_SPLIT_REGEX, SENTENCEPIECE,
                            tokenizer_kind)


def vocabulary_and_merges(tokenizer):
    """(vocab dict, merges list of "a b" strings) of a transformers byte-level BPE tokenizer."""
    vocab = dict(tokenizer.get_vocab())
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"the in-graph tokenizer needs a byte-level BPE tokenizer, got {model.get('type')}")
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m for m in model["merges"]]
    return vocab, merges


# -- byte-level BPE's pre-tokenizer regexes in RE2 ------------------------------------------------
# `tokenizers` runs its split regexes in Oniguruma; the graph has RE2 (tensorflow-text's
# RegexSplitWithOffsets). RE2 picks the same match as a backtracking engine (leftmost alternative,
# greedy quantifiers) but has no lookahead, and its classes differ from Oniguruma's Unicode ones:
# \s lacks \v and the non-ASCII spaces, and \p{L} / \p{N} miss the letters and digits Unicode 16
# added (RE2 in TF 2.21 has an older table). The classes below are Oniguruma's, written for RE2.
_SPACE = r"\t\n\x0b\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
_LINE_SPACE = _SPACE.replace(r"\n", "").replace(r"\r", "")  # \s without \r and \n
_LETTER = (r"\p{L}\x{1c89}-\x{1c8a}\x{a7cb}-\x{a7cd}\x{a7da}-\x{a7dc}\x{105c0}-\x{105f3}\x{10d4a}-\x{10d65}"
           r"\x{10d6f}-\x{10d85}\x{10ec2}-\x{10ec4}\x{11380}-\x{11389}\x{1138b}\x{1138e}\x{11390}-\x{113b5}"
           r"\x{113b7}\x{113d1}\x{113d3}\x{11bc0}-\x{11be0}\x{13460}-\x{143fa}\x{16100}-\x{1611d}"
           r"\x{16d40}-\x{16d6c}\x{18cff}\x{1e5d0}-\x{1e5ed}\x{1e5f0}\x{2ebf0}-\x{2ee5d}")
_NUMBER = (r"\p{N}\x{10d40}-\x{10d49}\x{116d0}-\x{116e3}\x{11bf0}-\x{11bf9}\x{16130}-\x{16139}"
           r"\x{16d70}-\x{16d79}\x{1ccf0}-\x{1ccf9}\x{1e5f1}-\x{1e5fa}")
_CLASSES = {"S": _SPACE, "T": _LINE_SPACE, "L": _LETTER, "N": _NUMBER}

# The byte-level pre-tokenizer regexes tfgen knows (Oniguruma, as in tokenizer.json), each with its
# RE2 form. Every one ends in `\s+(?!\S)|\s+`: a run of spaces before a word leaves its last space
# to the word (" word", " !"). RE2 instead matches the run *with* what its last space starts
# (`[S]*(?:...)`, the alternatives that may start at a space, or that space alone), and
# `_give_back_last_space` then cuts such a piece after the run minus its last space. `T` is what
# such a run may hold: Llama 3's and Qwen's regexes end runs at a newline (`\s*[\r\n]+` comes first).
_LLAMA3_RE2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n{L}{N}]?[{L}]+|[{N}]{{1,3}}| ?[^{S}{L}{N}]+[\r\n]*"
               r"|[{S}]*[\r\n]+|[{S}]*(?:[{T}][{L}]+| [^{S}{L}{N}]+[\r\n]*|[{S}])")
SPLIT_REGEXES = {  # Oniguruma pattern -> (name, RE2 pattern, what a run of spaces holds)
    GPT2_SPLIT_REGEX: ("GPT-2", r"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+"
                           r"|[{S}]*(?: [{L}]+| [{N}]+| [^{S}{L}{N}]+|[{S}])", "S"),
    LLAMA3_SPLIT_REGEX: ("Llama 3", _LLAMA3_RE2, "T"),
    QWEN2_SPLIT_REGEX: ("Qwen 2 / Qwen 3", _LLAMA3_RE2.replace("[{N}]{{1,3}}", "[{N}]"), "T"),
}


def pre_tokenizer_steps(tokenizer) -> List[Tuple[str, str, Optional[str]]]:
    """How the byte-level BPE tokenizer splits text before BPE, as RE2 steps the graph runs.

    Each step is (name, RE2 pattern, class of a run of spaces or None) and splits every piece
    of the step before into the pattern's matches; the class says the pattern is one of
    `SPLIT_REGEXES` (its runs of spaces give their last space back, `_give_back_last_space`).

    Raises:
        ValueError: a pre-tokenizer the in-graph tokenizer cannot reproduce, naming it.
    """
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not any(part.get("type") == "ByteLevel" for part in parts):
        raise ValueError(f"the in-graph tokenizer needs a byte-level BPE tokenizer (a ByteLevel "
                         f"pre-tokenizer) or a SentencePiece model; this one's pre-tokenizers are "
                         f"{[part.get('type') for part in parts]} (a Hugging Face directory with a "
                         f"SentencePiece-style tokenizer.json needs its tokenizer.model)")
    steps = []
    for part in parts:
        kind = part.get("type")
        if kind == "Digits":
            steps.append(("digits", f"[{_NUMBER}]" + ("" if part.get("individual_digits") else "+"), None))
        elif kind == "ByteLevel" and not part.get("add_prefix_space"):
            if part.get("use_regex", True):
                steps.append(_split_step(GPT2_SPLIT_REGEX))
        elif (kind == "Split" and "Regex" in (part.get("pattern") or {}) and not part.get("invert")
              and part.get("behavior") == "Isolated"):
            steps.append(_split_step(part["pattern"]["Regex"]))
        else:
            known = ", ".join(name for name, _, _ in SPLIT_REGEXES.values())
            raise ValueError(f"the in-graph tokenizer reproduces byte-level pre-tokenizers (ByteLevel "
                             f"without a prefix space, Digits, Split with one of the regexes of {known}); "
                             f"this tokenizer has {json.dumps(part)[:300]}")
    return steps


def _split_step(regex: str) -> Tuple[str, str, str]:
    if regex not in SPLIT_REGEXES:
        raise ValueError(f"the in-graph tokenizer knows the split regexes of "
                         f"{', '.join(name for name, _, _ in SPLIT_REGEXES.values())}; this tokenizer splits "
                         f"with {regex!r}")
    name, pattern, run = SPLIT_REGEXES[regex]
    return name, pattern.format(**_CLASSES), _CLASSES[run]


def splits_digits(tokenizer) -> bool:
    """Whether the tokenizer splits digits off before its byte-level regex (SmolLM, StarCoder).

    Raises:
        ValueError: a pre-tokenizer the in-graph tokenizer cannot reproduce (`pre_tokenizer_steps`).
    """
    return any(name == "digits" for name, _, _ in pre_tokenizer_steps(tokenizer))


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
        # Traced once and called by every signature (each traced its own copy: ~4 s apiece).
        self._encode = tf.function(self.backend.encode, input_signature=[tf.TensorSpec([None], tf.string)])

    @property
    def split_digits(self) -> bool:
        """Whether digits are split off first (byte-level BPE of the SmolLM kind)."""
        return getattr(self.backend, "split_digits", False)

    def encode(self, text):
        """string [B] -> int32 ragged [B, None]."""
        return self._encode(text)

    def decode(self, ids):
        """int32 ragged [B, None] -> string [B] (valid UTF-8)."""
        return self.backend.decode(ids)


class BytePairGraphTokenizer(tf.Module):
    """Byte-level BPE in the graph, the steps `tokenizers` takes, in RE2 and core TF ops.

    Encode: NFC where the tokenizer normalizes so (Qwen), split off the added tokens written in the
    text (as `SentencePieceGraphTokenizer` does), split the rest with the pre-tokenizer's regexes
    (`pre_tokenizer_steps`), and merge each piece with keras-hub's BPE (its merge loop and cache;
    with `ignore_merges`, as Llama 3 sets it, a piece that is a token is that token). Decode:
    special tokens dropped (the Python side decodes with skip_special_tokens), the rest through
    keras-hub's byte mapping.
    """

    def __init__(self, tokenizer, name="byte_pair"):
        super().__init__(name=name)
        import keras_hub

        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        vocab, merges = vocabulary_and_merges(tokenizer)
        self.steps = pre_tokenizer_steps(tokenizer)
        self.split_digits = any(step[0] == "digits" for step in self.steps)
        self.nfc = _normalizer(spec.get("normalizer"))
        self.ignore_merges = bool(spec["model"].get("ignore_merges"))
        self.bpe = keras_hub.tokenizers.BytePairTokenizer(
            vocabulary=vocab, merges=merges, dtype="int32", _allow_python_workflow=False)
        # The merge cache is a mutable table the layer does not expose to tracking.
        self.merge_cache = self.bpe.cache.id2value
        added = {token["content"]: int(token["id"]) for token in spec.get("added_tokens", [])}
        self.added = _SplitTokens(added) if added else None
        special = sorted({int(token["id"]) for token in spec.get("added_tokens", []) if token.get("special")}
                         | set(tokenizer.all_special_ids))
        self.special_ids = tf.constant(special or [-1], tf.int32)  # [S]

    def encode(self, text):
        """string [B] -> int32 ragged [B, None]."""
        if self.nfc:
            import tensorflow_text as tf_text

            text = tf_text.normalize_utf8(text, "NFC")
        if self.added is None:
            return self._words_to_ids(text)
        return self.added.encode(text, self._words_to_ids)

    def _words_to_ids(self, texts):
        """string [N] -> int32 ragged [N, None]: each text pre-tokenized and merged."""
        words = tf.RaggedTensor.from_row_lengths(texts, tf.ones_like(texts, tf.int64))  # [N, 1]
        for _, pattern, run in self.steps:
            words = _split_pieces(words, pattern, run)  # ragged [N, words]
        return _texts_of_pieces(self._merge(words.flat_values), words)

    def _merge(self, words):
        """string [W] (none empty) -> int32 ragged [W, None]: keras-hub's BPE of each word."""
        bpe = self.bpe
        merged = bpe.cache.lookup(words)  # [W]: "tok tok ..." for words seen before, else ""
        unseen = merged == ""
        if self.ignore_merges:  # a word that is a token stays whole
            symbols = tf.strings.reduce_join(bpe.byte2unicode.lookup(tf.strings.bytes_split(words)), axis=-1)
            whole = bpe.token_to_id_map.lookup(symbols) >= 0
            merged, unseen = tf.where(whole, symbols, merged), unseen & ~whole

        def merge_unseen():
            bpe._bpe_merge_and_update_cache_tf(tf.boolean_mask(words, unseen))
            return tf.where(unseen, bpe.cache.lookup(words), merged)

        merged = tf.cond(tf.reduce_any(unseen), merge_unseen, lambda: merged)
        return tf.cast(bpe.token_to_id_map.lookup(tf.strings.split(merged, sep=" ")), tf.int32)

    def decode(self, ids):
        """int32 ragged [B, None] -> string [B]; bytes that are not valid UTF-8 become U+FFFD."""
        ids = tf.cast(ids, tf.int32)
        special = tf.reduce_any(tf.equal(ids.flat_values[:, None], self.special_ids[None, :]), axis=1)
        text = self.bpe.detokenize(tf.ragged.boolean_mask(ids, ids.with_flat_values(~special)))
        return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


def _normalizer(spec) -> bool:
    """Whether the tokenizer normalizes to NFC (Qwen); refuses the normalizers the graph has not."""
    if spec is None:
        return False
    kinds = [part.get("type") for part in spec.get("normalizers", [spec])] if spec.get("type") == "Sequence" \
        else [spec.get("type")]
    if any(kind != "NFC" for kind in kinds):
        raise ValueError(f"the in-graph byte-level BPE tokenizer normalizes to NFC or not at all; this "
                         f"tokenizer's normalizers are {kinds}")
    return bool(kinds)


def _split_pieces(pieces, pattern: str, run: Optional[str]):
    """ragged [N, P] -> ragged [N, P']: every piece split into the matches of `pattern`."""
    import tensorflow_text as tf_text

    words = tf_text.regex_split(pieces.flat_values, pattern, pattern)  # ragged [pieces, words]
    if run is not None:
        words = _give_back_last_space(words, run)
    return tf.RaggedTensor.from_row_splits(words.flat_values, tf.gather(words.row_splits, pieces.row_splits))


def _give_back_last_space(words, run: str):
    """The `\\s+(?!\\S)` rule after an RE2 split (`SPLIT_REGEXES`): ragged [N, W] -> [N, W'].

    A word that starts with two or more spaces (of class `run`) was matched as a run of spaces
    together with what the run's last space starts: it becomes the run without its last space,
    then the rest. A word of spaces only that ends its piece keeps its run (at the end of the
    text the lookahead holds for the whole run).
    """
    flat = words.flat_values  # [W]
    position = tf.ragged.range(words.row_lengths())  # ragged [N, W]
    last = (position == tf.expand_dims(words.row_lengths() - 1, 1)).flat_values  # [W]
    cut = (tf.strings.regex_full_match(flat, f"(?s)[{run}]{{2,}}[^{_SPACE}].*")
           | tf.strings.regex_full_match(flat, f"[{run}]{{2,}}") & ~last)
    head = tf.where(cut, tf.strings.regex_replace(flat, f"(?s)^([{run}]*)[{run}].*", r"\1",
                                                  replace_global=False), "")  # [W]
    start = tf.strings.length(head)
    tail = tf.strings.substr(flat, start, tf.strings.length(flat) - start)  # [W]
    both = tf.reshape(tf.stack([head, tail], axis=1), [-1])  # [2W]: head, tail, head, tail, ...
    counts = words.with_flat_values(1 + tf.cast(cut, tf.int64))  # ragged [N, W]: 2 where cut
    return tf.RaggedTensor.from_row_lengths(tf.boolean_mask(both, both != ""), tf.reduce_sum(counts, axis=1))


class _SplitTokens(tf.Module):
    """Added tokens (special or not) written in the text: split off first, each as its id, the
    stretches between them tokenized by the caller's function. Longest token first at each
    position, leftmost first, as `tokenizers` and llama.cpp match them."""

    def __init__(self, tokens: Dict[str, int], name="split_tokens"):
        super().__init__(name=name)
        from tfgen.sentencepiece_tokenizer import split_pattern

        self.pattern = split_pattern(tokens, _re2_char)
        texts, ids = tf.constant(list(tokens)), tf.constant(list(tokens.values()), tf.int32)
        self.ids = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(texts, ids),
                                             default_value=-1)

    def encode(self, text, encode_stretches):
        """string [B] -> int32 ragged [B, None]; encode_stretches: string [N] -> ragged [N, None]."""
        import tensorflow_text as tf_text

        pieces = tf_text.regex_split(text, self.pattern, self.pattern)  # ragged [B, pieces], none empty
        flat = pieces.flat_values  # [pieces]
        token = self.ids.lookup(flat)  # [pieces]: a split token's id, else -1
        is_token = token >= 0
        # The stretches of text (a split token as "", which gives no ids) ...
        ids = encode_stretches(tf.where(is_token, tf.constant(""), flat))  # ragged [pieces, None]
        # ... and each split token as its one id, then every piece's ids in the text's order.
        tokens = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(token, is_token),
                                                  tf.cast(is_token, tf.int64))  # ragged [pieces, 0 or 1]
        return _texts_of_pieces(tf.concat([tf.cast(ids, tf.int32), tokens], axis=1), pieces)


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

        self.encoder = tf_text.SentencepieceTokenizer(model=tokenizer.encoding_proto)
        self.decoder = (self.encoder if tokenizer.decoding_proto is tokenizer.encoding_proto
                        else tf_text.SentencepieceTokenizer(model=tokenizer.decoding_proto))
        split = tokenizer.split_tokens()  # text -> id
        self.split = _SplitTokens(split) if split else None

    def encode(self, text):
        """string [B] -> int32 ragged [B, None]."""
        if self.split is None:
            return self.encoder.tokenize(text)
        return self.split.encode(text, self.encoder.tokenize)

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
