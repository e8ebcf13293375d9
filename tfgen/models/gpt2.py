"""GPT-2 on the weights of a `transformers.TFGPT2LMHeadModel` (read by reference, not copied)."""
from __future__ import annotations

import math

import tensorflow as tf

from tfgen.models.base import CausalLM, cached_attention, dense, merge_heads, split_heads


def _layer_norm(x, gamma, beta, epsilon):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta


def _gelu_new(x):
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


_ACTIVATIONS = {
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": _gelu_new,
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),
    "relu": tf.nn.relu,
}


class GPT2(CausalLM):
    """GPT-2 on the weights of a `transformers.TFGPT2LMHeadModel` (read by reference, not copied)."""

    def __init__(self, model):
        config = model.config
        if config.activation_function not in _ACTIVATIONS:
            raise ValueError(f"unsupported GPT-2 activation_function {config.activation_function!r}")
        self.model = model
        self.config = config
        self.vocab_size = int(config.vocab_size)
        self.num_layers = int(config.n_layer)
        self.num_heads = self.num_kv_heads = int(config.n_head)
        self.hidden_size = int(config.n_embd)
        self.head_dim = self.hidden_size // self.num_heads
        self.max_positions = int(config.n_positions)
        self.epsilon = float(config.layer_norm_epsilon)
        self.activation = _ACTIVATIONS[config.activation_function]
        self.eos_token_id = int(config.eos_token_id if config.eos_token_id is not None else 50256)
        self.bos_token_id = int(config.bos_token_id if config.bos_token_id is not None else self.eos_token_id)
        pad = getattr(config, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else self.eos_token_id)
        transformer = model.transformer
        self.wte = transformer.wte.embeddings
        self.wpe = transformer.wpe.embeddings
        self.blocks = transformer.h
        self.ln_f = transformer.ln_f

    def variables(self):
        return list(self.model.weights)

    def num_parameters(self):
        return int(self.model.count_params())

    def input_embeddings(self):
        return self.wte

    def embed(self, input_ids, positions):
        return tf.gather(self.wte, input_ids) + tf.gather(self.wpe, positions)

    def block(self, index, x, context, start, bias, cache_k, cache_v):
        block = self.blocks[index]
        attn = block.attn
        h = _layer_norm(x, block.ln_1.gamma, block.ln_1.beta, self.epsilon)
        qkv = dense(h, attn.c_attn.weight, attn.c_attn.bias)  # [B, T, 3D]
        q, k, v = [split_heads(t, self.num_heads, self.head_dim) for t in tf.split(qkv, 3, axis=-1)]
        out, cache_k, cache_v = cached_attention(q, k, v, cache_k, cache_v, start, bias,
                                                 self.in_place_writes)
        x = x + dense(merge_heads(out), attn.c_proj.weight, attn.c_proj.bias)
        h = _layer_norm(x, block.ln_2.gamma, block.ln_2.beta, self.epsilon)
        mlp = block.mlp
        h = self.activation(dense(h, mlp.c_fc.weight, mlp.c_fc.bias))
        return x + dense(h, mlp.c_proj.weight, mlp.c_proj.bias), cache_k, cache_v

    def final_norm(self, x):
        return _layer_norm(x, self.ln_f.gamma, self.ln_f.beta, self.epsilon)

    def logits(self, hidden):
        return tf.matmul(hidden, self.wte, transpose_b=True)
