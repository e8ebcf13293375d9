"""The Gemma family (Gemma 3, and Gemma 1 and 2 by config): weights as variables and the adapter.

One adapter covers the three generations; `GemmaConfig` (defined beside `LlamaConfig` in
`tfgen.models.gguf`, free of TensorFlow, and importable from here) says which parts a model has:

| part | Gemma | Gemma 2 | Gemma 3 |
|---|---|---|---|
| sliding-window layers (`layer_types`) | none | every other layer | 5 of every 6 |
| norms after attention and MLP (`use_post_norms`) | no | yes | yes |
| per-head RMSNorm of queries and keys (`use_qk_norm`) | no | no | yes |
| soft-capped logits (`attn_/final_logit_softcapping`) | no | yes | no |
| RoPE base of sliding layers (`rope_local_base_freq`) | - | `rope_theta` | 10 000 |

Common to all: embeddings times sqrt(hidden_size), RMSNorm as x * (1 + w), rotary embeddings
(rotate-half), grouped-query attention with the query scale query_pre_attn_scalar ** -0.5, a
GeGLU feed-forward (tanh-approximated gelu) and the output tied to the embeddings.

The norms: Hugging Face and KerasHub checkpoints hold w, llama.cpp's converter writes 1 + w
into GGUF files (`tfgen.models.gguf` takes the 1 back off, so its weights are Hugging Face's).
`GemmaWeights` stores 1 + w, so the norm is the plain `rms_norm` Llama uses.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
import tensorflow as tf

from tfgen.models.base import (DecoderLM, apply_rotary, attention_bias, block_projections, cached_attention,
                               dense, gated_ffn, merge_heads, output_weight, project_qkv, rms_norm,
                               rope_frequencies, rotary_context, soft_cap, weight_variable)
from tfgen.models.gguf import FULL, SLIDING, GemmaConfig, sliding_layer_types

# GemmaConfig and sliding_layer_types live beside LlamaConfig (no TensorFlow); they are Gemma's names too.
__all__ = ["FULL", "SLIDING", "Gemma", "GemmaConfig", "GemmaWeights", "sliding_layer_types"]

_ACTIVATIONS = {"gelu_pytorch_tanh": lambda x: tf.nn.gelu(x, approximate=True)}


class _Block(tf.Module):
    """One decoder block's weights: projections fused and stored [in, out], norms as 1 + w."""

    def __init__(self, weights: Dict[str, np.ndarray], prefix: str, index: int, config: GemmaConfig):
        super().__init__(name=f"block_{index}")

        def get(name):
            if prefix + name not in weights:
                raise ValueError(f"Gemma weights lack {prefix + name}")
            return weights.pop(prefix + name)

        def norm(name, label):
            return weight_variable(1.0 + np.asarray(get(name + ".weight"), np.float32), label)

        projections = block_projections(get)  # qkv, o, gate_up, down
        self.qkv, self.o = projections["qkv"], projections["o"]
        self.gate_up, self.down = projections["gate_up"], projections["down"]
        self.attn_norm = norm("input_layernorm", "attn_norm")
        self.q_norm = self.k_norm = self.post_attn_norm = self.post_ffn_norm = None
        if config.use_qk_norm:
            self.q_norm = norm("self_attn.q_norm", "q_norm")  # [hd], shared by the heads
            self.k_norm = norm("self_attn.k_norm", "k_norm")
        if config.use_post_norms:  # Gemma 2/3 names; Gemma 1 calls its pre-MLP norm post_attention
            self.post_attn_norm = norm("post_attention_layernorm", "post_attn_norm")
            self.ffn_norm = norm("pre_feedforward_layernorm", "ffn_norm")
            self.post_ffn_norm = norm("post_feedforward_layernorm", "post_ffn_norm")
        else:
            self.ffn_norm = norm("post_attention_layernorm", "ffn_norm")


