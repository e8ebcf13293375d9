"""KerasHub causal LMs on tfgen's engine: a `keras_hub.models.CausalLM` object or a preset directory.

KerasHub runs on Keras 3 and tfgen on TensorFlow with tf-keras (Keras 2); both live in one process.
tfgen reads a KerasHub model's variables once, copies them to float32 arrays under Hugging Face's
names and builds its own adapter's weights from them, so nothing of Keras 3 runs while tfgen
decodes. The mapping is the inverse of keras-hub's own converters from transformers checkpoints
(`keras_hub/src/utils/transformers/convert_*.py`): einsum kernels such as the query's
[hidden, heads, head_dim] become transformers' [out, in] matrices.

| KerasHub task | tfgen model | tokenizer |
|---|---|---|
| `GPT2CausalLM` | a `transformers.TFGPT2LMHeadModel` (read by the GPT-2 adapter) | byte-level BPE |
| `Llama3CausalLM` | `tfgen.models.llama.LlamaWeights` | byte-level BPE, Llama 3's split |
| `LlamaCausalLM` | `tfgen.models.llama.LlamaWeights` | SentencePiece (the tokenizer's proto) |
| `GemmaCausalLM` (Gemma 1, 2) | `tfgen.models.gemma.GemmaWeights` | SentencePiece |
| `Gemma3CausalLM` (text only) | `tfgen.models.gemma.GemmaWeights` | SentencePiece |

The tokenizer keeps the task preprocessor's convention: KerasHub's preprocessors put the start
token (`<|endoftext|>` for GPT-2, `<|begin_of_text|>` for Llama 3, `<s>` for Llama, `<bos>` for
Gemma) before every prompt, as the model saw in training; tfgen's tokenizers say so with
`add_bos_token` (transformers' name for it). Generation stops at the tokenizer's end token (KerasHub's
Llama 3 also stops at `<|eot_id|>`; tfgen has one end token per model). Llama 3's words are split with
Llama 3's own pattern (tiktoken's), as transformers does; keras-hub's TensorFlow tokenizer splits
runs of digits differently ("12345": " 123" + "45" there, " " + "123" + "45" here).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Dict, NamedTuple, Sequence

import numpy as np

# The families' published context lengths: KerasHub's RoPE backbones do not record one.
_LLAMA_CONTEXT = 4096  # Llama 2
_LLAMA3_CONTEXT = 8192  # Llama 3
_GEMMA_CONTEXT = 8192  # Gemma 1 and 2
_GEMMA3_CONTEXT = 32_768  # Gemma 3 270M and 1B (the larger ones: 128K)


class Converted(NamedTuple):
    """A KerasHub model as tfgen runs it: a model its registry knows, and a transformers tokenizer."""

    model: object
    tokenizer: object


def is_causal_lm(candidate) -> bool:
    """Whether `candidate` is a KerasHub `CausalLM` (without importing keras_hub when it is not loaded:
    an object of its classes cannot exist before it is imported)."""
    keras_hub = sys.modules.get("keras_hub")
    return keras_hub is not None and isinstance(candidate, keras_hub.models.CausalLM)


def is_preset(directory: str) -> bool:
    """Whether `directory` was written by KerasHub's `save_to_preset` (its config.json names a
    keras-hub class; a transformers `save_pretrained` directory's names a model_type instead)."""
    try:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and (
        str(config.get("registered_name", "")).startswith("keras_hub>")
        or str(config.get("module", "")).startswith("keras_hub."))


def from_preset(directory: str) -> Converted:
    """The model of a KerasHub preset directory (`causal_lm.save_to_preset(directory)`).

    Raises:
        ValueError: the directory holds no causal LM task (task.json), or keras-hub cannot load it,
            or its class is not supported.
    """
    import keras_hub

    if not os.path.isfile(os.path.join(directory, "task.json")):
        raise ValueError(f"{directory!r} is a KerasHub preset without a task (task.json): save the whole "
                         "causal LM with causal_lm.save_to_preset(DIR), not only its backbone")
    try:
        causal_lm = keras_hub.models.CausalLM.from_preset(directory)
    except Exception as error:  # keras-hub raises many types for a damaged preset
        first = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot load the KerasHub preset {directory!r}: "
                         f"{type(error).__name__}: {first}") from None
    return from_causal_lm(causal_lm)


