"""Byte-level BPE tokenizers on the Python side, straight on the `tokenizers` library.

A `tokenizers.Tokenizer` (built from a GGUF vocabulary, read from a tokenizer.json, or made from a
KerasHub tokenizer's vocabulary and merges) becomes a `BPETokenizer`: the part of transformers'
`PreTrainedTokenizerFast` interface that `TextGenerator`, the stop-string table and the in-graph
tokenizer use, with the same behaviour (named special tokens are added to the backend as
special tokens, `skip_special_tokens` drops them, `clean_up_tokenization_spaces` does
transformers' clean-up, `len()` counts added tokens). transformers' tokenizer module takes 1.5-2 s
to import; loading a GGUF model no longer imports it.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Union

from tfgen.chat_template import render_chat_template

# transformers' order of the named special tokens (`SPECIAL_TOKENS_ATTRIBUTES`).
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's map of the 256 byte values to printable characters (its encoder.py): printable
    Latin-1 bytes map to themselves, the others to U+0100 onwards, in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
                 + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before . ? ! , and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class BPETokenizer:
    """A `tokenizers.Tokenizer` with transformers' tokenizer interface (the part tfgen uses).

    Args:
        backend: the `tokenizers.Tokenizer` (byte-level BPE); named special tokens it does not
            hold as special added tokens are added to it, as transformers does.
        bos_token, eos_token, unk_token, pad_token: the special tokens' text, or None.
        additional_special_tokens: further special tokens (transformers' name).
        chat_template: the Jinja chat template, or None.
        add_bos_token: whether encoding with add_special_tokens=True starts with BOS (what the
            backend's post-processor does; an attribute for `TextGenerator`).
        clean_up_tokenization_spaces: the default of `decode`'s argument.

    Example:
        >>> from tokenizers import Tokenizer
        >>> tokenizer = BPETokenizer(Tokenizer.from_file("tokenizer.json"), eos_token="<|im_end|>")
        >>> tokenizer.decode(tokenizer.encode("Hello world"))
        'Hello world'
    """

    def __init__(self, backend, *, bos_token: Optional[str] = None, eos_token: Optional[str] = None,
                 unk_token: Optional[str] = None, pad_token: Optional[str] = None,
                 additional_special_tokens: Sequence[str] = (), chat_template: Optional[str] = None,
                 add_bos_token: bool = False, clean_up_tokenization_spaces: bool = False):
        from tokenizers import AddedToken

        self._backend = backend
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = bos_token, eos_token, unk_token, pad_token
        self.additional_special_tokens = list(additional_special_tokens)
        self.chat_template = chat_template
        self.add_bos_token = bool(add_bos_token)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        named = [getattr(self, name) for name in _SPECIAL_NAMES] + self.additional_special_tokens
        self.all_special_tokens = list(dict.fromkeys(token for token in named if token))
        held = {token.content for token in backend.get_added_tokens_decoder().values() if token.special}
        missing = [token for token in self.all_special_tokens if token not in held]
        if missing:
            backend.add_tokens([AddedToken(token, special=True, normalized=False) for token in missing])
        self.all_special_ids = [backend.token_to_id(token) for token in self.all_special_tokens]

    @property
    def backend_tokenizer(self):
        """The `tokenizers.Tokenizer` (transformers' name)."""
        return self._backend

    def _id(self, token: Optional[str]) -> Optional[int]:
        return None if token is None else self._backend.token_to_id(token)

    @property
    def bos_token_id(self) -> Optional[int]:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> Optional[int]:
        return self._id(self.eos_token)

    @property
    def unk_token_id(self) -> Optional[int]:
        return self._id(self.unk_token)

    @property
    def pad_token_id(self) -> Optional[int]:
        return self._id(self.pad_token)

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Token ids of `text`; with add_special_tokens, what the post-processor adds (BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Union[int, Iterable[int]], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: Optional[bool] = None) -> str:
        ids = [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
        text = self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            return clean_up_tokenization(text)
        return text

    def convert_ids_to_tokens(self, ids: Union[int, Sequence[int]]):
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        return [self._backend.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]):
        if isinstance(tokens, str):
            found = self._backend.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def get_vocab(self) -> Dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """The base vocabulary's size, without added tokens (transformers' meaning)."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def apply_chat_template(self, conversation, tokenize: bool = False, add_generation_prompt: bool = False,
                            **kwargs):
        """The conversation through the chat template (`tfgen.chat_template`), with the special
        tokens that are set as template variables (transformers' `special_tokens_map`); ids when
        tokenize (without further special tokens, as transformers encodes rendered templates)."""
        names = {name: getattr(self, name) for name in _SPECIAL_NAMES if getattr(self, name) is not None}
        if self.additional_special_tokens:
            names["additional_special_tokens"] = self.additional_special_tokens
        text = render_chat_template(self.chat_template, conversation, add_generation_prompt=add_generation_prompt,
                                    special_tokens=names, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={len(self)}, add_bos_token={self.add_bos_token})"