class GemmaWeights(tf.Module):
    """A Gemma model's weights as float32 variables, copied once; `config` is its `GemmaConfig`.

    Args:
        config: the hyperparameters.
        weights: arrays under Hugging Face's names and in its conventions ([out, in] projections,
            norm weights w of x * (1 + w)), as `tfgen.models.gguf.read_gguf` returns them;
            consumed (the dict is emptied) to keep peak memory down. A `lm_head.weight` is
            accepted only if it equals the embeddings (Gemma ties them).

    Raises:
        ValueError: a weight is missing, or a separate output matrix differs from the embeddings.

    Example:
        >>> from tfgen.models.gguf import read_gguf
        >>> gguf = read_gguf("gemma-3-270m-q4_k_m.gguf")
        >>> weights = GemmaWeights(gguf.config, gguf.weights)
    """

    def __init__(self, config: GemmaConfig, weights: Dict[str, np.ndarray]):
        super().__init__(name=config.model_type)
        self.config = config
        if "model.embed_tokens.weight" not in weights:
            raise ValueError("Gemma weights lack model.embed_tokens.weight")
        embed = weights.pop("model.embed_tokens.weight")
        head = weights.pop("lm_head.weight", None)
        if head is not None and not np.array_equal(head, embed):
            raise ValueError("Gemma ties its output layer to the embeddings, but lm_head.weight differs")
        self.embed_tokens = weight_variable(embed, "embed_tokens")  # [V, D]
        if "model.norm.weight" not in weights:
            raise ValueError("Gemma weights lack model.norm.weight")
        self.norm = weight_variable(1.0 + np.asarray(weights.pop("model.norm.weight"), np.float32), "norm")
        self.output = output_weight(self.embed_tokens, "output")  # tied: the matrix, or a split copy
        self.blocks = [_Block(weights, f"model.layers.{i}.", i, config)
                       for i in range(config.num_hidden_layers)]

    @property
    def name_or_path(self) -> str:
        return self.config.name_or_path


class Gemma(DecoderLM):
    """The Gemma adapter over a `GemmaWeights` (read by reference).

    Raises:
        ValueError: the config's hidden_activation is not one tfgen has.
    """

    def __init__(self, weights: GemmaWeights):
        super().__init__(weights)
        config = weights.config
        if config.hidden_activation not in _ACTIVATIONS:
            raise ValueError(f"unsupported Gemma hidden_activation {config.hidden_activation!r}; "
                             f"supported: {', '.join(_ACTIVATIONS)}")
        self.layer_types = list(config.layer_types)
        self.activation = _ACTIVATIONS[config.hidden_activation]
        # transformers and keras-hub round sqrt(hidden_size) to the compute dtype, float32 here.
        self.embed_scale = np.float32(math.sqrt(self.hidden_size))
        self.query_scale = float(config.query_pre_attn_scalar) ** -0.5
        self.attn_softcap = config.attn_logit_softcapping or None
        self.final_softcap = config.final_logit_softcapping or None
        # Per layer kind: the RoPE inverse frequencies [head_dim / 2] and the attention window.
        self.frequencies = {
            FULL: rope_frequencies(self.head_dim, config.rope_theta, config.rope_scaling_factor),
            SLIDING: rope_frequencies(self.head_dim, config.rope_local_base_freq),
        }
        self.windows = {FULL: None, SLIDING: config.sliding_window}

    def embed(self, input_ids, positions):
        return tf.gather(self.model.embed_tokens, input_ids) * self.embed_scale

    def layer_kind(self, index):
        return self.layer_types[index]

    def layer_inputs(self, kind, key_mask, start, positions, num_queries):
        """Sliding layers: a windowed bias and the local RoPE base; global layers: the causal bias
        and the global base (with its linear scaling)."""
        bias = attention_bias(key_mask, start, num_queries, window=self.windows[kind])
        return bias, rotary_context(positions, self.frequencies[kind])

    def block(self, index, x, context, start, bias, cache_k, cache_v):
        block = self.model.blocks[index]
        h = rms_norm(x, block.attn_norm, self.epsilon)
        q, k, v = project_qkv(h, block.qkv, self.num_heads, self.num_kv_heads, self.head_dim)
        if self.config.use_qk_norm:  # over head_dim, each head on its own
            q, k = rms_norm(q, block.q_norm, self.epsilon), rms_norm(k, block.k_norm, self.epsilon)
        q, k = apply_rotary(q, context), apply_rotary(k, context)
        out, cache_k, cache_v = cached_attention(q, k, v, cache_k, cache_v, start, bias, self.in_place_writes,
                                                 scale=self.query_scale, softcap=self.attn_softcap)
        h = dense(merge_heads(out), block.o)
        if self.config.use_post_norms:
            h = rms_norm(h, block.post_attn_norm, self.epsilon)
        x = x + h
        h = gated_ffn(rms_norm(x, block.ffn_norm, self.epsilon), block.gate_up, block.down, self.activation)
        if self.config.use_post_norms:
            h = rms_norm(h, block.post_ffn_norm, self.epsilon)
        return x + h, cache_k, cache_v

    def logits(self, hidden):
        logits = super().logits(hidden)
        return logits if self.final_softcap is None else soft_cap(logits, self.final_softcap)
