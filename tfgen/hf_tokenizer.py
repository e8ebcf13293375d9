"""The tokenizer of a Hugging Face `save_pretrained` directory, without transformers' model classes.

`tokenizer_from_directory` reads what transformers writes next to the weights and returns one of
the two kinds of tokenizer the rest of tfgen runs (`tfgen.tokenizer.tokenizer_kind`):

- tokenizer.json of a byte-level BPE (GPT-2, Llama 3, Qwen 2 / 3, SmolLM, Mistral Nemo): a
  `tfgen.bpe_tokenizer.BPETokenizer` (transformers' fast-tokenizer interface, without
  transformers) over `tokenizers.Tokenizer.from_file`, as the GGUF path builds one, with the
  special tokens and chat template of tokenizer_config.json / special_tokens_map.json. Its ids
  are `tokenizers`' own, and the in-graph tokenizer reproduces its pre-tokenizer
  (`tfgen.export.graph_tokenizer`).
- tokenizer.model (SentencePiece: Gemma, Llama 2, Mistral v0.1) when tokenizer.json is missing or
  is not byte-level: `tfgen.sentencepiece_tokenizer.SentencePieceTokenizer` on that model, which
  the graph runs as it is (tensorflow-text's SentencePiece ops).
- any other tokenizer.json (a SentencePiece-style BPE without its tokenizer.model): a
  `BPETokenizer` too, for the Python side only; exports refuse it with a clear error.

BOS as transformers adds it: `add_bos_token` says whether encoding with special tokens puts BOS
first (tokenizer.json's post-processor: Llama 3 and Gemma yes, Qwen no; for tokenizer.model the
config's `add_bos_token`, default yes as transformers' Llama and Gemma tokenizers), and
`TextGenerator.prompt_ids` adds it once, not again after a chat template that writes it.
"""
from __future__ import annotations

import json
import os
from typing import Optional

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def tokenizer_from_directory(path: str):
    """The tokenizer in a `save_pretrained` directory (see the module docstring).

    Raises:
        ValueError: the directory has neither tokenizer.json nor tokenizer.model, or one of its
            tokenizer files cannot be read (the message names the file).
    """
    def file(name: str) -> Optional[str]:
        full = os.path.join(path, name)
        return full if os.path.isfile(full) else None

    config = _read_json(file("tokenizer_config.json")) or {}
    special = {**(_read_json(file("special_tokens_map.json")) or {}), **config}
    chat_template = _chat_template(path, config)
    tokenizer_json, model = file("tokenizer.json"), file("tokenizer.model")
    if tokenizer_json is None and model is None:
        raise ValueError(f"{path!r} has no tokenizer: expected one of {', '.join(TOKENIZER_FILES)}")
    backend = _read_backend(tokenizer_json) if tokenizer_json else None
    if backend is not None and (model is None or _is_byte_level(backend)):
        return _fast_tokenizer(backend, special, chat_template)
    from tfgen.sentencepiece_tokenizer import SentencePieceTokenizer

    with open(model, "rb") as handle:
        proto = handle.read()
    try:
        return SentencePieceTokenizer(proto, chat_template,
                                      add_bos_token=bool(config.get("add_bos_token", True)))
    except ValueError as error:
        raise ValueError(f"{model}: {error}") from None


def _read_json(name: Optional[str]) -> Optional[dict]:
    if name is None:
        return None
    try:
        with open(name, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {name}: {error}") from None


def _read_backend(name: str):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(name)
    except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
        raise ValueError(f"cannot read {name} as a `tokenizers` tokenizer: {error}") from None


def _chat_template(path: str, config: dict) -> Optional[str]:
    """The default chat template: chat_template.jinja (transformers 4.43+ writes it there), else
    chat_template.json, else tokenizer_config.json's `chat_template` (a string, or a list of named
    templates of which "default" is the one)."""
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as handle:
            return handle.read()
    template = (_read_json(os.path.join(path, "chat_template.json"))
                if os.path.isfile(os.path.join(path, "chat_template.json")) else config).get("chat_template")
    if isinstance(template, list):
        named = {item.get("name"): item.get("template") for item in template}
        template = named.get("default", next(iter(named.values()), None))
    return template


def _is_byte_level(backend) -> bool:
    """Whether a `tokenizers` tokenizer is byte-level BPE (a ByteLevel pre-tokenizer or decoder)."""
    spec = json.loads(backend.to_str())
    return any('"ByteLevel"' in json.dumps(spec.get(part)) for part in ("pre_tokenizer", "decoder"))


def _token_text(value) -> Optional[str]:
    """A special token as the configs write it: a string, or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _fast_tokenizer(backend, special: dict, chat_template: Optional[str]):
    """`backend` as a `tfgen.bpe_tokenizer.BPETokenizer` with the configs' special tokens;
    `add_bos_token` says what the post-processor does (BOS first when encoding with special
    tokens)."""
    from tfgen.bpe_tokenizer import BPETokenizer

    names = {name: _token_text(special.get(name))
             for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    bos = None if names["bos_token"] is None else backend.token_to_id(names["bos_token"])
    with_special = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    return BPETokenizer(
        backend, chat_template=chat_template,
        clean_up_tokenization_spaces=bool(special.get("clean_up_tokenization_spaces", False)),
        add_bos_token=bos is not None and with_special[:1] == [bos] and plain[:1] != [bos], **names)
