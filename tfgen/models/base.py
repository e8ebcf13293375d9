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

Architectures live beside this module (gpt2.py, llama.py), each one `CausalLM` subclass;
`registry.py` maps a model's type to its adapter.
"""
from __future__ import annotations

import copy
import math
from typing import List, Tuple

import tensorflow as tf

Cache = List[tf.Tensor]  # [k_0, v_0, k_1, v_1, ...], each [batch * kv_heads, max_length, head_dim]

_MASK_VALUE = -1e9


def write_slots(cache: tf.Tensor, update: tf.Tensor, start: tf.Tensor, in_place: bool) -> tf.Tensor:
    """Write `update` [R, T, D] into `cache` [R, L, D] at slot `start`.

    `in_place` (for jit-compiled programs) uses XLA's dynamic update slice, which XLA performs in
    place; the scatter used otherwise runs everywhere (eager inspection, --no-xla exports).
    """
    start = tf.cast(start, tf.int32)
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


def attention_bias(key_mask: tf.Tensor, start: tf.Tensor, num_queries: int) -> tf.Tensor:
    """Additive attention bias [B, 1, T, L]: query i (at slot start + i) sees valid slots <= its own."""
    max_length = tf.shape(key_mask)[1]
    query_slots = tf.cast(start, tf.int32) + tf.range(num_queries)  # [T]
    causal = tf.range(max_length)[None, :] <= query_slots[:, None]  # [T, L]
    allowed = tf.logical_and(causal[None, :, :], tf.cast(key_mask, tf.bool)[:, None, :])  # [B, T, L]
    return tf.where(allowed, 0.0, _MASK_VALUE)[:, None, :, :]


def cached_attention(q, k_new, v_new, cache_k, cache_v, start, bias, in_place=False):
    """Write k/v [B, Hkv, T, D] into the cache, then attend q [B, H, T, D] over all slots.

    With grouped-query attention (H = G * Hkv, Llama) query head h uses key/value head h // G:
    the G query heads of a group are folded into the query axis, [B * Hkv, G * T, D], so the cache
    is read as it is, without repeating it G times. GPT-2 has G = 1.

    `in_place`: write the cache with XLA's in-place update (see `write_slots`).

    Returns (output [B, H, T, D], cache_k, cache_v); the caches are [B * Hkv, L, D].
    """
    batch, length, dim = tf.shape(q)[0], tf.shape(q)[2], q.shape[-1]
    heads, kv_heads = q.shape[1], k_new.shape[1]
    groups = heads // kv_heads
    rows = batch * kv_heads
    cache_k = write_slots(cache_k, tf.reshape(k_new, [rows, length, dim]), start, in_place)
    cache_v = write_slots(cache_v, tf.reshape(v_new, [rows, length, dim]), start, in_place)
    scale = 1.0 / math.sqrt(dim)
    queries = groups * length
    q = tf.reshape(q, [rows, queries, dim])
    if groups > 1:
        bias = tf.tile(bias, [1, 1, groups, 1])  # [B, 1, G * T, L], row g * T + t is query t's
    scores = tf.matmul(q, cache_k, transpose_b=True) * scale  # [B * Hkv, G * T, L]
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
            hidden = hidden[:, -1, :]
        return self.logits(hidden), cache

    def hidden(self, input_ids, positions, start, key_mask, cache, all_layers=False):
        """Final hidden states [B, T, D] (or every layer's, input embeddings first) and the cache."""
        x = self.embed(input_ids, positions)
        bias = attention_bias(key_mask, start, tf.shape(input_ids)[1])
        context = self.position_context(positions)
        layers = [x]
        new_cache = []
        for index in range(self.num_layers):
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
        """Number of parameters (tied input/output embeddings counted once)."""
        return int(sum(v.shape.num_elements() for v in self.variables()))


def dense(x, weight, bias=None):
    """x [B, T, in] @ weight [in, out] (+ bias), as one 2-D matmul (as transformers' TFConv1D does)."""
    shape = tf.shape(x)
    flat = tf.matmul(tf.reshape(x, [-1, weight.shape[0]]), weight)
    if bias is not None:
        flat = flat + bias
    return tf.reshape(flat, tf.concat([shape[:-1], [weight.shape[1]]], axis=0))


def split_heads(x, heads, head_dim):
    """[B, T, heads * head_dim] -> [B, heads, T, head_dim]."""
    x = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], heads, head_dim])
    return tf.transpose(x, [0, 2, 1, 3])


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
