"""Llama-family models (SmolLM2, TinyLlama-style GGUFs): weights as variables and the adapter.

`LlamaWeights` holds the weights as `tf.Variable`s in a `tf.Module`, so compiled programs read
them instead of embedding 500 MB of constants, and SavedModel exports track them. `Llama` is
the decoding engine's adapter: RMSNorm, rotary position embeddings (rotate-half, as in
transformers and keras-hub), grouped-query attention over the same static cache as GPT-2
(`tfgen.models.base.cached_attention`), a SwiGLU feed-forward, and tied input/output embeddings when
the checkpoint has no separate output matrix.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from tfgen.models.base import CausalLM, cached_attention, dense, merge_heads, split_heads
from tfgen.models.gguf import LlamaConfig


class _Block(tf.Module):
    """One decoder block's weights, projections fused and stored [in, out] for x @ W."""

    def __init__(self, weights: Dict[str, np.ndarray], prefix: str, index: int):
        super().__init__(name=f"block_{index}")

        def var(value, name):
            return tf.Variable(np.asarray(value, np.float32), trainable=False, name=name)

        def get(name):
            return weights.pop(prefix + name)

        q, k, v = (get(f"self_attn.{name}_proj.weight") for name in "qkv")
        self.attn_norm = var(get("input_layernorm.weight"), "attn_norm")
        self.qkv = var(np.concatenate([q, k, v], axis=0).T, "qkv")  # [D, (H + 2 Hkv) * hd]
        self.o = var(get("self_attn.o_proj.weight").T, "o")  # [H * hd, D]
        self.ffn_norm = var(get("post_attention_layernorm.weight"), "ffn_norm")
        gate, up = get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")
        self.gate_up = var(np.concatenate([gate, up], axis=0).T, "gate_up")  # [D, 2F]
        self.down = var(get("mlp.down_proj.weight").T, "down")  # [F, D]


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
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = tf.Variable(weights.pop("lm_head.weight"), trainable=False, name="lm_head")
        self.norm = tf.Variable(weights.pop("model.norm.weight"), trainable=False, name="norm")
        self.blocks = [_Block(weights, f"model.layers.{i}.", i) for i in range(config.num_hidden_layers)]

    @property
    def name_or_path(self) -> str:
        return self.config.name_or_path


def rms_norm(x, weight, epsilon):
    """x / sqrt(mean(x^2) + epsilon) * weight, over the last axis."""
    return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + epsilon) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return tf.concat([-x[..., half:], x[..., :half]], axis=-1)


class Llama(CausalLM):
    """The Llama adapter over a `LlamaWeights` (read by reference)."""

    def __init__(self, weights: LlamaWeights):
        config = weights.config
        self.model = weights
        self.config = config
        self.vocab_size = int(config.vocab_size)
        self.num_layers = int(config.num_hidden_layers)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(config.head_dim)
        self.hidden_size = int(config.hidden_size)
        self.max_positions = int(config.max_position_embeddings)
        self.epsilon = float(config.rms_norm_eps)
        self.eos_token_id = int(config.eos_token_id)
        self.bos_token_id = int(config.bos_token_id)
        self.pad_token_id = int(config.pad_token_id)
        exponents = np.arange(0, self.head_dim, 2, dtype=np.float32) / self.head_dim
        self.inverse_frequencies = (1.0 / np.power(np.float32(config.rope_theta), exponents)).astype(
            np.float32)  # [head_dim / 2], as transformers and keras-hub compute them in float32

    def variables(self):
        return list(self.model.variables)

    def input_embeddings(self):
        return self.model.embed_tokens

    def embed(self, input_ids, positions):
        return tf.gather(self.model.embed_tokens, input_ids)

    def position_context(self, positions):
        """cos, sin [B, 1, T, head_dim] of each token's rotary angles."""
        angles = tf.cast(positions, tf.float32)[:, :, None] * self.inverse_frequencies  # [B, T, hd/2]
        angles = tf.concat([angles, angles], axis=-1)[:, None, :, :]
        return tf.cos(angles), tf.sin(angles)

    def block(self, index, x, context, start, bias, cache_k, cache_v):
        block = self.model.blocks[index]
        cos, sin = context
        h = rms_norm(x, block.attn_norm, self.epsilon)
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = tf.split(dense(h, block.qkv), [q_width, kv_width, kv_width], axis=-1)
        q = split_heads(q, self.num_heads, self.head_dim)
        k = split_heads(k, self.num_kv_heads, self.head_dim)
        v = split_heads(v, self.num_kv_heads, self.head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out, cache_k, cache_v = cached_attention(q, k, v, cache_k, cache_v, start, bias,
                                                 self.in_place_writes)
        x = x + dense(merge_heads(out), block.o)
        h = rms_norm(x, block.ffn_norm, self.epsilon)
        gate, up = tf.split(dense(h, block.gate_up), 2, axis=-1)
        return x + dense(tf.nn.silu(gate) * up, block.down), cache_k, cache_v

    def final_norm(self, x):
        return rms_norm(x, self.model.norm, self.epsilon)

    def logits(self, hidden):
        head = self.model.embed_tokens if self.model.lm_head is None else self.model.lm_head
        return tf.matmul(hidden, head, transpose_b=True)
