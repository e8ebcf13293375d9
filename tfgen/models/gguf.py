"""GGUF files (llama.cpp's format): a Llama- or Gemma-family model's config, float32 weights and tokenizer.

`read_gguf(path)` checks the file, reads the config of its architecture (`general.architecture`:
llama -> `LlamaConfig`; gemma, gemma2, gemma3 -> `GemmaConfig`, both defined here) from the
metadata, dequantizes every tensor to float32 with the `gguf` package and puts it under its
Hugging Face name and in Hugging Face's conventions: llama.cpp's converter permutes Llama's Q/K
rows for its interleaved RoPE (undone here: transformers and keras-hub rotate halves), and adds 1
to every Gemma norm weight (taken off here: Hugging Face stores w of x * (1 + w)). It builds the
tokenizer from the vocabulary in the metadata. The result is cached on disk (`$TFGEN_CACHE`,
else `~/.cache/tfgen`), keyed by the file's name, size, modification time and its first and last
MiB (not its path: copies in several environments share one entry), so the second load
reads one mapped file of arrays (`_write_cache`) instead of parsing and dequantizing again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

_MAGIC = b"GGUF"
_CACHE_FORMAT = 5  # bump when the cached layout changes (2: model_type picks the class; 4: EOS lists;
                  # 5: one mapped file of arrays, not an .npz)

# Weight types the `gguf` package dequantizes in numpy (integer types are not weights).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "F64", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")

# llama.cpp names of the pre-tokenizer (`tokenizer.ggml.pre`) -> how to split before BPE.
# "digits": each digit alone, then GPT-2's regex (StarCoder-style tokenizers such as SmolLM's).
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_GPT2 = ("default", "gpt2", "gpt-2", "olmo", "jais")
_LLAMA3 = ("llama-bpe", "llama3", "smaug-bpe")


@dataclasses.dataclass
class DecoderConfig:
    """The sizes every decoder-only config has (names as in transformers' configs)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int


# transformers' rope_scaling types the Llama adapter implements
# (`tfgen.models.llama.rope_inverse_frequencies`).
LLAMA_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclasses.dataclass
class LlamaConfig(DecoderConfig):
    """The hyperparameters of a Llama-family model (names as in transformers' LlamaConfig)."""

    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    name_or_path: str = ""
    model_type: str = "llama"
    # What Llama's relatives add, in transformers' terms (`tfgen.models.hf_checkpoint` reads them from
    # config.json; GGUF files leave them at these defaults). `rope_scaling` is transformers' dict:
    # rope_type "linear", "dynamic" or "llama3" (see `tfgen.models.llama.rope_inverse_frequencies`).
    rope_scaling: Optional[dict] = None
    qkv_bias: bool = False  # biases of the q/k/v projections (Qwen2; Llama's attention_bias)
    o_bias: bool = False  # bias of the output projection (Llama's attention_bias)
    use_qk_norm: bool = False  # per-head RMSNorm of queries and keys before RoPE (Qwen3)
    sliding_window: Optional[int] = None  # the window of the sliding layers (Mistral, Qwen)
    layer_types: Optional[List[str]] = None  # None: every layer sliding with a window, else full
    eos_token_ids: Optional[Tuple[int, ...]] = None  # every id that ends a row; None: (eos_token_id,)

    def __post_init__(self):
        self.layer_types = check_layer_types(self.layer_types, self.num_hidden_layers, self.sliding_window,
                                             SLIDING if self.sliding_window else FULL)
        self.eos_token_ids = primary_eos_first(self.eos_token_id, self.eos_token_ids)
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in LLAMA_ROPE_TYPES:
                raise ValueError(f"unsupported rope_scaling type {kind!r}; tfgen supports: "
                                 f"{', '.join(LLAMA_ROPE_TYPES)}")
            self.rope_scaling = {**self.rope_scaling, "rope_type": kind}


SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' layer_types entries

# Gemma model_type -> (sliding-window pattern: every Nth layer is global, None for no sliding
# layers; query/key norms; post-attention and post-feed-forward norms), as transformers has them.
GEMMA_FAMILY = {
    "gemma": (None, False, False),
    "gemma2": (2, False, True),
    "gemma3": (6, True, True),
}


def check_layer_types(layer_types: Optional[Sequence[str]], num_layers: int, sliding_window: Optional[int],
                      default: str = FULL) -> List[str]:
    """transformers' `layer_types` checked (None: `default` for every layer).

    Raises:
        ValueError: the list does not name every layer, has unknown entries, or names sliding layers
            without a positive sliding_window.
    """
    layer_types = [default] * num_layers if layer_types is None else list(layer_types)
    if len(layer_types) != num_layers or set(layer_types) - {SLIDING, FULL}:
        raise ValueError(f"layer_types must name {num_layers} layers, each {SLIDING!r} or {FULL!r}; "
                         f"got {layer_types}")
    if SLIDING in layer_types and not (sliding_window and sliding_window > 0):
        raise ValueError(f"sliding-window layers need a positive sliding_window, got {sliding_window}")
    return layer_types


# Token texts llama.cpp treats as ending generation whatever the metadata says (llama-vocab.cpp,
# `special_eog_ids`): the end-of-turn tokens of chat templates, and the fill-in-the-middle pad,
# repository and file-separator tokens it detects by their text when the metadata names none.
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>")
_FIM_TEXTS = {"fim_pad": ("<|fim_pad|>", "<fim-pad>", "<PAD>"),
              "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
              "fim_sep": ("<|file_sep|>",)}


def end_of_generation_ids(reader, tokens: Sequence[str], eos: int) -> Tuple[int, ...]:
    """The ids that end a row, as llama.cpp's end-of-generation set: EOS first, then the
    end-of-turn and end-of-message ids the metadata names, the fill-in-the-middle pad/repository/
    separator ids (from the metadata, else found by their text), and every token whose text is
    one of `_EOG_TEXTS` (Gemma's <end_of_turn>, SmolLM2's <|im_end|>)."""
    ids = [eos]
    for name in ("eot", "eom", "fim_pad", "fim_rep", "fim_sep"):
        value = _field(reader, f"tokenizer.ggml.{name}_token_id")
        if value is not None and 0 <= int(value) < len(tokens):
            ids.append(int(value))
        elif name in _FIM_TEXTS:
            ids += [index for index, text in enumerate(tokens) if text in _FIM_TEXTS[name]][:1]
    ids += [index for index, text in enumerate(tokens) if text in _EOG_TEXTS]
    return tuple(dict.fromkeys(ids))


def primary_eos_first(eos_token_id: int, eos_token_ids: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """Every id that ends a row, `eos_token_id` (the primary one) first, each once."""
    ids = [int(eos_token_id)] + [int(i) for i in (eos_token_ids or ())]
    return tuple(dict.fromkeys(ids))


def sliding_layer_types(num_layers: int, pattern: Optional[int]) -> List[str]:
    """transformers' `layer_types` from a sliding-window pattern: layer i is global when
    (i + 1) % pattern == 0 (Gemma 3: 5 sliding layers, then a global one); no pattern, all global."""
    if not pattern:
        return [FULL] * num_layers
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers)]


