"""GGUF files (llama.cpp's format): a Llama-family model's config, float32 weights and tokenizer.

`read_gguf(path)` checks the file, dequantizes every tensor to float32 with the `gguf` package,
undoes llama.cpp's Q/K row permutation (so the weights are in Hugging Face's layout, with the
rotate-half RoPE that keras-hub and transformers use), and builds the byte-level BPE tokenizer
from the vocabulary and merges in the metadata. The result is cached on disk (`$TFGEN_CACHE`,
else `~/.cache/tfgen`), keyed by the file's path, size and modification time, so the second load
reads one uncompressed `.npz` instead of parsing and dequantizing again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Dict, Optional

import numpy as np

_MAGIC = b"GGUF"
_CACHE_FORMAT = 1  # bump when the cached layout changes

SUPPORTED_ARCHITECTURES = ("llama",)
# Weight types the `gguf` package dequantizes in numpy (integer types are not weights).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "F64", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")

# llama.cpp names of the pre-tokenizer (`tokenizer.ggml.pre`) -> how to split before BPE.
# "digits": each digit alone, then GPT-2's regex (StarCoder-style tokenizers such as SmolLM's).
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_GPT2 = ("default", "gpt2", "gpt-2", "olmo", "jais")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3 = ("llama-bpe", "llama3", "smaug-bpe")


@dataclasses.dataclass
class LlamaConfig:
    """The hyperparameters of a Llama-family model (names as in transformers' LlamaConfig)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    name_or_path: str = ""
    model_type: str = "llama"


@dataclasses.dataclass
class GGUFModel:
    """What `read_gguf` returns.

    Attributes:
        config: the model's `LlamaConfig`.
        weights: float32 arrays under Hugging Face's names ("model.layers.0.self_attn.q_proj.weight",
            [out, in] like torch's Linear).
        tokenizer_json: the `tokenizers` serialization of the BPE tokenizer.
        special: bos/eos/pad/unk token strings, `chat_template` and `add_bos_token`.
    """

    config: LlamaConfig
    weights: Dict[str, np.ndarray]
    tokenizer_json: str
    special: dict

    def tokenizer(self):
        """The tokenizer as a `transformers.PreTrainedTokenizerFast` (with the chat template)."""
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        special = self.special
        return PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(self.tokenizer_json),
            bos_token=special["bos_token"], eos_token=special["eos_token"],
            pad_token=special["pad_token"], unk_token=special.get("unk_token"),
            chat_template=special.get("chat_template"), clean_up_tokenization_spaces=False,
            model_input_names=["input_ids", "attention_mask"],
        )


