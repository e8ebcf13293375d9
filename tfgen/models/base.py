"""The causal-LM adapter interface: a forward pass over a static, in-place KV cache.

The decoding loop sees only the `CausalLM` interface below: `init_cache`, `forward` (used for both
the prefill over the prompt and the one-token decoding step), the vocabulary size and the special
ids. Nothing in the loop names an architecture.

The cache of each layer is one key and one value tensor of shape [batch * kv_heads, max_length,
head_dim] (row b * kv_heads + h holds head h of sequence b). `forward` writes the new keys/values
at slots [start, start + T) in place (`dynamic_update_slice` under XLA) and attends over all
`max_length` slots with a mask, so every step of the loop has the same shapes and compiles once.
Batch and heads share one axis so that a batch of one has no axis of size 1: XLA drops such axes
with a reshape, and a reshaped cache can no longer be updated in place (it copied every layer's
cache at every step).

Architectures live beside this module (gpt2.py, llama.py, gemma.py), each one `CausalLM`
subclass; `registry.py` maps a model's type to its adapter. Blocks may differ in the attention
bias and position context they get (Gemma's sliding-window and global layers): `layer_kind` and
`layer_inputs` are that hook.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from typing import Hashable, List, Optional, Tuple

import numpy as np
import tensorflow as tf

Cache = List[tf.Tensor]  # [k_0, v_0, k_1, v_1, ...], each [batch * kv_heads, max_length, head_dim]

_MASK_VALUE = -1e9


def write_slots(cache: tf.Tensor, update: tf.Tensor, start: tf.Tensor, in_place: bool) -> tf.Tensor:
    """Write `update` [R, T, D] into `cache` [R, L, D] at slot `start`.

    `in_place` (for jit-compiled programs) uses XLA's dynamic update slice, which XLA performs in
    place; the scatter used otherwise runs everywhere (eager inspection, --no-xla exports).

    `start` may also be int32 [R], one slot per cache row (speculative decoding, where each row
    accepts its own number of tokens): then one scatter of R * T rows of D values, which XLA also
    performs in place (a one-hot write would read and rewrite the whole cache every step).
    """
    start = tf.cast(start, tf.int32)
    if start.shape.rank == 1:
        slots = start[:, None] + tf.range(tf.shape(update)[1])[None, :]  # [R, T]
        rows = tf.broadcast_to(tf.range(tf.shape(cache)[0])[:, None], tf.shape(slots))
        indices = tf.stack([rows, slots], axis=-1)  # [R, T, 2]
        return tf.tensor_scatter_nd_update(cache, indices, tf.cast(update, cache.dtype))
    if in_place:
        from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice

        zero = tf.zeros([], tf.int32)
        return dynamic_update_slice(cache, tf.cast(update, cache.dtype), tf.stack([zero, start, zero]))
    length = tf.shape(update)[1]
    slots = start + tf.range(length)
    updated = tf.tensor_scatter_nd_update(
        tf.transpose(cache, [1, 0, 2]), slots[:, None], tf.transpose(update, [1, 0, 2])
    )
    return tf.transpose(updated, [1, 0, 2])


def attention_bias(key_mask: tf.Tensor, start: tf.Tensor, num_queries: int,
                   window: Optional[int] = None) -> tf.Tensor:
    """Additive attention bias [B, 1, T, L]: query i (at slot start + i) sees valid slots <= its own.

    `start` is a scalar, or int32 [B] with one first slot per row (speculative decoding).

    `window` (sliding-window attention: Gemma's local layers, Mistral): a query also ignores the
    slots more than `window - 1` before its own, so it sees at most `window` tokens, itself
    included. The distance is measured in slots: a row's slots and positions differ by its left
    padding, a constant per row, so the slot distance is the position distance.
    """
    max_length = tf.shape(key_mask)[1]
    query_slots = tf.reshape(tf.cast(start, tf.int32), [-1, 1]) + tf.range(num_queries)  # [1 or B, T]
    key_slots = tf.range(max_length)[None, None, :]  # [1, 1, L]
    allowed = key_slots <= query_slots[:, :, None]  # [1 or B, T, L]
    if window is not None:
        allowed = tf.logical_and(allowed, key_slots > query_slots[:, :, None] - int(window))
    allowed = tf.logical_and(allowed, tf.cast(key_mask, tf.bool)[:, None, :])  # [B, T, L]
    return tf.where(allowed, 0.0, _MASK_VALUE)[:, None, :, :]


def soft_cap(x, cap: float):
    """tanh(x / cap) * cap: Gemma 2's bound on attention and output logits, smooth near zero."""
    return tf.tanh(x / cap) * cap


def cached_attention(q, k_new, v_new, cache_k, cache_v, start, bias, in_place=False, scale=None,
                     softcap=None):
    """Write k/v [B, Hkv, T, D] into the cache, then attend q [B, H, T, D] over all slots.

    With grouped-query attention (H = G * Hkv, Llama) query head h uses key/value head h // G:
    the G query heads of a group are folded into the query axis, [B * Hkv, G * T, D], so the cache
    is read as it is, without repeating it G times. GPT-2 has G = 1.

    `in_place`: write the cache with XLA's in-place update (see `write_slots`).
    `scale`: the factor of the query-key products, 1 / sqrt(D) by default (Gemma:
    query_pre_attn_scalar ** -0.5). `softcap`: bound the scaled products with `soft_cap` before
    the mask (Gemma 2's attn_logit_softcapping); None leaves them as they are.

    Returns (output [B, H, T, D], cache_k, cache_v); the caches are [B * Hkv, L, D].
    """
    batch, length, dim = tf.shape(q)[0], tf.shape(q)[2], q.shape[-1]
    heads, kv_heads = q.shape[1], k_new.shape[1]
    groups = heads // kv_heads
    rows = batch * kv_heads
    start = tf.cast(start, tf.int32)
    if start.shape.rank == 1:  # one start per batch row: the same for each of its kv heads
        start = tf.repeat(start, kv_heads)
    cache_k = write_slots(cache_k, tf.reshape(k_new, [rows, length, dim]), start, in_place)
    cache_v = write_slots(cache_v, tf.reshape(v_new, [rows, length, dim]), start, in_place)
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    queries = groups * length
    q = tf.reshape(q, [rows, queries, dim])
    if groups > 1:
        bias = tf.tile(bias, [1, 1, groups, 1])  # [B, 1, G * T, L], row g * T + t is query t's
    scores = tf.matmul(q, cache_k, transpose_b=True) * scale  # [B * Hkv, G * T, L]
    if softcap is not None:
        scores = soft_cap(scores, softcap)
    slots = tf.shape(cache_k)[1]
    scores = tf.reshape(scores, [batch, kv_heads, queries, slots]) + bias
    weights = tf.reshape(tf.nn.softmax(scores, axis=-1), [rows, queries, slots])
    out = tf.matmul(weights, cache_v)  # [B * Hkv, G * T, D]
    return tf.reshape(out, [batch, heads, length, dim]), cache_k, cache_v


class CausalLM:
    """What the decoding engine needs from a model. Subclasses wrap one architecture."""

    vocab_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    eos_token_id: int
    pad_token_id: int
    bos_token_id: int
    dtype = tf.float32

    @property
    def eos_token_ids(self) -> tuple:
        """Every id that ends a row, the primary `eos_token_id` first (Llama 3's <|eot_id|> and
        <|end_of_text|>, Gemma's <eos> and <end_of_turn>): from the config's `eos_token_ids` where
        it has them."""
        extra = getattr(getattr(self, "config", None), "eos_token_ids", None) or ()
        return tuple(dict.fromkeys([int(self.eos_token_id)] + [int(i) for i in extra]))
    # Whether `block` writes the cache with XLA's in-place update: set on the copy that compiled
    # programs use (`with_in_place_writes`), never changed on an adapter afterwards.
    in_place_writes = False

    def with_in_place_writes(self, enabled: bool = True) -> "CausalLM":
        """A copy of this adapter (same weights) whose cache writes are XLA's in-place updates."""
        twin = copy.copy(self)
        twin.in_place_writes = bool(enabled)
        return twin

    def init_cache(self, batch_size, max_length) -> Cache:
        shape = [batch_size * self.num_kv_heads, max_length, self.head_dim]
        return [tf.zeros(shape, self.dtype) for _ in range(2 * self.num_layers)]

    def gather_cache(self, cache: Cache, rows) -> Cache:
        """The cache of batch rows `rows` [N] (int32), in that order (beam search's reordering)."""
        rows = tf.cast(rows, tf.int32)
        heads = tf.range(self.num_kv_heads)
        index = tf.reshape(rows[:, None] * self.num_kv_heads + heads[None, :], [-1])
        return [tf.gather(c, index, axis=0) for c in cache]

    def repeat_cache(self, cache: Cache, count: int) -> Cache:
        """Each batch row's cache `count` times in a row (row b becomes rows b * count ...)."""
        batch = tf.shape(cache[0])[0] // self.num_kv_heads
        return self.gather_cache(cache, tf.repeat(tf.range(batch), count))

    def forward(self, input_ids, positions, start, key_mask, cache, all_logits=False):
        """Run T tokens through the model, writing their keys/values at slots [start, start+T).

        Args:
            input_ids: int32 [B, T].
            positions: int32 [B, T], each token's position (left padding makes them row-dependent).
            start: int32 scalar, the cache slot of the first token.
            key_mask: bool [B, L], which cache slots hold real tokens (after this write).
            cache: the list from `init_cache`.
            all_logits: return logits for all T tokens instead of the last one.

        Returns:
            (logits [B, V] or [B, T, V], new cache)
        """
        hidden, cache = self.hidden(input_ids, positions, start, key_mask, cache)
        if not all_logits:
            return self.logits(hidden[:, -1, :]), cache
        # One [B * T, D] product: a [B, T, D] one broadcasts the output matrix to a batch of B
        # (under XLA a copy of it, the largest weight, on every pass).
        shape = tf.shape(hidden)
        logits = self.logits(tf.reshape(hidden, [-1, hidden.shape[-1]]))
        return tf.reshape(logits, [shape[0], shape[1], -1]), cache

    def hidden(self, input_ids, positions, start, key_mask, cache, all_layers=False):
        """Final hidden states [B, T, D] (or every layer's, input embeddings first) and the cache."""
        x = self.embed(input_ids, positions)
        inputs = {}  # layer kind -> (bias, context), each built once per pass
        layers = [x]
        new_cache = []
        for index in range(self.num_layers):
            kind = self.layer_kind(index)
            if kind not in inputs:
                inputs[kind] = self.layer_inputs(kind, key_mask, start, positions, tf.shape(input_ids)[1])
            bias, context = inputs[kind]
            x, cache_k, cache_v = self.block(
                index, x, context, start, bias, cache[2 * index], cache[2 * index + 1])
            new_cache += [cache_k, cache_v]
            layers.append(x)
        x = self.final_norm(x)
        if all_layers:
            # Hugging Face's hidden_states: embeddings, the output of each block but the last, then
            # the final normalized output.
            return layers[:-1] + [x], new_cache
        return x, new_cache

    def embed(self, input_ids, positions):
        """Input embeddings [B, T, D]."""
        raise NotImplementedError

    def position_context(self, positions):
        """What every block needs from the positions (Llama: the RoPE cos/sin); None by default."""
        return None

    def layer_kind(self, index: int) -> Hashable:
        """Which attention inputs block `index` takes; blocks of one kind share them.

        One kind (None) by default: every block gets the same causal bias and position context.
        An architecture whose layers differ overrides this and `layer_inputs`: Gemma returns
        its `layer_types` entry ("sliding_attention" or "full_attention"), whose bias has a
        window and whose RoPE has its own base; a sliding-window Mistral would return one kind
        with a window.
        """
        return None

    def layer_inputs(self, kind: Hashable, key_mask, start, positions, num_queries):
        """(attention bias [B, 1, T, L], position context) of the blocks of one `kind`.

        Built once per forward pass for each kind `layer_kind` returns. By default the causal
        bias over the valid slots (`attention_bias`) and `position_context(positions)`.
        """
        return attention_bias(key_mask, start, num_queries), self.position_context(positions)

    def block(self, index, x, context, start, bias, cache_k, cache_v):
        """Block `index` on x [B, T, D]; returns (x, cache_k, cache_v)."""
        raise NotImplementedError

    def final_norm(self, x):
        raise NotImplementedError

    def logits(self, hidden):
        raise NotImplementedError

    def variables(self) -> list:
        raise NotImplementedError

    def input_embeddings(self) -> tf.Variable:
        """The token embedding matrix [vocab, hidden]."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        """Number of parameters (tied input/output embeddings counted once, and so are the
        `SplitWeight` blocks that copy a matrix the model keeps)."""
        unique = {id(v): v for v in self.variables() if not getattr(v, _COPY_MARK, False)}
        return int(sum(v.shape.num_elements() for v in unique.values()))


def weight_variable(value, name: str) -> tf.Variable:
    """A float32, non-trainable copy of `value`: compiled programs read it instead of embedding a
    constant, and SavedModel exports track it."""
    return tf.Variable(np.asarray(value, np.float32), trainable=False, name=name)


def block_projections(take) -> dict:
    """A decoder block's projections from Hugging Face's [out, in] matrices, fused and stored
    [in, out] for x @ W: qkv [D, (H + 2 Hkv) * hd], o [H * hd, D], gate_up [D, 2F], down [F, D]
    (Llama's and Gemma's layout). `take(name)` returns the block's weight `name` (and may drop it)."""
    q, k, v = (take(f"self_attn.{name}_proj.weight") for name in "qkv")
    gate, up = take("mlp.gate_proj.weight"), take("mlp.up_proj.weight")
    layout = ProductLayout.from_environment()  # each a variable or a SplitWeight (`projection_weight`)
    return dict(qkv=projection_weight(np.concatenate([q, k, v], axis=0).T, "qkv", layout),
                o=projection_weight(take("self_attn.o_proj.weight").T, "o", layout),
                gate_up=projection_weight(np.concatenate([gate, up], axis=0).T, "gate_up", layout),
                down=projection_weight(take("mlp.down_proj.weight").T, "down", layout))


class DecoderLM(CausalLM):
    """A `CausalLM` over one of tfgen's weight holders (`LlamaWeights`, `GemmaWeights`): the sizes
    and special ids come from its config, whose fields have transformers' names; the holder has
    `embed_tokens` [V, D] and the final RMSNorm weight `norm`."""

    def __init__(self, weights):
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

    def variables(self):
        return list(self.model.variables)

    def input_embeddings(self):
        return self.model.embed_tokens

    def final_norm(self, x):
        return rms_norm(x, self.model.norm, self.epsilon)

    def logits(self, hidden):
        """hidden @ the output matrix^T, through the holder's `output` (`output_weight`)."""
        return output_logits(hidden, self.model.output)


# -- the products: how weight matrices are stored so that XLA CPU reads them on every core --------
# XLA CPU runs a one-row product (batch 1) as its tiled LLVM IR GEMV, one thread, and products of
# a few rows as Eigen calls; its thunk executor runs independent products at the same time. A
# matrix stored as two blocks, each its own variable, is two independent products that two cores
# read at once (see README, "Both cores: how a step's products run").
SPLIT_PRODUCTS_ENV = "TFGEN_SPLIT_PRODUCTS"
_COPY_MARK = "_tfgen_copy"  # set on the variables of a SplitWeight that copies a kept matrix
_PART_ALIGN = 16  # part widths in whole 16-float (64-byte) vectors, as the GEMV tiles them


@dataclasses.dataclass(frozen=True)
class ProductLayout:
    """How weight matrices built now are stored: `parts` blocks each (1: one matrix, as before);
    `pad_rows`: a one-row product is run as two rows (the second zeros), which XLA sends to Eigen
    instead of its single-threaded GEMV."""

    parts: int = 1
    pad_rows: bool = False

    @classmethod
    def from_environment(cls) -> "ProductLayout":
        """$TFGEN_SPLIT_PRODUCTS: "N" (N parts) or "N,pad"; unset: 1 (one matrix: the split is
        opt-in until it is measured faster, see README "Both cores"). Read when the weights are
        built (load time), never while tracing.

        Raises:
            ValueError: the variable is not a whole number >= 1, optionally followed by ",pad".
        """
        value = os.environ.get(SPLIT_PRODUCTS_ENV, "").strip().lower()
        if not value:
            return cls()
        count, _, option = value.partition(",")
        if not count.strip().isdigit() or int(count) < 1 or option.strip() not in ("", "pad"):
            raise ValueError(f"{SPLIT_PRODUCTS_ENV} must be a number of parts >= 1, optionally followed by "
                             f"',pad' (e.g. 2 or 2,pad), got {value!r}")
        return cls(parts=int(count), pad_rows=option.strip() == "pad")


class SplitWeight(tf.Module):
    """A weight matrix stored as blocks along one axis, each block its own variable, so that a
    product with it is one independent XLA product per block (`dense`, `output_logits`).

    `axis` 1: column blocks of a projection [in, out] read as x @ W; axis 0: row blocks of an
    output matrix [V, D] read as x @ W^T (tied embeddings). Part sizes are multiples of 16 where
    the matrix is wide enough; the blocks concatenated are the matrix, so results are the unsplit
    product's (each output column is the same dot over the same inputs).

    Example:
        >>> w = SplitWeight(np.ones([768, 2304], np.float32), "c_attn", ProductLayout(parts=2))
        >>> [p.shape.as_list() for p in w.parts]
        [[768, 1152], [768, 1152]]
    """

    def __init__(self, value, name: str, layout: ProductLayout, axis: int = 1, copy: bool = False):
        """`copy`: the blocks copy a matrix the model keeps (tied embeddings, a transformers
        model's own variables); `CausalLM.num_parameters` does not count them again."""
        super().__init__(name=name)
        value = np.asarray(value, np.float32)
        self.shape = tf.TensorShape(value.shape)
        self.axis = axis
        self.pad_rows = layout.pad_rows
        size = value.shape[axis]
        step = max(_PART_ALIGN, -(-size // layout.parts // _PART_ALIGN) * _PART_ALIGN)
        bounds = list(range(0, size, step)) + [size]
        # The layout is in the names, so cached programs (keyed by variable names) never mix layouts.
        tag = f"of{len(bounds) - 1}{'p' if layout.pad_rows else ''}"
        self.parts = [weight_variable(np.ascontiguousarray(value[:, a:b] if axis == 1 else value[a:b]),
                                      f"{name}_{i}{tag}") for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        for part in self.parts:
            setattr(part, _COPY_MARK, copy)


def projection_weight(value, name: str, layout: Optional[ProductLayout] = None):
    """A projection [in, out] as the layout stores it: one variable, or a `SplitWeight` of column
    blocks. `layout`: `ProductLayout.from_environment()` when None."""
    layout = ProductLayout.from_environment() if layout is None else layout
    if layout.parts == 1 and not layout.pad_rows:
        return weight_variable(value, name)
    return SplitWeight(value, name, layout)


def output_weight(matrix, name: str, layout: Optional[ProductLayout] = None):
    """The output matrix [V, D] for `output_logits`, as the layout stores it.

    `matrix`: a variable the model keeps (tied embeddings, which the lookup reads): returned as it
    is, or split into a `SplitWeight` of row blocks that copies it. An array (a separate output
    matrix, read only here): one variable, or the blocks alone."""
    layout = ProductLayout.from_environment() if layout is None else layout
    kept = isinstance(matrix, tf.Variable)
    if layout.parts == 1 and not layout.pad_rows:
        return matrix if kept else weight_variable(matrix, name)
    value = matrix.numpy() if kept else matrix
    return SplitWeight(value, name, layout, axis=0, copy=kept)


def _products(rows, weight, transpose: bool = False):
    """rows [N, in] times a weight (a variable or `SplitWeight`): one product per block, the
    outputs side by side [N, out]. `transpose`: the weight is [out, in] (x @ W^T)."""
    blocks = weight.parts if isinstance(weight, SplitWeight) else [weight]
    padded = isinstance(weight, SplitWeight) and weight.pad_rows and rows.shape[0] == 1
    if padded:  # two rows: XLA's Eigen product (both cores) instead of its one-thread GEMV
        rows = tf.concat([rows, tf.zeros_like(rows)], axis=0)
    outputs = [tf.matmul(rows, block, transpose_b=transpose) for block in blocks]
    out = outputs[0] if len(outputs) == 1 else tf.concat(outputs, axis=-1)
    return out[:1] if padded else out


def dense(x, weight, bias=None):
    """x [B, T, in] @ weight [in, out] (+ bias), as 2-D matmuls (as transformers' TFConv1D does):
    one, or one per block of a `SplitWeight`."""
    shape = tf.shape(x)
    flat = _products(tf.reshape(x, [-1, weight.shape[0]]), weight)
    if bias is not None:
        flat = flat + bias
    return tf.reshape(flat, tf.concat([shape[:-1], [weight.shape[1]]], axis=0))


def output_logits(hidden, head):
    """hidden [..., D] @ head^T, head [V, D] (a variable or `output_weight`'s `SplitWeight`): the
    logits [..., V]."""
    shape = tf.shape(hidden)
    flat = _products(tf.reshape(hidden, [-1, head.shape[1]]), head, transpose=True)
    return tf.reshape(flat, tf.concat([shape[:-1], [head.shape[0]]], axis=0))


def rms_norm(x, weight, epsilon):
    """x / sqrt(mean(x^2) + epsilon) * weight, over the last axis.

    Gemma's norms multiply by (1 + w): its adapter stores that sum as the weight, so one norm
    serves both families.
    """
    return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + epsilon) * weight


def rope_frequencies(head_dim: int, base: float, factor: float = 1.0) -> np.ndarray:
    """Inverse frequencies [head_dim / 2] of rotary embeddings, in float32 as transformers and
    keras-hub compute them; `factor` > 1 is linear position scaling (positions / factor)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / head_dim
    return (1.0 / np.power(np.float32(base), exponents) / np.float32(factor)).astype(np.float32)


def rotary_context(positions, inverse_frequencies):
    """cos, sin [B, 1, T, head_dim] of each token's rotary angles (rotate-half layout)."""
    angles = tf.cast(positions, tf.float32)[:, :, None] * inverse_frequencies  # [B, T, hd/2]
    angles = tf.concat([angles, angles], axis=-1)[:, None, :, :]
    return tf.cos(angles), tf.sin(angles)


def rotate_half(x):
    half = x.shape[-1] // 2
    return tf.concat([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x, context):
    """Rotary position embedding of x [B, heads, T, head_dim] with `rotary_context`'s (cos, sin)."""
    cos, sin = context
    return x * cos + rotate_half(x) * sin


def split_heads(x, heads, head_dim):
    """[B, T, heads * head_dim] -> [B, heads, T, head_dim]."""
    x = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], heads, head_dim])
    return tf.transpose(x, [0, 2, 1, 3])


def project_qkv(x, weight, heads, kv_heads, head_dim, bias=None):
    """Queries [B, heads, T, hd], keys and values [B, kv_heads, T, hd] from one fused projection
    x [B, T, D] @ weight [D, (heads + 2 kv_heads) * hd] (Llama's and Gemma's layout), plus its
    bias [(heads + 2 kv_heads) * hd] where the model has one (Qwen2)."""
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    q, k, v = tf.split(dense(x, weight, bias), [q_width, kv_width, kv_width], axis=-1)
    return (split_heads(q, heads, head_dim), split_heads(k, kv_heads, head_dim),
            split_heads(v, kv_heads, head_dim))


def gated_ffn(x, gate_up, down, activation):
    """activation(x @ gate) * (x @ up) @ down, with gate and up fused as gate_up [D, 2F]
    (SwiGLU for Llama with silu, GeGLU for Gemma with tanh-approximated gelu)."""
    gate, up = tf.split(dense(x, gate_up), 2, axis=-1)
    return dense(activation(gate) * up, down)


def merge_heads(x):
    """[B, heads, T, head_dim] -> [B, T, heads * head_dim]."""
    x = tf.transpose(x, [0, 2, 1, 3])
    return tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], x.shape[2] * x.shape[3]])


def positions_from_mask(attention_mask: tf.Tensor) -> tf.Tensor:
    """Position ids as Hugging Face computes them for left padding: the count of real tokens before."""
    return tf.math.cumsum(tf.cast(attention_mask, tf.int32), axis=-1, exclusive=True)


def full_forward(lm: CausalLM, input_ids, attention_mask, all_layers=False) -> Tuple[tf.Tensor, Cache]:
    """Hidden states for a whole (left-padded) batch in one pass, on a cache just large enough."""
    input_ids = tf.convert_to_tensor(input_ids, tf.int32)
    attention_mask = tf.convert_to_tensor(attention_mask, tf.int32)
    batch, length = input_ids.shape
    cache = lm.init_cache(batch, length)
    return lm.hidden(
        input_ids, positions_from_mask(attention_mask), tf.constant(0), attention_mask > 0, cache,
        all_layers=all_layers,
    )