@dataclasses.dataclass
class GemmaConfig(DecoderConfig):
    """The hyperparameters of a Gemma model (names as in transformers' `Gemma3TextConfig`); the
    adapter is `tfgen.models.gemma.Gemma`.

    The defaults are Gemma 3's. Fields left None are filled from `model_type` ("gemma",
    "gemma2", "gemma3", see `GEMMA_FAMILY`): `layer_types` from the family's sliding pattern,
    `use_qk_norm`, `use_post_norms`, and `query_pre_attn_scalar` = head_dim. Gemma 1 and 2 have
    one RoPE base for every layer, so for them `rope_local_base_freq` is set to `rope_theta`.
    `rope_scaling` ({"rope_type": "linear", "factor": 8.0}, Gemma 3 4B and larger) applies to the
    global layers only, as in transformers and llama.cpp. Gemma always ties its output layer to
    the embeddings.

    Raises:
        ValueError: an unknown model_type or RoPE scaling, untied embeddings, layer_types of the
            wrong length or with unknown entries, or sliding layers without a positive
            sliding_window.
    """

    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    rope_scaling: Optional[dict] = None
    sliding_window: Optional[int] = 4096
    layer_types: Optional[List[str]] = None
    query_pre_attn_scalar: Optional[float] = None
    final_logit_softcapping: Optional[float] = None
    attn_logit_softcapping: Optional[float] = None
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 32_768
    tie_word_embeddings: bool = True
    bos_token_id: int = 2
    eos_token_id: int = 1
    pad_token_id: int = 0
    use_qk_norm: Optional[bool] = None
    use_post_norms: Optional[bool] = None
    model_type: str = "gemma3"
    name_or_path: str = ""
    eos_token_ids: Optional[Tuple[int, ...]] = None  # every id that ends a row; None: (eos_token_id,)

    def __post_init__(self):
        if self.model_type not in GEMMA_FAMILY:
            raise ValueError(f"unknown Gemma model_type {self.model_type!r}; expected one of "
                             f"{', '.join(GEMMA_FAMILY)}")
        pattern, qk_norm, post_norms = GEMMA_FAMILY[self.model_type]
        if self.layer_types is None:
            self.layer_types = sliding_layer_types(self.num_hidden_layers, pattern)
        self.layer_types = check_layer_types(self.layer_types, self.num_hidden_layers, self.sliding_window)
        self.eos_token_ids = primary_eos_first(self.eos_token_id, self.eos_token_ids)
        self.use_qk_norm = qk_norm if self.use_qk_norm is None else bool(self.use_qk_norm)
        self.use_post_norms = post_norms if self.use_post_norms is None else bool(self.use_post_norms)
        if self.query_pre_attn_scalar is None:
            self.query_pre_attn_scalar = self.head_dim
        if self.model_type != "gemma3":
            self.rope_local_base_freq = self.rope_theta
        if not self.tie_word_embeddings:
            raise ValueError("Gemma ties its output layer to the input embeddings "
                             "(tie_word_embeddings must be True)")
        if self.rope_scaling and self.rope_scaling.get("rope_type", "linear") not in ("linear", "default"):
            raise ValueError(f"unsupported Gemma rope_scaling {self.rope_scaling}; tfgen supports linear")

    @property
    def rope_scaling_factor(self) -> float:
        """The linear position scaling of the global layers (1: none)."""
        if not self.rope_scaling or self.rope_scaling.get("rope_type", "linear") == "default":
            return 1.0
        return float(self.rope_scaling.get("factor", 1.0))