def cache_dir() -> str:
    """Where converted weights are kept: $TFGEN_CACHE, else $XDG_CACHE_HOME/tfgen or ~/.cache/tfgen."""
    if os.environ.get("TFGEN_CACHE"):
        return os.path.expanduser(os.environ["TFGEN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfgen")


def read_gguf(path: str, use_cache: bool = True) -> GGUFModel:
    """Config, float32 weights and tokenizer of a Llama-architecture GGUF file.

    Args:
        path: the .gguf file.
        use_cache: read/write the converted model in `cache_dir()`.

    Raises:
        ValueError: the file is missing, not GGUF, truncated or damaged, of an architecture other
            than llama, with a tensor type that cannot be dequantized, or with a tokenizer tfgen
            cannot build. The message names the file.

    Example:
        >>> model = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
        >>> model.config.num_hidden_layers
        30
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ValueError(f"GGUF file {path} does not exist")
    _check_magic(path)
    cached = _cache_path(path) if use_cache else None
    if cached and os.path.isfile(cached):
        try:
            return _read_cache(cached)
        except Exception:  # noqa: BLE001 - an unreadable entry is converted again and replaced
            pass
    model = _convert(path)
    if cached:
        _write_cache(cached, model)
    return model


# -- checks -----------------------------------------------------------------------------------------
def _check_magic(path: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != _MAGIC:
        raise ValueError(f"{path} is not a GGUF file (it starts with {head!r}, not {_MAGIC!r})")


def _open(path: str):
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:  # the reader raises ValueError, IndexError, ... on damaged headers
        raise ValueError(f"{path} is truncated or damaged: cannot read its GGUF header "
                         f"({type(error).__name__}: {error})") from None
    size = os.path.getsize(path)
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ValueError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}")
    return reader


def _field(reader, key, default=None, required=False, path=""):
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise ValueError(f"{path} lacks the GGUF metadata key {key!r}")
        return default
    return field.contents()


# -- conversion -------------------------------------------------------------------------------------
def _convert(path: str) -> GGUFModel:
    import gguf

    reader = _open(path)
    arch = _field(reader, "general.architecture", required=True, path=path)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{path} holds a {arch!r} model; tfgen supports GGUF architectures: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise ValueError(f"{path}: tensor {tensor.name} has quantization type {kind}, which tfgen "
                             f"cannot dequantize; supported: {', '.join(SUPPORTED_TYPES)}")
    scaling = _field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling != "none" and float(_field(reader, f"{arch}.rope.scaling.factor", 1.0)) != 1.0:
        raise ValueError(f"{path}: RoPE scaling {scaling!r} is not supported")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ValueError(f"{path}: per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 scaling) "
                         "are not supported")

    def meta(key, default=None):
        return _field(reader, f"{arch}.{key}", default, required=default is None, path=path)

    hidden = int(meta("embedding_length"))
    heads = int(meta("attention.head_count"))
    kv_heads = int(meta("attention.head_count_kv", heads))
    head_dim = int(meta("attention.key_length", hidden // heads))
    tokens = _field(reader, "tokenizer.ggml.tokens", required=True, path=path)
    vocab_size = int(meta("vocab_size", len(tokens)))
    special_ids = {name: _field(reader, f"tokenizer.ggml.{name}_token_id")
                   for name in ("bos", "eos", "padding", "unknown")}
    eos = int(special_ids["eos"] if special_ids["eos"] is not None else 0)
    bos = int(special_ids["bos"] if special_ids["bos"] is not None else eos)
    pad = int(special_ids["padding"] if special_ids["padding"] is not None else eos)
    layers = int(meta("block_count"))
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")), num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=int(meta("context_length", 2048)),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, name_or_path=path,
    )
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(layers) for part in
        ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
         "ffn_down")}
    missing = sorted(expected - names)
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} tensors of a {layers}-block llama model "
                         f"(e.g. {missing[0]})")

    weights = {}
    for tensor in reader.tensors:
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except Exception as error:
            raise ValueError(f"{path}: cannot dequantize tensor {tensor.name} "
                             f"({tensor.tensor_type.name}): {error}") from None
        name, array = _hf_weight(tensor.name, np.asarray(array, np.float32), heads, kv_heads)
        weights[name] = array
    tokenizer_json, special = _tokenizer(reader, path, tokens, bos, eos, pad, special_ids["unknown"])
    return GGUFModel(config, weights, tokenizer_json, special)


_NAMES = {
    "attn_norm": "input_layernorm.weight", "ffn_norm": "post_attention_layernorm.weight",
    "attn_q": "self_attn.q_proj.weight", "attn_k": "self_attn.k_proj.weight",
    "attn_v": "self_attn.v_proj.weight", "attn_output": "self_attn.o_proj.weight",
    "ffn_gate": "mlp.gate_proj.weight", "ffn_up": "mlp.up_proj.weight", "ffn_down": "mlp.down_proj.weight",
}


def _hf_weight(name: str, array: np.ndarray, heads: int, kv_heads: int):
    """A GGUF tensor under its Hugging Face name, Q/K rows back in rotate-half order."""
    if name == "token_embd.weight":
        return "model.embed_tokens.weight", array
    if name == "output.weight":
        return "lm_head.weight", array
    if name == "output_norm.weight":
        return "model.norm.weight", array
    _, index, part, _ = name.split(".")
    if part == "attn_q":
        array = _unpermute(array, heads)
    elif part == "attn_k":
        array = _unpermute(array, kv_heads)
    return f"model.layers.{index}.{_NAMES[part]}", array


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's convert script, which interleaves each head's rows for its RoPE.

    The script maps rows [head, half, i] to [head, i, half] (pairs (2i, 2i+1) rotate together in
    llama.cpp); transformers and keras-hub rotate row i with row i + head_dim/2.
    """
    rows = weight.shape[0]
    return (weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _tokenizer(reader, path, tokens, bos, eos, pad, unk):
    """(tokenizers JSON, special tokens) of the GGUF's byte-level BPE."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer model {kind!r} is not supported; tfgen builds byte-level "
                         "BPE tokenizers (tokenizer.ggml.model 'gpt2')")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre in _DIGITS_THEN_GPT2:
        pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre in _GPT2:
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre in _LLAMA3:
        pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        raise ValueError(f"{path}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; "
                         f"supported: {', '.join(_DIGITS_THEN_GPT2 + _GPT2 + _LLAMA3)}")
    merges = [tuple(merge.split(" ", 1)) for merge in _field(reader, "tokenizer.ggml.merges", [])]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                                     ignore_merges=pre in _LLAMA3))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # llama.cpp token types: 3 control (special: <|im_start|>, ...), 4 user-defined (added text).
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    added = [AddedToken(tokens[i], special=kind_ == 3, normalized=False)
             for i, kind_ in enumerate(types) if kind_ in (3, 4)]
    tokenizer.add_tokens(added)
    special = dict(
        bos_token=tokens[bos], eos_token=tokens[eos], pad_token=tokens[pad],
        unk_token=tokens[int(unk)] if unk is not None else None,
        chat_template=_field(reader, "tokenizer.chat_template"),
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
    )
    return tokenizer.to_str(), special


# -- cache ------------------------------------------------------------------------------------------
def _cache_path(path: str) -> str:
    stat = os.stat(path)
    key = hashlib.sha256(f"{_CACHE_FORMAT}|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(cache_dir(), f"{stem}-{key[:16]}.npz")


def _write_cache(target: str, model: GGUFModel) -> None:
    """Write the converted model next to `target`, then rename it into place (never half-written)."""
    meta = json.dumps(dict(config=dataclasses.asdict(model.config), special=model.special,
                           tokenizer=model.tokenizer_json))
    directory = os.path.dirname(target)
    temp: Optional[str] = None
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
        with os.fdopen(handle, "wb") as out:
            np.savez(out, __meta__=np.array(meta), **model.weights)
        os.replace(temp, target)
        temp = None
    except OSError:
        pass  # a read-only or full cache only costs the next load its conversion time
    finally:
        if temp is not None and os.path.exists(temp):
            os.remove(temp)


def _read_cache(cached: str) -> GGUFModel:
    with np.load(cached, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
        weights = {name: data[name] for name in data.files if name != "__meta__"}
    return GGUFModel(LlamaConfig(**meta["config"]), weights, meta["tokenizer"], meta["special"])