def from_causal_lm(causal_lm) -> Converted:
    """tfgen's model and tokenizer for a KerasHub `CausalLM`, its weights copied to float32 once.

    Raises:
        ValueError: a task class tfgen does not support (the message lists the supported ones),
            a task without its preprocessor (tfgen needs the tokenizer), or a configuration tfgen's
            adapters do not implement (such as Llama 3.1's RoPE scaling).

    Example:
        >>> causal_lm = keras_hub.models.GPT2CausalLM.from_preset("gpt2_base_en")
        >>> model, tokenizer = from_causal_lm(causal_lm)   # what tfgen.load(causal_lm) runs
    """
    kinds = [klass.__name__ for klass in type(causal_lm).__mro__]
    name = next((kind for kind in kinds if kind in SUPPORTED), None)  # a subclass counts as its base
    if name is None:
        raise ValueError(f"tfgen does not support KerasHub's {kinds[0]}; it supports {', '.join(SUPPORTED)}")
    preprocessor = getattr(causal_lm, "preprocessor", None)
    if preprocessor is None or getattr(preprocessor, "tokenizer", None) is None:
        raise ValueError(f"this {kinds[0]} has no preprocessor with a tokenizer; tfgen needs one to turn "
                         "text into ids (build the task with its preprocessor)")
    return SUPPORTED[name](causal_lm.backbone, preprocessor)


# -- weights ----------------------------------------------------------------------------------------
def _array(variable) -> np.ndarray:
    """A float32 numpy copy of a Keras 3 variable (whatever its dtype: float16, bfloat16, float32)."""
    from keras import ops

    return np.asarray(ops.convert_to_numpy(ops.cast(variable, "float32")), np.float32)


def _linear(kernel, inputs: int = 1) -> np.ndarray:
    """A KerasHub einsum kernel as transformers' [out, in] matrix, its first `inputs` axes the input:
    Llama's query [hidden, heads, head_dim] -> [heads * head_dim, hidden]; an output projection
    (inputs=2) [heads, head_dim, hidden] -> [hidden, heads * head_dim]."""
    value = _array(kernel)
    return value.reshape(int(np.prod(value.shape[:inputs])), -1).T


def _heads_first(kernel) -> np.ndarray:
    """Gemma's projection kernel [heads, hidden, head_dim] as transformers' [heads * head_dim, hidden]."""
    value = _array(kernel)
    return value.transpose(0, 2, 1).reshape(-1, value.shape[1])


def _projections(prefix: str, qkv: Sequence, output, mlp: Sequence, project=_linear) -> Dict[str, np.ndarray]:
    """One block's attention and gated-MLP matrices under transformers' names: `qkv` the query, key
    and value kernels (read with `project`), `output` the attention's output kernel, `mlp` the gate,
    up and down kernels."""
    weights = {f"{prefix}self_attn.{name}_proj.weight": project(kernel) for name, kernel in zip("qkv", qkv)}
    weights[prefix + "self_attn.o_proj.weight"] = _linear(output, inputs=2)
    weights.update({f"{prefix}mlp.{name}_proj.weight": _linear(kernel)
                    for name, kernel in zip(("gate", "up", "down"), mlp)})
    return weights


# -- GPT-2 ------------------------------------------------------------------------------------------
def _gpt2(backbone, preprocessor) -> Converted:
    """A `TFGPT2LMHeadModel` holding the backbone's weights: the GPT-2 adapter reads it as it reads any
    transformers GPT-2, so every GPT-2 path (exports, Hugging Face comparisons) applies unchanged."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    tokenizer = preprocessor.tokenizer
    config = GPT2Config(
        vocab_size=backbone.vocabulary_size, n_positions=backbone.max_sequence_length,
        n_embd=backbone.hidden_dim, n_layer=backbone.num_layers, n_head=backbone.num_heads,
        n_inner=backbone.intermediate_dim,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,  # keras-hub's gelu_approximate and epsilon
        bos_token_id=tokenizer.start_token_id, eos_token_id=tokenizer.end_token_id,
        pad_token_id=tokenizer.end_token_id, name_or_path=backbone.name)
    model = TFGPT2LMHeadModel(config)
    model(model.dummy_inputs)  # builds the variables; each is overwritten below
    main = model.transformer
    main.wte.embeddings.assign(_array(backbone.token_embedding.embeddings))  # [V, D], tied to the output
    main.wpe.embeddings.assign(_array(backbone.position_embedding.position_embeddings))  # [P, D]

    def conv1d(conv, kernel, bias):  # transformers' Conv1D: weight [in, out], bias [1, out]
        conv.weight.assign(kernel)
        conv.bias.assign(bias.reshape(1, -1))

    def layer_norm(norm, source):
        norm.gamma.assign(_array(source.gamma))
        norm.beta.assign(_array(source.beta))

    for block, layer in zip(main.h, backbone.transformer_layers):
        attention = layer._self_attention_layer
        qkv = (attention.query_dense, attention.key_dense, attention.value_dense)
        conv1d(block.attn.c_attn, np.concatenate([_linear(d.kernel).T for d in qkv], axis=1),
               np.concatenate([_array(d.bias).reshape(-1) for d in qkv]))
        conv1d(block.attn.c_proj, _linear(attention.output_dense.kernel, inputs=2).T,
               _array(attention.output_dense.bias))
        for conv, dense in ((block.mlp.c_fc, layer._feedforward_intermediate_dense),
                            (block.mlp.c_proj, layer._feedforward_output_dense)):
            conv1d(conv, _array(dense.kernel), _array(dense.bias))
        layer_norm(block.ln_1, layer._self_attention_layer_norm)
        layer_norm(block.ln_2, layer._feedforward_layer_norm)
    layer_norm(main.ln_f, backbone.layer_norm)
    return Converted(model, _bpe_tokenizer(tokenizer, llama3_split=False, start=preprocessor.add_start_token))


# -- Llama ------------------------------------------------------------------------------------------
def _llama_weights(backbone) -> Dict[str, np.ndarray]:
    """A LlamaBackbone's weights under transformers' Llama names."""
    embedding = backbone.token_embedding
    weights = {"model.embed_tokens.weight": _array(embedding.embeddings),  # [V, D]
               "model.norm.weight": _array(backbone.layer_norm.scale)}
    if not backbone.tie_word_embeddings:
        weights["lm_head.weight"] = _array(embedding.reverse_embeddings).T  # [D, V] -> [V, D]
    for i, layer in enumerate(backbone.transformer_layers):
        prefix, attention = f"model.layers.{i}.", layer._self_attention_layer
        weights[prefix + "input_layernorm.weight"] = _array(layer._self_attention_layernorm.scale)
        weights[prefix + "post_attention_layernorm.weight"] = _array(layer._feedforward_layernorm.scale)
        qkv = (attention._query_dense, attention._key_dense, attention._value_dense)
        weights.update(_projections(
            prefix, [d.kernel for d in qkv], attention._output_dense.kernel,
            [d.kernel for d in (layer._feedforward_gate_dense, layer._feedforward_intermediate_dense,
                                layer._feedforward_output_dense)]))
    return weights


def _llama_model(backbone, tokenizer, context: int):
    from tfgen.models.gguf import LlamaConfig
    from tfgen.models.llama import LlamaWeights

    if backbone.rope_position_scaling_factor != 1.0 or backbone.rope_frequency_adjustment_factor is not None:
        raise ValueError("this Llama backbone scales its RoPE positions or frequencies (rope_position_"
                         "scaling_factor, or Llama 3.1's rope_frequency_adjustment_factor); tfgen's Llama "
                         "adapter does not implement RoPE scaling yet")
    eos = tokenizer.end_token_id
    config = LlamaConfig(
        vocab_size=backbone.vocabulary_size, hidden_size=backbone.hidden_dim,
        intermediate_size=backbone.intermediate_dim, num_hidden_layers=backbone.num_layers,
        num_attention_heads=backbone.num_query_heads, num_key_value_heads=backbone.num_key_value_heads,
        head_dim=backbone.hidden_dim // backbone.num_query_heads,
        rope_theta=float(backbone.rope_max_wavelength), rms_norm_eps=float(backbone.layer_norm_epsilon),
        max_position_embeddings=context, tie_word_embeddings=bool(backbone.tie_word_embeddings),
        bos_token_id=tokenizer.start_token_id, eos_token_id=eos, pad_token_id=eos, name_or_path=backbone.name)
    return LlamaWeights(config, _llama_weights(backbone))


def _llama3(backbone, preprocessor) -> Converted:
    tokenizer = _bpe_tokenizer(preprocessor.tokenizer, llama3_split=True, start=preprocessor.add_start_token)
    return Converted(_llama_model(backbone, preprocessor.tokenizer, _LLAMA3_CONTEXT), tokenizer)


def _llama(backbone, preprocessor) -> Converted:
    return Converted(_llama_model(backbone, preprocessor.tokenizer, _LLAMA_CONTEXT),
                     _sentencepiece_tokenizer(preprocessor))


# -- Gemma ------------------------------------------------------------------------------------------
def _gemma_weights(backbone, post_norms: bool, qk_norm: bool) -> Dict[str, np.ndarray]:
    """A GemmaBackbone's or Gemma3Backbone's weights under transformers' Gemma names; both store the
    norm weights w of x * (1 + w), as transformers does."""
    weights = {"model.embed_tokens.weight": _array(backbone.token_embedding.embeddings),  # [V, D]
               "model.norm.weight": _array(backbone.layer_norm.scale)}
    for i, layer in enumerate(backbone.transformer_layers):
        prefix, attention = f"model.layers.{i}.", layer.attention
        weights.update(_projections(
            prefix, [d.kernel for d in (attention.query_dense, attention.key_dense, attention.value_dense)],
            attention.output_dense.kernel, [d.kernel for d in (layer.gating_ffw, layer.gating_ffw_2,
                                                               layer.ffw_linear)], project=_heads_first))
        norms = {"input_layernorm": layer.pre_attention_norm}
        if post_norms:
            norms.update(post_attention_layernorm=layer.post_attention_norm,
                         pre_feedforward_layernorm=layer.pre_ffw_norm,
                         post_feedforward_layernorm=layer.post_ffw_norm)
        else:  # Gemma 1 calls its pre-MLP norm post_attention_layernorm
            norms["post_attention_layernorm"] = layer.pre_ffw_norm
        if qk_norm:
            norms.update({"self_attn.q_norm": attention.query_norm, "self_attn.k_norm": attention.key_norm})
        weights.update({f"{prefix}{name}.weight": _array(norm.scale) for name, norm in norms.items()})
    return weights


def _gemma_model(backbone, tokenizer, family: str, **config):
    """`GemmaWeights` from a Gemma backbone; `config` holds what differs between the families."""
    from tfgen.models.gemma import GemmaConfig, GemmaWeights, sliding_layer_types

    if backbone.use_post_attention_norm != backbone.use_post_ffw_norm:
        raise ValueError("this Gemma backbone normalizes after attention or after the MLP but not both; "
                         "tfgen's Gemma adapter has both norms or neither")
    # The query scale as the attention layers apply it: keras-hub's decoder blocks build them with
    # query_head_dim_normalize=True (1 / sqrt(head_dim)) whatever the backbone's own flag says.
    normalize = {bool(layer.attention.query_head_dim_normalize) for layer in backbone.transformer_layers}
    if len(normalize) != 1:
        raise ValueError("this Gemma backbone's layers scale their queries differently; tfgen's Gemma "
                         "adapter has one query scale")
    pattern = 6 if family == "gemma3" else 2  # keras-hub: every pattern-th layer is global, the rest slide
    gemma_config = GemmaConfig(
        vocab_size=backbone.vocabulary_size, hidden_size=backbone.hidden_dim,
        intermediate_size=int(backbone.transformer_layers[0].gating_ffw.kernel.shape[-1]),
        num_hidden_layers=backbone.num_layers, num_attention_heads=backbone.num_query_heads,
        num_key_value_heads=backbone.num_key_value_heads, head_dim=backbone.head_dim,
        rms_norm_eps=float(backbone.layer_norm_epsilon), sliding_window=backbone.sliding_window_size,
        layer_types=sliding_layer_types(backbone.num_layers,
                                        pattern if backbone.use_sliding_window_attention else None),
        query_pre_attn_scalar=backbone.head_dim if normalize.pop()
        else backbone.hidden_dim // backbone.num_query_heads,
        attn_logit_softcapping=backbone.attention_logit_soft_cap,
        final_logit_softcapping=backbone.final_logit_soft_cap,
        use_post_norms=bool(backbone.use_post_ffw_norm),
        bos_token_id=tokenizer.start_token_id, eos_token_id=tokenizer.end_token_id,
        pad_token_id=tokenizer.pad_token_id, model_type=family, name_or_path=backbone.name, **config)
    return GemmaWeights(gemma_config, _gemma_weights(backbone, gemma_config.use_post_norms,
                                                     gemma_config.use_qk_norm))


def _gemma(backbone, preprocessor) -> Converted:
    """Gemma 1 and 2 (GemmaBackbone): one RoPE base (10 000, keras-hub's) for every layer; Gemma 2 is
    the one with sliding-window layers and norms after attention and the MLP."""
    gemma2 = backbone.use_sliding_window_attention or backbone.use_post_ffw_norm
    model = _gemma_model(backbone, preprocessor.tokenizer, "gemma2" if gemma2 else "gemma",
                         rope_theta=10_000.0, use_qk_norm=False, max_position_embeddings=_GEMMA_CONTEXT)
    return Converted(model, _sentencepiece_tokenizer(preprocessor))


def _gemma3(backbone, preprocessor) -> Converted:
    """Gemma 3, text only: RoPE bases 10 000 (sliding layers) and 1 000 000 (global layers, with
    keras-hub's global_rope_scaling_factor as linear scaling), as keras-hub's backbone fixes them."""
    if (backbone.vision_encoder is not None or backbone.is_embedding_model
            or backbone.use_bidirectional_attention):
        raise ValueError("tfgen runs Gemma 3 text-only causal LMs; this backbone has a vision encoder or "
                         "is an embedding model")
    if backbone.local_rope_scaling_factor != 1.0:
        raise ValueError("this Gemma 3 backbone scales the RoPE of its sliding-window layers "
                         f"(local_rope_scaling_factor={backbone.local_rope_scaling_factor}); tfgen scales "
                         "only the global layers' RoPE")
    factor = float(backbone.global_rope_scaling_factor)
    model = _gemma_model(
        backbone, preprocessor.tokenizer, "gemma3", rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
        rope_scaling=None if factor == 1.0 else {"rope_type": "linear", "factor": factor},
        use_qk_norm=bool(backbone.use_query_key_norm), max_position_embeddings=_GEMMA3_CONTEXT)
    return Converted(model, _sentencepiece_tokenizer(preprocessor))


# -- tokenizers -------------------------------------------------------------------------------------
def _bpe_tokenizer(tokenizer, llama3_split: bool, start: bool):
    """A keras-hub BytePairTokenizer's vocabulary and merges as a transformers fast tokenizer.

    GPT-2 splits words with the byte-level pre-tokenizer's own (GPT-2's) pattern, Llama 3 with its
    own pattern first. keras-hub's special tokens stay whole in text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    from tfgen.tokenizer import LLAMA3_SPLIT_REGEX

    merges = [tuple(rule.split(" ")) for rule in tokenizer.merges if not rule.startswith("#version")]
    backend = Tokenizer(models.BPE(vocab=dict(tokenizer.vocabulary), merges=merges))
    if llama3_split:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return _fast_tokenizer(backend, tokenizer, start)


def _fast_tokenizer(backend, tokenizer, start: bool):
    """The `tokenizers` backend as a `tfgen.bpe_tokenizer.BPETokenizer` with keras-hub's special tokens; with
    `start`, it says so as transformers' Llama tokenizers do (`add_bos_token`, and BOS first when
    encoding with add_special_tokens=True)."""
    from tokenizers import processors

    from tfgen.bpe_tokenizer import BPETokenizer

    bos, eos = tokenizer.id_to_token(tokenizer.start_token_id), tokenizer.id_to_token(tokenizer.end_token_id)
    if start:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.start_token_id)])
    special = [t for t in (getattr(tokenizer, "special_tokens", None) or []) if t not in (bos, eos)]
    return BPETokenizer(backend, bos_token=bos, eos_token=eos, pad_token=eos,
                        additional_special_tokens=special, add_bos_token=bool(start))


def _sentencepiece_tokenizer(preprocessor):
    """A keras-hub SentencePieceTokenizer's model (its serialized proto) as tfgen's SentencePiece
    tokenizer."""
    from tfgen.sentencepiece_tokenizer import SentencePieceTokenizer

    proto = preprocessor.tokenizer.proto
    if proto is None:
        raise ValueError("the KerasHub tokenizer has no SentencePiece model (its proto is not set)")
    return SentencePieceTokenizer(bytes(proto), add_bos_token=bool(preprocessor.add_start_token))


# KerasHub task class -> its converter; a subclass of one of these is converted as its base.
SUPPORTED: Dict[str, Callable[..., Converted]] = {
    "GPT2CausalLM": _gpt2,
    "Llama3CausalLM": _llama3,
    "LlamaCausalLM": _llama,
    "GemmaCausalLM": _gemma,
    "Gemma3CausalLM": _gemma3,
}