@dataclasses.dataclass
class GGUFModel:
    """What `read_gguf` returns.

    Attributes:
        config: the model's `LlamaConfig` or `GemmaConfig` (by its `general.architecture`).
        weights: float32 arrays under Hugging Face's names ("model.layers.0.self_attn.q_proj.weight",
            [out, in] like torch's Linear).
        tokenizer_json: the `tokenizers` serialization of the byte-level BPE tokenizer ("" for
            SentencePiece vocabularies).
        special: bos/eos/pad/unk token strings, `chat_template` and `add_bos_token`.
        sentencepiece_proto: the serialized SentencePiece model of a SentencePiece vocabulary
            (`tokenizer.ggml.model` "llama"), else None.
    """

    config: Union[LlamaConfig, GemmaConfig]
    weights: Dict[str, np.ndarray]
    tokenizer_json: str
    special: dict
    sentencepiece_proto: Optional[bytes] = None

    def tokenizer(self):
        """The tokenizer: a `tfgen.sentencepiece_tokenizer.SentencePieceTokenizer` for a
        SentencePiece vocabulary, else a `tfgen.bpe_tokenizer.BPETokenizer` (byte-level BPE);
        both with the chat template."""
        special = self.special
        if self.sentencepiece_proto is not None:
            from tfgen.sentencepiece_tokenizer import SentencePieceTokenizer

            return SentencePieceTokenizer(self.sentencepiece_proto, special.get("chat_template"),
                                          add_bos_token=special.get("add_bos_token", False))
        from tokenizers import Tokenizer

        from tfgen.bpe_tokenizer import BPETokenizer

        return BPETokenizer(
            Tokenizer.from_str(self.tokenizer_json),
            bos_token=special["bos_token"], eos_token=special["eos_token"],
            pad_token=special["pad_token"], unk_token=special.get("unk_token"),
            chat_template=special.get("chat_template"), add_bos_token=special.get("add_bos_token", False),
        )


def cache_dir() -> str:
    """Where converted weights are kept: tfgen's cache root (`tfgen.cache.directory`: $TFGEN_CACHE,
    else $XDG_CACHE_HOME/tfgen or ~/.cache/tfgen; with TFGEN_CACHE=off a temporary directory)."""
    from tfgen import cache

    return cache.directory()


