"""SentencePiece tokenizers (Gemma, Llama 2, TinyLlama, Mistral) on the Python side.

A GGUF file whose `tokenizer.ggml.model` is "llama" holds a SentencePiece vocabulary: pieces,
scores and token types. llama.cpp tokenizes it as SentencePiece's BPE does (merge the adjacent
pair whose piece scores highest, leftmost first; characters outside the vocabulary fall back to
<0xNN> byte pieces), so `model_proto_from_gguf` rebuilds the SentencePiece model, and the
`sentencepiece` library (the same C++ code that tensorflow-text runs in exported graphs) does
the tokenizing, on the Python side and in the graph alike.

`SentencePieceTokenizer` adds what llama.cpp does around SentencePiece, so the ids are
llama.cpp's: user-defined tokens (Gemma's runs of spaces, tabs and newlines, HTML tags) and
control tokens (`<start_of_turn>`, written by chat templates) written in the text are split off
first and map to their ids; each stretch of text between them is tokenized on its own, with a
space in front when the model adds one (`tokenizer.ggml.add_space_prefix`: Llama 2 yes, Gemma
no).

Decoding is the other half: each token adds its piece's text (U+2581 as a space, <0xNN> as
that byte; byte runs decode as UTF-8, invalid bytes as U+FFFD) and control tokens add nothing
when skipped. The space a model adds in front of a text is *not* taken off again: a completion's
first token "▁blue" decodes as " blue", so prompt + completion is the text, and every token's
bytes are the same wherever it stands (the in-loop stop-string check relies on it).
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from tfgen.chat_template import render_chat_template

SPACE = "\u2581"  # SentencePiece's escaped space

# GGUF token types (`tokenizer.ggml.token_type`, gguf.TokenType) use SentencePiece's numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_TYPES = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def model_proto_from_gguf(tokens: Sequence[str], scores: Optional[Sequence[float]],
                          token_types: Optional[Sequence[int]], *, bos_id: int, eos_id: int,
                          unk_id: Optional[int], pad_id: Optional[int], add_space_prefix: bool,
                          name: str = "the GGUF vocabulary") -> bytes:
    """A serialized SentencePiece `ModelProto` that tokenizes as llama.cpp's SPM tokenizer does.

    Model type BPE (llama.cpp merges by score, as SentencePiece's BPE does), byte fallback when
    the vocabulary has the 256 <0xNN> byte pieces, the identity normalizer (no NFKC) with spaces
    escaped as U+2581, no collapsing of whitespace, and a dummy space prefix exactly when the
    GGUF asks for one. User-defined pieces get their spaces back as U+2581 (llama.cpp's converter
    wrote Gemma's "▁▁" as two spaces), so SentencePiece on its own matches them as whole tokens
    the way llama.cpp does, and this model alone gives llama.cpp's ids for vocabularies like
    Gemma's. `SentencePieceTokenizer` runs it with llama.cpp's steps around it (the module
    docstring), which also covers control tokens in the text and the space prefix after each
    user-defined token. Unknown tokens decode as nothing, as in llama.cpp.

    Args:
        tokens, scores, token_types: `tokenizer.ggml.tokens`, `.scores` (default 0) and
            `.token_type` (default normal).
        bos_id, eos_id, unk_id, pad_id: the special ids (unk_id None: the unknown-type token, or
            llama.cpp's default 0; pad_id None: none).
        add_space_prefix: `tokenizer.ggml.add_space_prefix`.
        name: what error messages call the vocabulary (the file's path).

    Raises:
        ValueError: empty or repeated pieces, a token type outside 1..6, part of the 256 byte
            pieces, or a special id outside the vocabulary.
    """
    model_pb2 = _model_pb2()
    size = len(tokens)
    scores = [0.0] * size if scores is None else list(scores)
    types = [NORMAL] * size if token_types is None else [int(t) for t in token_types]
    if len(scores) != size or len(types) != size:
        raise ValueError(f"{name}: {size} tokens but {len(scores)} scores and {len(types)} token types")
    bad = next((i for i, kind in enumerate(types) if kind not in _TYPES), None)
    if bad is not None:
        raise ValueError(f"{name}: token {bad} ({tokens[bad]!r}) has token type {types[bad]}; "
                         f"known types are 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte")
    if unk_id is None:
        unk_id = types.index(UNKNOWN) if UNKNOWN in types else 0
    for label, value in (("bos", bos_id), ("eos", eos_id), ("unknown", unk_id), ("padding", pad_id)):
        if value is not None and not 0 <= int(value) < size:
            raise ValueError(f"{name}: the {label} token id {value} is outside the vocabulary of {size}")
    # SentencePiece needs exactly one unknown piece: the unk id's (Gemma's GGUF types it control).
    types = [CONTROL if kind == UNKNOWN else kind for kind in types]
    types[unk_id] = UNKNOWN
    byte_ids = [i for i, kind in enumerate(types) if kind == BYTE]
    matches = [_BYTE_PIECE.fullmatch(tokens[i]) for i in byte_ids]
    byte_values = sorted(int(match.group(1), 16) for match in matches if match)
    if byte_ids and (len(byte_ids) != 256 or byte_values != list(range(256))):
        raise ValueError(f"{name}: {len(byte_ids)} byte tokens, not the 256 pieces <0x00>..<0xFF> that byte "
                         "fallback needs")

    proto = model_pb2.ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type = model_pb2.TrainerSpec.BPE
    trainer.vocab_size = size
    trainer.byte_fallback = bool(byte_ids)
    trainer.unk_id, trainer.bos_id, trainer.eos_id = int(unk_id), int(bos_id), int(eos_id)
    trainer.pad_id = -1 if pad_id is None else int(pad_id)
    trainer.unk_piece, trainer.bos_piece, trainer.eos_piece = tokens[unk_id], tokens[bos_id], tokens[eos_id]
    if pad_id is not None:
        trainer.pad_piece = tokens[pad_id]
    trainer.unk_surface = ""  # llama.cpp shows nothing for an unknown token
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.precompiled_charsmap = b""
    normalizer.add_dummy_prefix = bool(add_space_prefix)
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    seen: Dict[str, int] = {}
    for index, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = token.replace(" ", SPACE) if kind == USER_DEFINED else token
        if not piece:
            raise ValueError(f"{name}: token {index} is empty; SentencePiece pieces need text")
        if piece in seen:
            raise ValueError(f"{name}: tokens {seen[piece]} and {index} are both {piece!r}")
        seen[piece] = index
        proto.pieces.add(piece=piece, score=float(score), type=kind)
    return proto.SerializeToString()


def _model_pb2():
    """SentencePiece's `ModelProto` classes: the sentencepiece package's, else transformers' copy.

    sentencepiece 0.2.3's generated module demands protobuf 7, older than TensorFlow allows; the
    message is the same, and transformers ships it generated for protobuf 4 and later.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2
    except Exception:  # noqa: BLE001 - protobuf's VersionError (gencode newer than the runtime)
        from transformers.utils import sentencepiece_model_pb2_new as sentencepiece_model_pb2
    return sentencepiece_model_pb2


def working_protos(model_proto: bytes) -> Tuple[bytes, bytes]:
    """The (encoding, decoding) models `SentencePieceTokenizer` runs, derived from a model.

    Encoding: user-defined pieces with U+2581 back to spaces, which escaped text never holds, so
    SentencePiece neither matches nor merges into them; the tokenizer splits them off the raw
    text first, as llama.cpp does (a "▁▁" from a dummy prefix before " x" is then two pieces,
    as in llama.cpp, not Gemma's user-defined "  "). Decoding: also no dummy prefix, since
    SentencePiece drops the first piece's leading U+2581 when the model adds one, which would
    take the space off a completion's first word.
    """
    proto = _model_pb2().ModelProto.FromString(model_proto)
    for piece in proto.pieces:
        if piece.type == USER_DEFINED:
            piece.piece = piece.piece.replace(SPACE, " ")
    encoding = proto.SerializeToString()
    normalizer = proto.normalizer_spec
    if not normalizer.add_dummy_prefix and not normalizer.remove_extra_whitespaces:
        return encoding, encoding
    normalizer.add_dummy_prefix = normalizer.remove_extra_whitespaces = False
    return encoding, proto.SerializeToString()


class SentencePieceTokenizer:
    """A SentencePiece model with the interface `TextGenerator` uses (transformers' names).

    Args:
        model_proto: a serialized SentencePiece `ModelProto` (`model_proto_from_gguf`, or a
            KerasHub / Hugging Face `tokenizer.model`).
        chat_template: the Jinja chat template (GGUF `tokenizer.chat_template`), or None.
        add_bos_token: whether `encode(..., add_special_tokens=True)` starts with BOS (GGUF
            `tokenizer.ggml.add_bos_token`).

    Example:
        >>> tokenizer = SentencePieceTokenizer(open("tokenizer.model", "rb").read())
        >>> tokenizer.decode(tokenizer.encode("Hello world"))
        'Hello world'
    """

    def __init__(self, model_proto: bytes, chat_template: Optional[str] = None, add_bos_token: bool = False):
        import sentencepiece

        proto = _model_pb2().ModelProto.FromString(bytes(model_proto))
        self.model_proto = bytes(model_proto)
        self.encoding_proto, self.decoding_proto = working_protos(self.model_proto)
        try:
            self._encoder = sentencepiece.SentencePieceProcessor(model_proto=self.encoding_proto)
            self._decoder = (self._encoder if self.decoding_proto is self.encoding_proto
                             else sentencepiece.SentencePieceProcessor(model_proto=self.decoding_proto))
        except RuntimeError as error:  # SentencePiece's own check of the model
            raise ValueError(f"not a usable SentencePiece model: {error}") from None
        self.pieces = [piece.piece for piece in proto.pieces]
        self.piece_types = [int(piece.type) for piece in proto.pieces]
        self.add_space_prefix = bool(proto.normalizer_spec.add_dummy_prefix)
        self.chat_template = chat_template
        self.add_bos_token = bool(add_bos_token)
        trainer = proto.trainer_spec
        size = len(self.pieces)
        self.bos_token_id, self.eos_token_id, self.unk_token_id, self.pad_token_id = (
            int(i) if 0 <= i < size else None
            for i in (trainer.bos_id, trainer.eos_id, self._encoder.unk_id(), trainer.pad_id))
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = (
            None if i is None else self.pieces[i]
            for i in (self.bos_token_id, self.eos_token_id, self.unk_token_id, self.pad_token_id))
        self.all_special_ids = [i for i, kind in enumerate(self.piece_types) if kind in (CONTROL, UNKNOWN)]
        self._special = frozenset(self.all_special_ids)
        self._split = _TextSplitter(self.split_tokens())
        self._ids: Optional[Dict[str, int]] = None  # piece -> id, built on first use

    # -- what the in-graph tokenizer needs too ---------------------------------------------------
    def split_tokens(self) -> Dict[str, int]:
        """text -> id of the tokens split off before SentencePiece runs, as llama.cpp does:
        control, unknown and user-defined tokens (user-defined ones with their spaces as spaces)."""
        split = {}
        for index, (piece, kind) in enumerate(zip(self.pieces, self.piece_types)):
            if kind == USER_DEFINED:
                split[piece.replace(SPACE, " ")] = index
            elif kind in (CONTROL, UNKNOWN):
                split[piece] = index
        return split

    # -- transformers' interface ---------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> List[int]:
        """Token ids of `text`; BOS first when add_special_tokens and the model adds BOS."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        bos = add_special_tokens and self.add_bos_token and self.bos_token_id is not None
        ids = [self.bos_token_id] if bos else []
        for part, token in self._split(text):
            # One call per stretch: a list call costs ~100 us more (sentencepiece's thread pool).
            if token is None:
                ids.extend(self._encoder.encode(part))
            else:
                ids.append(token)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool = False) -> str:
        """Text of `ids`: each token's text in turn (see the module docstring); control tokens
        show their text unless skip_special_tokens. clean_up_tokenization_spaces is accepted
        and ignored (SentencePiece text needs no clean-up)."""
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < len(self.pieces)), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary of {len(self.pieces)}")
        if skip_special_tokens:
            return self._decoder.decode(ids)  # control and unknown pieces decode as nothing
        # Special tokens as their text; the runs between them as SentencePiece decodes them
        # (a control token ends a byte run either way).
        texts, run = [], []
        for token in ids:
            if token in self._special:
                texts += [self._decoder.decode(run), self.pieces[token]]
                run = []
            else:
                run.append(token)
        return "".join(texts) + self._decoder.decode(run)

    def convert_ids_to_tokens(self, ids: Union[int, Sequence[int]]):
        if isinstance(ids, int):
            return self.pieces[ids] if 0 <= ids < len(self.pieces) else None
        return [self.convert_ids_to_tokens(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]):
        vocab = self.get_vocab()
        if isinstance(tokens, str):
            return vocab.get(tokens, self.unk_token_id)
        return [vocab.get(token, self.unk_token_id) for token in tokens]

    def get_vocab(self) -> Dict[str, int]:
        if self._ids is None:
            self._ids = {piece: index for index, piece in enumerate(self.pieces)}
        return self._ids

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def all_special_tokens(self) -> List[str]:
        return [self.pieces[i] for i in self.all_special_ids]

    def apply_chat_template(self, conversation, tokenize: bool = False, add_generation_prompt: bool = False,
                            **kwargs):
        """The conversation through the chat template (`tfgen.chat_template`, as transformers
        renders it; bos_token, eos_token, ... defined); ids when tokenize."""
        names = {"bos_token": self.bos_token, "eos_token": self.eos_token, "unk_token": self.unk_token,
                 "pad_token": self.pad_token}
        rendered = render_chat_template(self.chat_template, conversation,
                                        add_generation_prompt=add_generation_prompt, special_tokens=names, **kwargs)
        return self.encode(rendered) if tokenize else rendered

    def __repr__(self) -> str:
        return (f"SentencePieceTokenizer(vocab_size={len(self.pieces)}, "
                f"add_space_prefix={self.add_space_prefix}, add_bos_token={self.add_bos_token})")


class _TextSplitter:
    """Splits text at the tokens llama.cpp matches before SentencePiece: [(text, None or id)].

    At each position the longest such token wins, leftmost first (`split_pattern`: the in-graph
    tokenizer runs the same pattern in RE2). llama.cpp takes the longest token anywhere in the
    text first; the two differ only for tokens that overlap each other in the text, which no
    Gemma or Llama vocabulary has (runs of one character, tags).
    """

    def __init__(self, tokens: Dict[str, int]):
        self.tokens = tokens
        self.pattern = re.compile(split_pattern(tokens, re.escape)) if tokens else None

    def __call__(self, text: str) -> List[Tuple[str, Optional[int]]]:
        if self.pattern is None:
            return [(text, None)] if text else []
        parts, start = [], 0
        for match in self.pattern.finditer(text):
            if match.start() > start:
                parts.append((text[start:match.start()], None))
            parts.append((match.group(), self.tokens[match.group()]))
            start = match.end()
        if start < len(text):
            parts.append((text[start:], None))
        return parts


def split_pattern(tokens: Iterable[str], escape: Callable[[str], str]) -> str:
    """A regex that matches any of `tokens`, the longest one where several start at a position.

    The tokens as a trie, each node an alternation of its next characters, optional where a
    token ends there: a flat alternation of Gemma's 6,400 control and user-defined tokens is
    tried one by one at every character (Python's `re`), the trie only along matching prefixes.
    `escape` writes one character for the regex dialect (Python's `re`, RE2).
    """
    trie: dict = {}
    for token in tokens:
        node = trie
        for char in token:
            node = node.setdefault(char, {})
        node[""] = {}  # a token ends here

    def pattern(node: dict) -> str:
        branches = [escape(char) + pattern(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # Greedy: a longer token through this node is tried before the one that ends here.
        return f"(?:{body})?" if "" in node else body

    return pattern(trie)


# -- per-token text and bytes (tfgen.tokenizer dispatches here) ------------------------------------
def piece_bytes(piece: str, kind: int) -> Optional[bytes]:
    """The bytes a piece adds to decoded text: U+2581 as a space, <0xNN> as that byte; None for
    control and unknown pieces (see `token_bytes`)."""
    if kind in (CONTROL, UNKNOWN):
        return None
    if kind == BYTE:
        return bytes([int(_BYTE_PIECE.fullmatch(piece).group(1), 16)])
    return piece.replace(SPACE, " ").encode("utf-8")


def token_bytes(tokenizer: SentencePieceTokenizer, vocab_size: int) -> List[Optional[bytes]]:
    """Each token id's bytes for the in-loop stop-string check; None where they are not known.

    Sound, so that a row only ends where its decoded text holds the stop string: decoding never
    drops a leading space, so a piece's bytes do not depend on where it stands. Control and
    unknown tokens are None (an unknown byte, which matches nothing), not b"": they decode as
    nothing, but they end a run of byte pieces, whose halves then decode as U+FFFD each, so a
    character split around one is not in the text. Ids past the vocabulary are None.
    """
    out: List[Optional[bytes]] = [None] * vocab_size
    for index, (piece, kind) in enumerate(zip(tokenizer.pieces[:vocab_size], tokenizer.piece_types)):
        out[index] = piece_bytes(piece, kind)
    return out


def token_texts(tokenizer: SentencePieceTokenizer, ids: Sequence[int]) -> List[str]:
    """The text of each token on its own; a byte piece outside ASCII as its escape ("\\xe6"),
    control tokens as their piece ("<bos>")."""
    texts = []
    for token in ids:
        piece, kind = tokenizer.pieces[token], tokenizer.piece_types[token]
        data = piece_bytes(piece, kind)
        texts.append(piece if data is None else data.decode("utf-8", errors="backslashreplace"))
    return texts
