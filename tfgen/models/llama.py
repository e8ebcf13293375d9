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

from tfgen.models.base import (DecoderLM, apply_rotary, block_projections, cached_attention, dense, gated_ffn,
                               merge_heads, project_qkv, rms_norm, rope_frequencies, rotary_context,
                               weight_variable)
from tfgen.models.gguf import LlamaConfig


class _Block(tf.Module):
    """One decoder block's weights, projections fused and stored [in, out] for x @ W."""

    def __init__(self, weights: Dict[str, np.ndarray], prefix: str, index: int):
        super().__init__(name=f"block_{index}")

        def get(name):
            return weights.pop(prefix + name)

        projections = block_projections(get)  # qkv, o, gate_up, down
        self.qkv, self.o = projections["qkv"], projections["o"]
        self.gate_up, self.down = projections["gate_up"], projections["down"]
        self.attn_norm = weight_variable(get("input_layernorm.weight"), "attn_norm")
        self.ffn_norm = weight_variable(get("post_attention_layernorm.weight"), "ffn_norm")


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


class Llama(DecoderLM):
    """The Llama adapter over a `LlamaWeights` (read by reference)."""

    def __init__(self, weights: LlamaWeights):
        super().__init__(weights)
        self.inverse_frequencies = rope_frequencies(self.head_dim, weights.config.rope_theta)  # [hd / 2]

    def embed(self, input_ids, positions):
        return tf.gather(self.model.embed_tokens, input_ids)

    def position_context(self, positions):
        """cos, sin [B, 1, T, head_dim] of each token's rotary angles."""
        return rotary_context(positions, self.inverse_frequencies)

    def block(self, index, x, context, start, bias, cache_k, cache_v):
        block = self.model.blocks[index]
        h = rms_norm(x, block.attn_norm, self.epsilon)
        q, k, v = project_qkv(h, block.qkv, self.num_heads, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, context), apply_rotary(k, context)
        out, cache_k, cache_v = cached_attention(q, k, v, cache_k, cache_v, start, bias,
                                                 self.in_place_writes)
        x = x + dense(merge_heads(out), block.o)
        h = rms_norm(x, block.ffn_norm, self.epsilon)
        return x + gated_ffn(h, block.gate_up, block.down, tf.nn.silu), cache_k, cache_v

    def logits(self, hidden):
        head = self.model.embed_tokens if self.model.lm_head is None else self.model.lm_head
        return tf.matmul(hidden, head, transpose_b=True)