def read_gguf(path: str, use_cache: bool = True) -> GGUFModel:
    """Config, float32 weights and tokenizer of a Llama- or Gemma-architecture GGUF file.

    Args:
        path: the .gguf file.
        use_cache: read/write the converted model in `cache_dir()`.

    Raises:
        ValueError: the file is missing, not GGUF, truncated or damaged, of an architecture other
            than those in `SUPPORTED_ARCHITECTURES`, with a tensor type that cannot be dequantized,
            or with a tokenizer tfgen cannot build. The message names the file.

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
_REQUIRED = object()


def _convert(path: str) -> GGUFModel:
    import gguf

    reader = _open(path)
    arch = _field(reader, "general.architecture", required=True, path=path)
    if arch not in _ARCHITECTURES:
        raise ValueError(f"{path} holds a {arch!r} model; tfgen supports GGUF architectures: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    spec = _ARCHITECTURES[arch]
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise ValueError(f"{path}: tensor {tensor.name} has quantization type {kind}, which tfgen "
                             f"cannot dequantize; supported: {', '.join(SUPPORTED_TYPES)}")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ValueError(f"{path}: per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 scaling) "
                         "are not supported")

    def meta(key, default=_REQUIRED):
        """`{arch}.key` from the metadata; without a default the key is required."""
        required = default is _REQUIRED
        return _field(reader, f"{arch}.{key}", None if required else default, required=required, path=path)

    hidden = int(meta("embedding_length"))
    heads = int(meta("attention.head_count"))
    tokens = _field(reader, "tokenizer.ggml.tokens", required=True, path=path)
    special_ids = {name: _field(reader, f"tokenizer.ggml.{name}_token_id")
                   for name in ("bos", "eos", "padding", "unknown")}
    eos = int(special_ids["eos"] if special_ids["eos"] is not None else 0)
    bos = int(special_ids["bos"] if special_ids["bos"] is not None else eos)
    pad = int(special_ids["padding"] if special_ids["padding"] is not None else eos)
    layers = int(meta("block_count"))
    # What every family's config has, under transformers' names.
    shared = dict(
        vocab_size=int(meta("vocab_size", len(tokens))), hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")), num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=int(meta("attention.head_count_kv", heads)),
        head_dim=int(meta("attention.key_length", hidden // heads)),
        max_position_embeddings=int(meta("context_length", 2048)),
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, name_or_path=path,
        eos_token_ids=end_of_generation_ids(reader, tokens, eos),
    )
    config = spec.config(arch, meta, shared, names, path)
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(layers) for part in spec.names}
    missing = sorted(expected - names)
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} tensors of a {layers}-block {arch} model "
                         f"(e.g. {missing[0]})")

    weights = {}
    for tensor in reader.tensors:
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except Exception as error:
            raise ValueError(f"{path}: cannot dequantize tensor {tensor.name} "
                             f"({tensor.tensor_type.name}): {error}") from None
        name, array = _hf_weight(tensor.name, np.asarray(array, np.float32), spec, config)
        weights[name] = array
    tokenizer_json, special, sentencepiece_proto = _tokenizer(reader, path, tokens, bos, eos, pad,
                                                              special_ids["unknown"])
    return GGUFModel(config, weights, tokenizer_json, special, sentencepiece_proto)


def _llama_config(arch, meta, shared, names, path) -> LlamaConfig:
    scaling = meta("rope.scaling.type", "none")
    if scaling != "none" and float(meta("rope.scaling.factor", 1.0)) != 1.0:
        raise ValueError(f"{path}: RoPE scaling {scaling!r} is not supported")
    return LlamaConfig(**shared, rope_theta=float(meta("rope.freq_base", 10000.0)),
                       rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
                       tie_word_embeddings="output.weight" not in names)


# Gemma GGUF files leave out constants llama.cpp hard-codes (src/llama-model.cpp, the hparams of
# LLM_ARCH_GEMMA2 / LLM_ARCH_GEMMA3); these are its values, which transformers' configs agree with.
# The block count of the 27B models, which scale queries by hidden_size / heads, not head_dim:
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_GEMMA3_LOCAL_ROPE_BASE = 10000.0  # llama.cpp's rope_freq_base_train_swa
_GEMMA2_SOFTCAPS = (50.0, 30.0)  # llama.cpp's default attention / final logit soft-caps for Gemma 2
_GEMMA2_WINDOW = 4096  # llama.cpp's default sliding window for Gemma 2 (Gemma 3 files state theirs)


def _gemma_config(arch, meta, shared, names, path) -> GemmaConfig:
    # The sliding pattern (every Nth layer global): Gemma 2 every 2nd, Gemma 3 every 6th; llama.cpp
    # hard-codes it (set_swa_pattern), a file may state it. A Gemma 3 file without a window (or 0)
    # has no sliding layers, as in llama.cpp.
    default_window = _GEMMA2_WINDOW if arch == "gemma2" else 0
    window = int(meta("attention.sliding_window", default_window) or 0) if GEMMA_FAMILY[arch][0] else 0
    pattern = meta("attention.sliding_window_pattern", GEMMA_FAMILY[arch][0])
    if pattern is not None and not isinstance(pattern, int):
        raise ValueError(f"{path}: a per-layer sliding-window pattern ({arch}.attention."
                         "sliding_window_pattern as a list) is not supported")
    layers, hidden, heads = shared["num_hidden_layers"], shared["hidden_size"], shared["num_attention_heads"]
    big = layers == _GEMMA_27B_LAYERS.get(arch)
    rope_scaling = None
    scaling, factor = meta("rope.scaling.type", "none"), float(meta("rope.scaling.factor", 1.0))
    if scaling == "linear" and arch == "gemma3":  # the global layers only, as llama.cpp and transformers
        rope_scaling = {"rope_type": "linear", "factor": factor}
    elif scaling != "none" and factor != 1.0:
        raise ValueError(f"{path}: RoPE scaling {scaling!r} is not supported for {arch}")
    attn_cap, final_cap = _GEMMA2_SOFTCAPS if arch == "gemma2" else (None, None)
    return GemmaConfig(
        **shared, rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta("rope.freq_base", 10000.0)), rope_local_base_freq=_GEMMA3_LOCAL_ROPE_BASE,
        rope_scaling=rope_scaling, sliding_window=window or None,
        layer_types=sliding_layer_types(layers, pattern if window else None),
        query_pre_attn_scalar=hidden // heads if big else shared["head_dim"],
        # llama.cpp applies an attention soft-cap to Gemma 2 only; a final one where the file has it.
        attn_logit_softcapping=meta("attn_logit_softcapping", attn_cap) if arch == "gemma2" else None,
        final_logit_softcapping=meta("final_logit_softcapping", final_cap) if arch != "gemma" else None,
        model_type=arch,
    )


# llama.cpp's block tensor names -> Hugging Face's (after "model.layers.N.").
_LLAMA_NAMES = {
    "attn_norm": "input_layernorm.weight", "ffn_norm": "post_attention_layernorm.weight",
    "attn_q": "self_attn.q_proj.weight", "attn_k": "self_attn.k_proj.weight",
    "attn_v": "self_attn.v_proj.weight", "attn_output": "self_attn.o_proj.weight",
    "ffn_gate": "mlp.gate_proj.weight", "ffn_up": "mlp.up_proj.weight", "ffn_down": "mlp.down_proj.weight",
}
# Gemma 2 and 3 norm after attention too, and call the pre-MLP norm pre_feedforward_layernorm.
_GEMMA2_NAMES = {
    **_LLAMA_NAMES, "post_attention_norm": "post_attention_layernorm.weight",
    "ffn_norm": "pre_feedforward_layernorm.weight", "post_ffw_norm": "post_feedforward_layernorm.weight",
}
_GEMMA3_NAMES = {**_GEMMA2_NAMES, "attn_q_norm": "self_attn.q_norm.weight",
                 "attn_k_norm": "self_attn.k_norm.weight"}


@dataclasses.dataclass(frozen=True)
class _Architecture:
    """How a GGUF architecture maps to tfgen: its config and its tensors.

    Attributes:
        config: (arch, meta, shared fields, tensor names, path) -> the config.
        config_class: the config's dataclass, which the cache rebuilds.
        names: llama.cpp's block tensor names -> Hugging Face's (every one is required).
        permuted_qk: llama.cpp's converter interleaved each head's Q/K rows (Llama only).
        norm_shift: what the converter added to every norm weight (Gemma: its 1 + w).
    """

    config: Callable
    config_class: type
    names: Dict[str, str]
    permuted_qk: bool = False
    norm_shift: float = 0.0


# general.architecture -> its mapping; each config's model_type is the architecture's name.
_ARCHITECTURES = {
    "llama": _Architecture(_llama_config, LlamaConfig, _LLAMA_NAMES, permuted_qk=True),
    "gemma": _Architecture(_gemma_config, GemmaConfig, _LLAMA_NAMES, norm_shift=1.0),
    "gemma2": _Architecture(_gemma_config, GemmaConfig, _GEMMA2_NAMES, norm_shift=1.0),
    "gemma3": _Architecture(_gemma_config, GemmaConfig, _GEMMA3_NAMES, norm_shift=1.0),
}
SUPPORTED_ARCHITECTURES = tuple(_ARCHITECTURES)


def _hf_weight(name: str, array: np.ndarray, spec: _Architecture, config) -> Tuple[str, np.ndarray]:
    """A GGUF tensor under its Hugging Face name, in Hugging Face's conventions: Q/K rows back in
    rotate-half order (Llama), norm weights without the converter's shift (Gemma)."""
    if name.endswith("norm.weight"):
        array = array - np.float32(spec.norm_shift) if spec.norm_shift else array
    if name == "token_embd.weight":
        return "model.embed_tokens.weight", array
    if name == "output.weight":
        return "lm_head.weight", array
    if name == "output_norm.weight":
        return "model.norm.weight", array
    _, index, part, _ = name.split(".")
    if spec.permuted_qk and part == "attn_q":
        array = _unpermute(array, config.num_attention_heads)
    elif spec.permuted_qk and part == "attn_k":
        array = _unpermute(array, config.num_key_value_heads)
    return f"model.layers.{index}.{spec.names[part]}", array


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's convert script, which interleaves each head's rows for its RoPE.

    The script maps rows [head, half, i] to [head, i, half] (pairs (2i, 2i+1) rotate together in
    llama.cpp); transformers and keras-hub rotate row i with row i + head_dim/2.
    """
    rows = weight.shape[0]
    return (weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


# tokenizer.ggml.model -> what it is; tfgen builds these.
TOKENIZER_MODELS = {"gpt2": "byte-level BPE", "llama": "SentencePiece"}


def _tokenizer(reader, path, tokens, bos, eos, pad, unk):
    """(tokenizers JSON or "", special tokens, SentencePiece model or None) of the GGUF's tokenizer.

    `add_bos_token` is the file's `tokenizer.ggml.add_bos_token`, else llama.cpp's default: True
    for SentencePiece vocabularies, False for byte-level BPE (SmolLM2's file says False).
    """
    kind = _field(reader, "tokenizer.ggml.model")
    if kind not in TOKENIZER_MODELS:
        supported = ", ".join(f"{name!r} ({what})" for name, what in TOKENIZER_MODELS.items())
        raise ValueError(f"{path}: tokenizer model {kind!r} (tokenizer.ggml.model) is not supported; "
                         f"supported: {supported}")
    special = dict(
        bos_token=tokens[bos], eos_token=tokens[eos], pad_token=tokens[pad],
        unk_token=tokens[int(unk)] if unk is not None else None,
        chat_template=_field(reader, "tokenizer.chat_template"),
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", kind == "llama")),
    )
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    if kind == "llama":
        from tfgen.sentencepiece_tokenizer import model_proto_from_gguf

        proto = model_proto_from_gguf(
            tokens, _field(reader, "tokenizer.ggml.scores"), types, bos_id=bos, eos_id=eos,
            unk_id=None if unk is None else int(unk), pad_id=pad, name=path,
            # llama.cpp's default for SentencePiece vocabularies is a space in front of the text.
            add_space_prefix=bool(_field(reader, "tokenizer.ggml.add_space_prefix", True)))
        return "", special, proto
    return _byte_level_bpe(reader, path, tokens, types), special, None


def _byte_level_bpe(reader, path, tokens, types) -> str:
    """The `tokenizers` JSON of the GGUF's byte-level BPE (`tokenizer.ggml.model` "gpt2")."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre in _DIGITS_THEN_GPT2:
        pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre in _GPT2:
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre in _LLAMA3:
        from tfgen.tokenizer import LLAMA3_SPLIT_REGEX  # llama.cpp's LLAMA3 pre-tokenizer regex

        pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated"),
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
    added = [AddedToken(tokens[i], special=kind == 3, normalized=False)
             for i, kind in enumerate(types) if kind in (3, 4)]
    tokenizer.add_tokens(added)
    return tokenizer.to_str()


# -- cache ------------------------------------------------------------------------------------------
# A converted model is one file: magic, the JSON header's length (8 bytes, little-endian), the
# header (meta, and each array's name, dtype, shape and offset), then the arrays' bytes, each at a
# 64-byte boundary. Reading maps the file and takes views of it, so the weights are copied once, into
# the TensorFlow variables (np.load of an .npz copied them twice, 1.2 s for SmolLM2).
_CACHE_MAGIC = b"TFGENW01"
_ALIGN = 64
_SAMPLE = 1 << 20  # bytes hashed at each end of the file for its cache key


def _aligned(size: int) -> int:
    """`size` rounded up to the next multiple of _ALIGN."""
    return -(-size // _ALIGN) * _ALIGN


def _data_start(header_length: int) -> int:
    """Where the arrays start: after the magic, the header's length and the header, aligned."""
    return _aligned(len(_CACHE_MAGIC) + 8 + header_length)


def _cache_path(path: str) -> str:
    """Where `path`'s converted model is kept: keyed by what the file is (name, size, modification
    time and the sha256 of its first and last MiB), not where it is, so the same GGUF installed in
    several virtual environments (pip keeps a wheel's timestamps) is converted and stored once."""
    stat = os.stat(path)
    digest = hashlib.sha256(f"{_CACHE_FORMAT}|{os.path.basename(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_SAMPLE))
        handle.seek(max(stat.st_size - _SAMPLE, 0))
        digest.update(handle.read(_SAMPLE))
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(cache_dir(), f"{stem}-{digest.hexdigest()[:16]}.arrays")


_SENTENCEPIECE_ENTRY = "__sentencepiece__"  # the cache's entry for GGUFModel.sentencepiece_proto


def _write_cache(target: str, model: GGUFModel) -> None:
    """Write the converted model next to `target`, then rename it into place (never half-written)."""
    meta = dict(config=dataclasses.asdict(model.config), special=model.special, tokenizer=model.tokenizer_json)
    arrays = dict(model.weights)
    if model.sentencepiece_proto is not None:
        arrays[_SENTENCEPIECE_ENTRY] = np.frombuffer(model.sentencepiece_proto, np.uint8)
    arrays = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    listing, offset = [], 0
    for name, value in arrays.items():
        listing.append([name, value.dtype.str, list(value.shape), offset])
        offset += _aligned(value.nbytes)
    header = json.dumps(dict(meta=meta, arrays=listing, data_bytes=offset)).encode("utf-8")
    start = _data_start(len(header))
    directory = os.path.dirname(target)
    temp: Optional[str] = None
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".arrays")
        with os.fdopen(handle, "wb") as out:
            out.write(_CACHE_MAGIC + len(header).to_bytes(8, "little") + header)
            for (_, _, _, position), value in zip(listing, arrays.values()):
                out.write(b"\0" * (start + position - out.tell()))
                out.write(memoryview(value.reshape(-1).view(np.uint8)))
            out.write(b"\0" * (start + offset - out.tell()))
        os.replace(temp, target)
        temp = None
    except OSError:
        pass  # a read-only or full cache only costs the next load its conversion time
    finally:
        if temp is not None and os.path.exists(temp):
            os.remove(temp)


def _read_cache(cached: str) -> GGUFModel:
    """The model `_write_cache` wrote; its arrays are read-only views of the mapped file.

    Raises:
        ValueError: not such a file, or not as long as its header says (torn or damaged).
    """
    data = np.memmap(cached, dtype=np.uint8, mode="r")
    prefix = len(_CACHE_MAGIC) + 8
    if len(data) < prefix or bytes(data[:len(_CACHE_MAGIC)]) != _CACHE_MAGIC:
        raise ValueError(f"{cached} is not a converted-weights file")
    length = int.from_bytes(bytes(data[len(_CACHE_MAGIC):prefix]), "little")
    header = json.loads(bytes(data[prefix:prefix + length]).decode("utf-8"))
    start = _data_start(length)
    if len(data) != start + int(header["data_bytes"]):
        raise ValueError(f"{cached} is {len(data)} bytes, not the {start + header['data_bytes']} its header says")
    arrays = {}
    for name, dtype, shape, position in header["arrays"]:
        arrays[name] = np.ndarray(shape, np.dtype(dtype), buffer=data, offset=start + position)
    proto = arrays.pop(_SENTENCEPIECE_ENTRY, None)
    meta = header["meta"]
    config = _ARCHITECTURES[meta["config"]["model_type"]].config_class(**meta["config"])
    return GGUFModel(config, arrays, meta["tokenizer"], meta["special"], None if proto is None else proto.tobytes())
