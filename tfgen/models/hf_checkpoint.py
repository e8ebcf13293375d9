"""Hugging Face `save_pretrained` directories, read without torch or transformers' model classes.

A directory holds config.json (`model_type` and the sizes), the weights as safetensors (one
`model.safetensors`, or shards listed in `model.safetensors.index.json`) and, optionally,
generation_config.json. `read_checkpoint` turns config.json into tfgen's config of the family
(`LlamaConfig` for llama, qwen2, qwen3 and mistral; `GemmaConfig` for gemma3_text; `GPT2Config`
for gpt2), checks every tensor's name and shape against it from the files' headers before reading
any data, and hands the weights over as a mapping that reads each tensor when the weight holder
takes it: float32 once (bf16 and f16 converted on the way), never a second copy of the model.

| model_type | architecture | what the config adds to Llama's |
|---|---|---|
| llama | LlamaForCausalLM (Llama 2, 3, 3.1, 3.2) | rope_scaling llama3 / linear / dynamic, attention_bias |
| qwen2 | Qwen2ForCausalLM | q/k/v biases; sliding layers with use_sliding_window |
| qwen3 | Qwen3ForCausalLM | per-head q/k RMSNorm, head_dim from the config |
| mistral | MistralForCausalLM | sliding_window: every layer sees that many tokens |
| gemma3_text | Gemma3ForCausalLM | (the Gemma adapter: `tfgen.models.gemma`) |
| gpt2 | GPT2LMHeadModel | (the GPT-2 adapter: `tfgen.models.gpt2`) |

Tensor names stay Hugging Face's (GPT-2's without the "transformer." prefix of GPT2LMHeadModel),
the names `tfgen.models.registry.weights_for` takes, as from GGUF files.

Special ids and default generation parameters follow transformers: generation_config.json wins
over config.json for bos/eos/pad; eos_token_id may be a list (every id ends a row, the first is
the primary one); a missing pad id is the first EOS id (transformers warns and does the same); the
file's sampling parameters become `TextGenerator.defaults`, used where the caller gives none.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
from collections.abc import MutableMapping
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from tfgen.models.gguf import FULL, SLIDING, GemmaConfig, LlamaConfig, sliding_layer_types

CONFIG_FILE = "config.json"
GENERATION_FILE = "generation_config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# model_type -> the transformers class whose checkpoints tfgen reads (for messages and the README).
SUPPORTED = {
    "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "gpt2": "GPT2LMHeadModel",
}

# transformers' config defaults for the optional fields tfgen reads (configuration_*.py of each
# model, transformers 4.57); save_pretrained writes most of them, hand-written configs may not.
_LLAMA_FAMILY_DEFAULTS = {
    "llama": dict(rms_norm_eps=1e-6, rope_theta=10_000.0, max_position_embeddings=2048, bos_token_id=1,
                  eos_token_id=2, hidden_act="silu", tie_word_embeddings=False, head_dim=None),
    "qwen2": dict(rms_norm_eps=1e-6, rope_theta=10_000.0, max_position_embeddings=32_768, hidden_act="silu",
                  tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                  max_window_layers=28, head_dim=None),
    "qwen3": dict(rms_norm_eps=1e-6, rope_theta=10_000.0, max_position_embeddings=32_768, hidden_act="silu",
                  tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                  max_window_layers=28, head_dim=128),
    "mistral": dict(rms_norm_eps=1e-6, rope_theta=10_000.0, max_position_embeddings=4096 * 32,
                    bos_token_id=1, eos_token_id=2, hidden_act="silu", tie_word_embeddings=False,
                    sliding_window=4096, head_dim=None),
}
_GEMMA3_DEFAULTS = dict(head_dim=256, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                        rope_local_base_freq=10_000.0, query_pre_attn_scalar=256, sliding_window=4096,
                        max_position_embeddings=131_072,
                        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, bos_token_id=2,
                        eos_token_id=1, pad_token_id=0)
_GPT2_DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                      activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=50256,
                      eos_token_id=50256, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False)
# rope_scaling keys each type needs (transformers' _validate_*_parameters).
_ROPE_KEYS = {"linear": ("factor",), "dynamic": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
# Float types tfgen converts to float32 (bf16 by its bits: numpy has no bfloat16).
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
PROGRESS_BYTES = 1 << 30  # checkpoints above this show a progress bar (on a terminal)


@dataclasses.dataclass
class HFCheckpoint:
    """What `read_checkpoint` returns.

    Attributes:
        config: the `LlamaConfig`, `GemmaConfig` or `GPT2Config`.
        weights: a `LazyTensors` mapping of every tensor the config needs, read when taken.
        generation_defaults: GenerationConfig fields from generation_config.json (else config.json).
    """

    config: object
    weights: "LazyTensors"
    generation_defaults: dict


def load_checkpoint(path: str) -> Tuple[object, dict]:
    """The weight holder (`LlamaWeights`, `GemmaWeights`, `GPT2Weights`) of a `save_pretrained`
    directory and its default generation parameters.

    Raises:
        ValueError: see `read_checkpoint`; also a damaged tensor (the message names it).

    Example:
        >>> holder, defaults = load_checkpoint("Llama-3.2-1B-Instruct")
        >>> defaults
        {'do_sample': True, 'temperature': 0.6, 'top_p': 0.9}
    """
    from tfgen.models.registry import weights_for

    checkpoint = read_checkpoint(path)
    with checkpoint.weights:
        holder = weights_for(checkpoint.config, checkpoint.weights)
    return holder, checkpoint.generation_defaults


def read_checkpoint(path: str) -> HFCheckpoint:
    """Config, lazily read float32 weights and generation defaults of a `save_pretrained` directory.

    Raises:
        ValueError: no or unreadable config.json; a model_type tfgen does not read (the message lists
            those it does); a config field missing or of a kind tfgen does not run (such as an
            unknown rope_scaling type); no safetensors weights; a shard the index names missing; a
            tensor missing, of another shape than the config implies (both shapes named), or of a
            non-float type; a truncated or damaged file.
    """
    raw = _read_json(os.path.join(path, CONFIG_FILE), required=True)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        listed = ", ".join(f"{name} ({cls})" for name, cls in SUPPORTED.items())
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)} describes a {model_type!r} model; tfgen reads "
                         f"Hugging Face checkpoints of: {listed}")
    generation_path = os.path.join(path, GENERATION_FILE)
    generation = _read_json(generation_path) if os.path.isfile(generation_path) else None
    # Without generation_config.json transformers takes the generation fields from config.json.
    source = raw if generation is None else generation
    config = _CONFIGS[model_type](raw, _special_ids(raw, generation or {}, model_type, path), path)
    entries = _entries(path, model_type)
    _check_tensors(entries, expected_shapes(config), path)
    return HFCheckpoint(config, LazyTensors(entries, expected_shapes(config)),
                        _generation_defaults(source, generation_path if generation is not None else
                                             os.path.join(path, CONFIG_FILE)))


# -- config.json ------------------------------------------------------------------------------------
def _read_json(file: str, required: bool = False) -> dict:
    if not os.path.isfile(file):
        if required:
            raise ValueError(f"{os.path.dirname(file)!r} has no {os.path.basename(file)}; expected a "
                             "save_pretrained directory")
        return {}
    try:
        with open(file, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {file}: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file} holds a JSON {type(value).__name__}, not an object")
    return value


class _Fields:
    """config.json's fields with transformers' defaults under them; a required one that is missing
    raises a ValueError naming it and the file."""

    def __init__(self, raw: dict, defaults: dict, path: str):
        self.raw, self.defaults, self.file = raw, defaults, os.path.join(path, CONFIG_FILE)

    def __call__(self, key: str):
        if key in self.raw:
            return self.raw[key]
        if key in self.defaults:
            return self.defaults[key]
        raise ValueError(f"{self.file} lacks {key!r}")


class _SpecialIds(NamedTuple):
    bos: int
    eos: Tuple[int, ...]  # the primary EOS first
    pad: int


def _special_ids(raw: dict, generation: dict, model_type: str, path: str) -> _SpecialIds:
    """bos/eos/pad as transformers' generate takes them: generation_config.json's, else config.json's,
    else the class defaults; eos may be a list; no pad id means the first EOS id."""
    defaults = {"gpt2": _GPT2_DEFAULTS, "gemma3_text": _GEMMA3_DEFAULTS}.get(
        model_type, _LLAMA_FAMILY_DEFAULTS.get(model_type, {}))

    def first(name):
        for source in (generation, raw, defaults):
            if source.get(name) is not None:
                return source[name]
        return None

    eos = first("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if not eos or not all(isinstance(i, int) and i >= 0 for i in eos):
        raise ValueError(f"{path!r}: no valid eos_token_id in {GENERATION_FILE} or {CONFIG_FILE} "
                         f"(got {first('eos_token_id')!r}); tfgen needs the id that ends a row")
    bos, pad = first("bos_token_id"), first("pad_token_id")
    return _SpecialIds(int(eos[0] if bos is None else bos), tuple(int(i) for i in eos),
                       int(eos[0] if pad is None else pad))


def _shared(field: _Fields, ids: _SpecialIds, path: str) -> dict:
    """The fields every decoder config has, under transformers' names."""
    hidden, heads = int(field("hidden_size")), int(field("num_attention_heads"))
    return dict(vocab_size=int(field("vocab_size")), hidden_size=hidden,
                intermediate_size=int(field("intermediate_size")),
                num_hidden_layers=int(field("num_hidden_layers")), num_attention_heads=heads,
                num_key_value_heads=int(field("num_key_value_heads") or heads),
                head_dim=int(field("head_dim") or hidden // heads),
                max_position_embeddings=int(field("max_position_embeddings")),
                tie_word_embeddings=bool(field("tie_word_embeddings")), bos_token_id=ids.bos,
                eos_token_id=ids.eos[0], eos_token_ids=ids.eos, pad_token_id=ids.pad, name_or_path=path)


def _rope_scaling(field: _Fields) -> Optional[dict]:
    """config.json's rope_scaling with `rope_type` set (older files say `type`); None for none."""
    scaling = field("rope_scaling") if "rope_scaling" in field.raw else None
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    missing = [key for key in _ROPE_KEYS.get(kind, ()) if key not in scaling]
    if missing:
        raise ValueError(f"{field.file}: rope_scaling of type {kind!r} lacks {', '.join(missing)}")
    return {**scaling, "rope_type": kind}  # LlamaConfig refuses the types tfgen does not implement


def _llama_family(raw: dict, ids: _SpecialIds, path: str, model_type: str) -> LlamaConfig:
    field = _Fields(raw, _LLAMA_FAMILY_DEFAULTS[model_type], path)
    if field("hidden_act") != "silu":
        raise ValueError(f"{field.file}: hidden_act {field('hidden_act')!r}; tfgen's Llama adapter runs silu")
    if raw.get("mlp_bias"):
        raise ValueError(f"{field.file}: mlp_bias is set; tfgen's Llama adapter has no feed-forward biases")
    shared = _shared(field, ids, path)
    attention_bias = bool(raw.get("attention_bias", False))
    qkv_bias, o_bias = {"qwen2": (True, False), "mistral": (False, False)}.get(
        model_type, (attention_bias, attention_bias))
    window, layer_types = None, None
    if model_type == "mistral":  # every layer slides when the config has a window
        window = field("sliding_window")
    elif model_type in ("qwen2", "qwen3") and field("use_sliding_window"):
        window = field("sliding_window")
        first = int(field("max_window_layers"))  # transformers: the layers from this one on slide
        layer_types = raw.get("layer_types") or [
            SLIDING if i >= first else FULL for i in range(shared["num_hidden_layers"])]
    if window is not None and layer_types is None:
        layer_types = [SLIDING] * shared["num_hidden_layers"]
    try:
        return LlamaConfig(**shared, rope_theta=float(field("rope_theta")),
                           rms_norm_eps=float(field("rms_norm_eps")), model_type=model_type,
                           rope_scaling=_rope_scaling(field), qkv_bias=qkv_bias, o_bias=o_bias,
                           use_qk_norm=model_type == "qwen3", sliding_window=window,
                           layer_types=layer_types or [FULL] * shared["num_hidden_layers"])
    except ValueError as error:
        raise ValueError(f"{field.file}: {error}") from None


def _gemma3(raw: dict, ids: _SpecialIds, path: str) -> GemmaConfig:
    field = _Fields(raw, _GEMMA3_DEFAULTS, path)
    if raw.get("use_bidirectional_attention"):
        raise ValueError(f"{field.file}: use_bidirectional_attention is set (an embedding model); tfgen "
                         "runs causal language models")
    shared = _shared(field, ids, path)
    layer_types = raw.get("layer_types") or sliding_layer_types(
        shared["num_hidden_layers"], int(raw.get("sliding_window_pattern", 6)))
    try:
        return GemmaConfig(
            **shared, rms_norm_eps=float(field("rms_norm_eps")), rope_theta=float(field("rope_theta")),
            rope_local_base_freq=float(field("rope_local_base_freq")), rope_scaling=raw.get("rope_scaling"),
            sliding_window=field("sliding_window"), layer_types=layer_types,
            query_pre_attn_scalar=float(field("query_pre_attn_scalar")),
            final_logit_softcapping=raw.get("final_logit_softcapping"),
            attn_logit_softcapping=raw.get("attn_logit_softcapping"),
            hidden_activation=field("hidden_activation"), model_type="gemma3")
    except ValueError as error:
        raise ValueError(f"{field.file}: {error}") from None


def _gpt2(raw: dict, ids: _SpecialIds, path: str):
    from tfgen.models.gpt2 import GPT2Config

    field = _Fields(raw, _GPT2_DEFAULTS, path)
    if not field("scale_attn_weights") or field("scale_attn_by_inverse_layer_idx"):
        raise ValueError(f"{field.file}: scale_attn_weights must be true and scale_attn_by_inverse_layer_idx "
                         "false (the GPT-2 attention tfgen runs)")
    return GPT2Config(
        vocab_size=int(field("vocab_size")), n_positions=int(field("n_positions")),
        n_embd=int(field("n_embd")), n_layer=int(field("n_layer")), n_head=int(field("n_head")),
        n_inner=field("n_inner"), activation_function=field("activation_function"),
        layer_norm_epsilon=float(field("layer_norm_epsilon")),
        bos_token_id=ids.bos, eos_token_id=ids.eos[0], eos_token_ids=ids.eos, pad_token_id=ids.pad,
        name_or_path=path)


_CONFIGS = {
    "llama": lambda raw, ids, path: _llama_family(raw, ids, path, "llama"),
    "qwen2": lambda raw, ids, path: _llama_family(raw, ids, path, "qwen2"),
    "qwen3": lambda raw, ids, path: _llama_family(raw, ids, path, "qwen3"),
    "mistral": lambda raw, ids, path: _llama_family(raw, ids, path, "mistral"),
    "gemma3_text": _gemma3,
    "gpt2": _gpt2,
}


def _generation_defaults(source: dict, file: str) -> dict:
    """The GenerationConfig fields a generation_config.json (or config.json) sets, checked.

    Special ids are the model's (its config); `max_length` is left out: it counts the prompt, and
    tfgen limits the new tokens only (`max_new_tokens`, which is kept).
    """
    from tfgen.config import GenerationConfig

    names = {f.name for f in dataclasses.fields(GenerationConfig)} - {"eos_token_id", "pad_token_id", "seed"}
    defaults = {name: source[name] for name in sorted(names) if source.get(name) is not None}
    if source.get("stop_strings"):
        defaults["stop"] = source["stop_strings"]
    try:
        GenerationConfig(**defaults).validate()
    except (TypeError, ValueError) as error:
        raise ValueError(f"{file}: {error}") from None
    return defaults


# -- tensors ----------------------------------------------------------------------------------------
def expected_shapes(config) -> Dict[str, Tuple[int, ...]]:
    """Every tensor the config's weight holder takes, by Hugging Face name, with its shape."""
    if config.model_type == "gpt2":
        return _gpt2_shapes(config)
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes = {"model.embed_tokens.weight": (config.vocab_size, d), "model.norm.weight": (d,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, d)
    block = {"self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
             "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q),
             "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
             "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,)}
    if config.use_qk_norm:
        block.update({"self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,)})
    if isinstance(config, GemmaConfig):
        block.update({"pre_feedforward_layernorm.weight": (d,), "post_feedforward_layernorm.weight": (d,)})
    else:
        if config.qkv_bias:
            block.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                          "self_attn.v_proj.bias": (kv,)})
        if config.o_bias:
            block["self_attn.o_proj.bias"] = (d,)
    for i in range(config.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def _gpt2_shapes(config) -> Dict[str, Tuple[int, ...]]:
    d, inner = config.n_embd, config.n_inner
    shapes = {"wte.weight": (config.vocab_size, d), "wpe.weight": (config.n_positions, d),
              "ln_f.weight": (d,), "ln_f.bias": (d,)}
    block = {"ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
             "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
             "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
             "mlp.c_fc.weight": (d, inner), "mlp.c_fc.bias": (inner,),
             "mlp.c_proj.weight": (inner, d), "mlp.c_proj.bias": (d,)}
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    return shapes


class _Entry(NamedTuple):
    """Where one tensor lies: its file, safetensors dtype, shape and byte range in the file."""

    file: str
    name: str  # its name in the file
    dtype: str
    shape: Tuple[int, ...]
    begin: int
    end: int
    hf_name: str  # its Hugging Face name, as the weight holders take it


def _gpt2_entry(entry: _Entry) -> _Entry:
    """A GPT-2 tensor under the names `GPT2Weights` takes: without GPT2LMHeadModel's "transformer."
    prefix; a TFGPT2LMHeadModel's own safetensors ("transformer/h_._0/ln_1/gamma:0", biases
    [1, out]) under PyTorch's names and shapes."""
    name = entry.name
    if name.endswith(":0"):  # TensorFlow's variable names
        name = name[:-2].replace("h_._", "h.").replace("/", ".")
        for tf_name, hf_name in ((".gamma", ".weight"), (".beta", ".bias"), (".embeddings", ".weight")):
            if name.endswith(tf_name):
                name = name[: -len(tf_name)] + hf_name
    if name.startswith("transformer."):
        name = name[len("transformer."):]
    shape = entry.shape
    if name.endswith(".bias") and len(shape) == 2 and shape[0] == 1:  # TF's Conv1D biases
        shape = shape[1:]
    return entry._replace(hf_name=name, shape=shape)


def _entries(path: str, model_type: str) -> Dict[str, _Entry]:
    """Every tensor of the directory's safetensors files (from their headers), by Hugging Face name."""
    single, index = os.path.join(path, SINGLE_FILE), os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map")
        shards = sorted(set(weight_map.values()))
        missing = [shard for shard in shards if not os.path.isfile(os.path.join(path, shard))]
        if missing:
            raise ValueError(f"{path!r}: shard {missing[0]} named in {INDEX_FILE} is missing"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        files = [os.path.join(path, shard) for shard in shards]
    elif os.path.isfile(single):
        weight_map, files = None, [single]
    else:
        others = [name for name in ("pytorch_model.bin", "tf_model.h5")
                  if os.path.isfile(os.path.join(path, name))]
        hint = (f" (it has {others[0]}: save the model with safetensors, save_pretrained(DIR, "
                "safe_serialization=True), the default)" if others else "")
        raise ValueError(f"{path!r} has no weights: expected {SINGLE_FILE} or {INDEX_FILE}{hint}")
    entries = {}
    for file in files:
        for entry in _header(file):
            if weight_map is not None and weight_map.get(entry.name) not in (None, os.path.basename(file)):
                continue  # the index puts this name in another shard
            if model_type == "gpt2":
                entry = _gpt2_entry(entry)
            entries[entry.hf_name] = entry
    if weight_map is not None:
        held = {entry.name for entry in entries.values()}
        absent = sorted(name for name in weight_map if name not in held)
        if absent:
            raise ValueError(f"{path!r}: {INDEX_FILE} puts {absent[0]} in {weight_map[absent[0]]}, "
                             "which does not hold it")
    return entries


def _header(file: str) -> List[_Entry]:
    """The tensors a safetensors file holds, from its header: 8 bytes (little-endian length), then
    JSON {name: {dtype, shape, data_offsets}} with offsets from the end of the header."""
    size = os.path.getsize(file)
    try:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                raise ValueError(f"its header claims {length} bytes, the file has {size}")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise ValueError(f"cannot load weights from {file}: not a readable safetensors file "
                         f"({error})") from None
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = (8 + length + int(offset) for offset in info["data_offsets"])
        if end > size:
            raise ValueError(f"cannot load weights from {file}: it is truncated (tensor {name} ends at byte "
                             f"{end}, the file has {size})")
        shape = tuple(int(n) for n in info["shape"])
        entries.append(_Entry(file, name, info["dtype"], shape, begin, end, name))
    return entries


def _check_tensors(entries: Dict[str, _Entry], shapes: Dict[str, Tuple[int, ...]], path: str) -> None:
    missing = sorted(set(shapes) - set(entries))
    if missing:
        raise ValueError(f"the checkpoint in {path!r} does not match its {CONFIG_FILE}: {len(missing)} "
                         f"tensors it implies are missing (e.g. {missing[0]}, shape "
                         f"{list(shapes[missing[0]])}); check the layer count, tie_word_embeddings and "
                         "model_type")
    for name, shape in shapes.items():
        entry = entries[name]
        if entry.shape != shape:
            raise ValueError(f"the checkpoint does not match its {CONFIG_FILE}: tensor {entry.name} in "
                             f"{entry.file} has shape {list(entry.shape)}, the config implies {list(shape)}")
        if entry.dtype not in FLOAT_TYPES:
            raise ValueError(f"tensor {entry.name} in {entry.file} is {entry.dtype}; tfgen reads the float "
                             f"types {', '.join(FLOAT_TYPES)}")


class LazyTensors(MutableMapping):
    """The checkpoint's tensors by Hugging Face name, each read from its file (and converted to
    float32) when a weight holder takes it; taking it (`pop`) drops it, so no copy stays here.

    A context manager: it keeps the files open while the holder is built, and shows a progress bar
    on a terminal for checkpoints over `PROGRESS_BYTES`.
    """

    def __init__(self, entries: Dict[str, _Entry], names: Sequence[str]):
        self._entries = {name: entries[name] for name in names}
        self._handles: Dict[str, object] = {}
        total = sum(entry.end - entry.begin for entry in self._entries.values())
        self._progress = None
        if total > PROGRESS_BYTES and sys.stderr.isatty():
            from tqdm import tqdm

            self._progress = tqdm(total=total, unit="B", unit_scale=True, desc="reading weights",
                                  file=sys.stderr, leave=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._handles.clear()
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        try:
            array = self._read(entry)
        except Exception as error:  # safetensors raises its own error type for damaged data
            raise ValueError(f"cannot load weights from {entry.file}: tensor {entry.name}: "
                             f"{type(error).__name__}: {error}") from None
        if self._progress is not None:
            self._progress.update(entry.end - entry.begin)
        return array

    def _read(self, entry: _Entry) -> np.ndarray:
        if entry.dtype == "BF16":
            # bfloat16 is the upper half of a float32: shift its 16 bits into place.
            count = (entry.end - entry.begin) // 2
            bits = np.fromfile(entry.file, dtype="<u2", count=count, offset=entry.begin)
            return (bits.astype(np.uint32) << 16).view(np.float32).reshape(entry.shape)
        if entry.file not in self._handles:
            from safetensors import safe_open

            self._handles[entry.file] = safe_open(entry.file, framework="np")
        array = self._handles[entry.file].get_tensor(entry.name).reshape(entry.shape)
        return array.astype(np.float32, copy=False)  # F32 as read; F16 and F64 converted once

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __setitem__(self, name, value):
        raise TypeError("the checkpoint's tensors are read-only")

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries
