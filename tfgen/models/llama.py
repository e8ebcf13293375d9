"""Llama-family models (Llama 2/3/3.1/3.2, Qwen2, Qwen3, Mistral, SmolLM2): weights as variables and
the adapter.

`LlamaWeights` holds the weights as `tf.Variable`s in a `tf.Module`, so compiled programs read
them instead of embedding 500 MB of constants, and SavedModel exports track them. `Llama` is
the decoding engine's adapter: RMSNorm, rotary position embeddings (rotate-half, as in
transformers and keras-hub), grouped-query attention over the same static cache as GPT-2
(`tfgen.models.base.cached_attention`), a SwiGLU feed-forward, and tied input/output embeddings when
the checkpoint has no separate output matrix.

Llama's relatives differ in a few parts, each a field of `LlamaConfig`, so one adapter runs them all:

| part (config field) | Llama 3.1/3.2 | Qwen2 | Qwen3 | Mistral |
|---|---|---|---|---|
| RoPE scaling (`rope_scaling`) | llama3 | - | - | - |
| q/k/v biases (`qkv_bias`), output bias (`o_bias`) | attention_bias | q/k/v | attention_bias | - |
| per-head q/k RMSNorm (`use_qk_norm`) | - | - | yes | - |
| sliding layers (`layer_types`, `sliding_window`) | - | use_sliding_window | use_sliding_window | all |
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
import tensorflow as tf

from tfgen.models.base import (DecoderLM, apply_rotary, attention_bias, block_projections, cached_attention,
                               dense, gated_ffn, merge_heads, output_weight, project_qkv, rms_norm,
                               rope_frequencies, rotary_context, weight_variable)
from tfgen.models.gguf import FULL, SLIDING, LlamaConfig


def rope_inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """RoPE inverse frequencies [head_dim / 2] with the config's `rope_scaling`, as transformers'
    `modeling_rope_utils.py` computes them (float32).

    - none or "default": 1 / rope_theta ** (2i / head_dim).
    - "linear": those divided by `factor` (positions / factor).
    - "llama3" (Llama 3.1, 3.2): wavelengths longer than original_max_position_embeddings /
      low_freq_factor are divided by `factor`, those shorter than ... / high_freq_factor kept,
      the ones between interpolated smoothly.
    - "dynamic" (dynamic NTK): transformers recomputes the base for sequences longer than
      max_position_embeddings, base * (factor * L / max_position_embeddings - (factor - 1)) **
      (d / (d - 2)); up to max_position_embeddings it is the default RoPE. tfgen never runs a
      sequence past max_position_embeddings (`GenerationConfig.check_fits` refuses it), so dynamic
      scaling is the default frequencies here, exactly what transformers computes for those lengths.
    """
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return rope_frequencies(config.head_dim, config.rope_theta, float(scaling["factor"]))
    frequencies = rope_frequencies(config.head_dim, config.rope_theta)
    if kind != "llama3":  # "default", "dynamic" (see above)
        return frequencies
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    context = float(scaling["original_max_position_embeddings"])
    wavelengths = 2 * math.pi / frequencies
    scaled = np.where(wavelengths > context / low, frequencies / factor, frequencies)
    smooth = (context / wavelengths - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelengths < context / high) & ~(wavelengths > context / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


class _Block(tf.Module):
    """One decoder block's weights, projections fused and stored [in, out] for x @ W."""

    def __init__(self, weights: Dict[str, np.ndarray], prefix: str, index: int, config: LlamaConfig):
        super().__init__(name=f"block_{index}")

        def get(name):
            return weights.pop(prefix + name)

        projections = block_projections(get)  # qkv, o, gate_up, down
        self.qkv, self.o = projections["qkv"], projections["o"]
        self.gate_up, self.down = projections["gate_up"], projections["down"]
        self.attn_norm = weight_variable(get("input_layernorm.weight"), "attn_norm")
        self.ffn_norm = weight_variable(get("post_attention_layernorm.weight"), "ffn_norm")
        self.qkv_bias = self.o_bias = self.q_norm = self.k_norm = None
        if config.qkv_bias:  # [(H + 2 Hkv) * hd], in the fused projection's order
            self.qkv_bias = weight_variable(np.concatenate(
                [get(f"self_attn.{name}_proj.bias") for name in "qkv"]), "qkv_bias")
        if config.o_bias:
            self.o_bias = weight_variable(get("self_attn.o_proj.bias"), "o_bias")  # [D]
        if config.use_qk_norm:  # [hd] each, shared by the heads
            self.q_norm = weight_variable(get("self_attn.q_norm.weight"), "q_norm")
            self.k_norm = weight_variable(get("self_attn.k_norm.weight"), "k_norm")


class LlamaWeights(tf.Module):
    """A Llama-family model's weights as variables; `config` is its `tfgen.models.gguf.LlamaConfig`.

    Args:
        config: the hyperparameters.
        weights: float32 arrays under Hugging Face's names (as `tfgen.models.gguf.read_gguf` returns
            them); consumed (the dict is emptied) to keep peak memory down.

    Example:
        >>> from tfgen.models.gguf import read_gguf
        >>> gguf = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
        >>> weights = LlamaWeights(gguf.config, gguf.weights)
    """

    def __init__(self, config: LlamaConfig, weights: Dict[str, np.ndarray]):
        super().__init__(name="llama")
        self.config = config
        self.embed_tokens = tf.Variable(weights.pop("model.embed_tokens.weight"), trainable=False,
                                        name="embed_tokens")  # [V, D]
        # The output matrix [V, D]: the embeddings when tied, else lm_head (stored once, maybe split).
        tied = config.tie_word_embeddings
        self.output = output_weight(self.embed_tokens if tied else weights.pop("lm_head.weight"), "lm_head")
        self.norm = tf.Variable(weights.pop("model.norm.weight"), trainable=False, name="norm")
        layers = config.num_hidden_layers
        self.blocks = [_Block(weights, f"model.layers.{i}.", i, config) for i in range(layers)]

    @property
    def name_or_path(self) -> str:
        return self.config.name_or_path


class Llama(DecoderLM):
    """The Llama adapter over a `LlamaWeights` (read by reference); the config says which of the
    relatives' parts it runs (see the module's table)."""

    def __init__(self, weights: LlamaWeights):
        super().__init__(weights)
        config = weights.config
        self.inverse_frequencies = rope_inverse_frequencies(config)  # [hd / 2]
        self.layer_types = list(config.layer_types)
        self.windows = {FULL: None, SLIDING: config.sliding_window}

    def embed(self, input_ids, positions):
        return tf.gather(self.model.embed_tokens, input_ids)

    def position_context(self, positions):
        """cos, sin [B, 1, T, head_dim] of each token's rotary angles."""
        return rotary_context(positions, self.inverse_frequencies)

    def layer_kind(self, index):
        return self.layer_types[index]

    def layer_inputs(self, kind, key_mask, start, positions, num_queries):
        """Sliding layers see the last `sliding_window` slots (Mistral's banded mask), full ones all."""
        bias = attention_bias(key_mask, start, num_queries, window=self.windows[kind])
        return bias, self.position_context(positions)

    def block(self, index, x, context, start, bias, cache_k, cache_v):
        block = self.model.blocks[index]
        h = rms_norm(x, block.attn_norm, self.epsilon)
        q, k, v = project_qkv(h, block.qkv, self.num_heads, self.num_kv_heads, self.head_dim, block.qkv_bias)
        if block.q_norm is not None:  # over head_dim, each head on its own (Qwen3)
            q, k = rms_norm(q, block.q_norm, self.epsilon), rms_norm(k, block.k_norm, self.epsilon)
        q, k = apply_rotary(q, context), apply_rotary(k, context)
        out, cache_k, cache_v = cached_attention(q, k, v, cache_k, cache_v, start, bias,
                                                 self.in_place_writes)
        x = x + dense(merge_heads(out), block.o, block.o_bias)
        h = rms_norm(x, block.ffn_norm, self.epsilon)
        return x + gated_ffn(h, block.gate_up, block.down, tf.nn.silu), cache_k, cache_v
