"""GPT-2: the adapter, over a `transformers.TFGPT2LMHeadModel`'s weights (read by reference, not copied)
or over a `GPT2Weights` (a Hugging Face GPT-2 checkpoint read from safetensors, no transformers model).

Both sources give the adapter the same view of the weights (`_View`): the token and position
embeddings, per block its two layer norms and four Conv1D-style projections (weight [in, out], bias
[out]), and the final layer norm.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfgen.models.base import (CausalLM, ProductLayout, SplitWeight, cached_attention, dense, merge_heads,
                               output_logits, output_weight, projection_weight, split_heads, weight_variable)
from tfgen.models.gguf import primary_eos_first


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


@dataclasses.dataclass
class GPT2Config:
    """The hyperparameters of a GPT-2 (names and defaults as in transformers' GPT2Config)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: Optional[int] = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    pad_token_id: Optional[int] = None
    eos_token_ids: Optional[Tuple[int, ...]] = None  # every id that ends a row; None: (eos_token_id,)
    name_or_path: str = ""
    model_type: str = "gpt2"

    def __post_init__(self):
        if self.n_inner is None:
            self.n_inner = 4 * self.n_embd
        self.eos_token_ids = primary_eos_first(self.eos_token_id, self.eos_token_ids)


# The block's projections: (attribute label, Hugging Face name); the weights are [in, out] (Conv1D).
_PROJECTIONS = (("c_attn", "attn.c_attn"), ("attn_proj", "attn.c_proj"), ("c_fc", "mlp.c_fc"),
                ("mlp_proj", "mlp.c_proj"))


class _Block(tf.Module):
    """One GPT-2 block's weights under transformers' attribute names (`ln_1_gamma`, `c_attn_weight`, ...)."""

    def __init__(self, weights: Dict[str, np.ndarray], prefix: str, index: int):
        super().__init__(name=f"h_{index}")
        parts = [(f"{norm}_{field}", f"{norm}.{name}") for norm in ("ln_1", "ln_2")
                 for field, name in (("gamma", "weight"), ("beta", "bias"))]
        parts += [(f"{label}_bias", f"{source}.bias") for label, source in _PROJECTIONS]
        for attribute, name in parts:
            setattr(self, attribute, weight_variable(weights.pop(prefix + name), attribute))
        layout = ProductLayout.from_environment()
        for label, source in _PROJECTIONS:  # [in, out]: a variable or a SplitWeight (`projection_weight`)
            attribute = f"{label}_weight"
            value = weights.pop(f"{prefix}{source}.weight")
            setattr(self, attribute, projection_weight(value, attribute, layout))


class GPT2Weights(tf.Module):
    """A GPT-2's weights as float32 variables, copied once; `config` is its `GPT2Config`.

    Args:
        config: the hyperparameters.
        weights: arrays under Hugging Face's GPT-2 names without the "transformer." prefix ("wte.weight",
            "h.0.attn.c_attn.weight", ...), as `tfgen.models.hf_checkpoint` reads them; consumed.

    Example:
        >>> from tfgen.models.hf_checkpoint import load_checkpoint
        >>> weights, defaults = load_checkpoint("models/gpt2")  # a GPT2Weights for model_type gpt2
    """

    def __init__(self, config: GPT2Config, weights: Dict[str, np.ndarray]):
        super().__init__(name="gpt2")
        self.config = config
        self.wte = weight_variable(weights.pop("wte.weight"), "wte")  # [V, D], tied to the output
        self.wpe = weight_variable(weights.pop("wpe.weight"), "wpe")  # [P, D]
        self.ln_f_gamma = weight_variable(weights.pop("ln_f.weight"), "ln_f_gamma")
        self.ln_f_beta = weight_variable(weights.pop("ln_f.bias"), "ln_f_beta")
        self.blocks = [_Block(weights, f"h.{i}.", i) for i in range(config.n_layer)]
        self.output = output_weight(self.wte, "output")  # tied: wte itself, or a split copy

    @property
    def name_or_path(self) -> str:
        return self.config.name_or_path


class _View(NamedTuple):
    """The weights the adapter reads, from either source: wte [V, D], wpe [P, D], the final layer
    norm (gamma, beta), and per block a `_Block` or an object with its attributes."""

    wte: tf.Variable
    wpe: tf.Variable
    ln_f: Tuple[tf.Variable, tf.Variable]
    blocks: List
    variables: List[tf.Variable]
    output: object  # the output matrix [V, D] for `output_logits`: wte, or a SplitWeight copy of it


class _TransformersBlock(NamedTuple):
    """A `TFGPT2LMHeadModel` block's variables under `_Block`'s attribute names (by reference)."""

    ln_1_gamma: tf.Variable
    ln_1_beta: tf.Variable
    ln_2_gamma: tf.Variable
    ln_2_beta: tf.Variable
    c_attn_weight: object  # the projections: the model's variables, or `_split_copies`' SplitWeights
    c_attn_bias: tf.Variable
    attn_proj_weight: object
    attn_proj_bias: tf.Variable
    c_fc_weight: object
    c_fc_bias: tf.Variable
    mlp_proj_weight: object
    mlp_proj_bias: tf.Variable


def _view(model) -> _View:
    if isinstance(model, GPT2Weights):
        return _View(model.wte, model.wpe, (model.ln_f_gamma, model.ln_f_beta), model.blocks,
                     list(model.variables), model.output)
    transformer = model.transformer
    products = _split_copies(model)
    blocks = [_TransformersBlock(
        block.ln_1.gamma, block.ln_1.beta, block.ln_2.gamma, block.ln_2.beta,
        c_attn_weight=c_attn, c_attn_bias=block.attn.c_attn.bias,
        attn_proj_weight=attn_proj, attn_proj_bias=block.attn.c_proj.bias,
        c_fc_weight=c_fc, c_fc_bias=block.mlp.c_fc.bias,
        mlp_proj_weight=mlp_proj, mlp_proj_bias=block.mlp.c_proj.bias)
        for block, (c_attn, attn_proj, c_fc, mlp_proj) in zip(transformer.h, products.blocks)]
    return _View(transformer.wte.embeddings, transformer.wpe.embeddings,
                 (transformer.ln_f.gamma, transformer.ln_f.beta), blocks, list(model.weights),
                 products.output)


def _split_copies(model) -> tf.Module:
    """A transformers GPT-2's projection weights [in, out] and output matrix as the layout stores
    them (`projection_weight`, `output_weight`): its own variables, or split copies. The copies
    hang on the model (Keras tracks them, so exports save them) and are made once per model and
    layout."""
    layout = ProductLayout.from_environment()
    products = getattr(model, "_tfgen_products", None)
    if products is not None and products.layout == layout:
        return products
    transformer = model.transformer
    products = tf.Module(name="tfgen_products")
    products.layout = layout
    split = layout.parts > 1 or layout.pad_rows
    products.blocks = [
        [SplitWeight(w.numpy(), f"h_{i}_{label}", layout, copy=True) if split else w
         for label, w in zip(("c_attn", "attn_proj", "c_fc", "mlp_proj"),
                             (block.attn.c_attn.weight, block.attn.c_proj.weight,
                              block.mlp.c_fc.weight, block.mlp.c_proj.weight))]
        for i, block in enumerate(transformer.h)]
    products.output = output_weight(transformer.wte.embeddings, "output", layout)
    if split:
        model._tfgen_products = products
    return products


class GPT2(CausalLM):
    """GPT-2 on a `transformers.TFGPT2LMHeadModel` or a `GPT2Weights` (either read by reference)."""

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
        view = _view(model)
        self.wte, self.wpe, self.blocks, self.ln_f = view.wte, view.wpe, view.blocks, view.ln_f
        self.output = view.output
        self._variables = view.variables

    def variables(self):
        return list(self._variables)

    def input_embeddings(self):
        return self.wte

    def embed(self, input_ids, positions):
        return tf.gather(self.wte, input_ids) + tf.gather(self.wpe, positions)

    def block(self, index, x, context, start, bias, cache_k, cache_v):
        block = self.blocks[index]
        h = _layer_norm(x, block.ln_1_gamma, block.ln_1_beta, self.epsilon)
        qkv = dense(h, block.c_attn_weight, block.c_attn_bias)  # [B, T, 3D]
        q, k, v = [split_heads(t, self.num_heads, self.head_dim) for t in tf.split(qkv, 3, axis=-1)]
        out, cache_k, cache_v = cached_attention(q, k, v, cache_k, cache_v, start, bias,
                                                 self.in_place_writes)
        x = x + dense(merge_heads(out), block.attn_proj_weight, block.attn_proj_bias)
        h = _layer_norm(x, block.ln_2_gamma, block.ln_2_beta, self.epsilon)
        h = self.activation(dense(h, block.c_fc_weight, block.c_fc_bias))
        return x + dense(h, block.mlp_proj_weight, block.mlp_proj_bias), cache_k, cache_v

    def final_norm(self, x):
        return _layer_norm(x, *self.ln_f, self.epsilon)

    def logits(self, hidden):
        return output_logits(hidden, self.output)
