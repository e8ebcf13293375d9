"""Counter-based random numbers keyed by (row seed, step, token), for per-row reproducible sampling.

`tf.random.stateless_*` takes one seed per call, so a batch could not give each row its own
stream. Hashing (seed, step, token index) with murmur3's 32-bit finaliser gives every row an
independent stream: a row samples the same text whatever else shares its batch.
"""
from __future__ import annotations

import tensorflow as tf

_GOLDEN = 0x9E3779B9


def _fmix32(h):
    """murmur3's finaliser: a bijection on uint32 that mixes every input bit into every output bit."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))
    h = h * tf.constant(0x85EBCA6B, tf.uint32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(13, tf.uint32)))
    h = h * tf.constant(0xC2B2AE35, tf.uint32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))


def _xor(a, b):
    return tf.bitwise.bitwise_xor(a, b)


def _u32(x):
    return tf.cast(tf.cast(x, tf.int64) & 0xFFFFFFFF, tf.uint32)


def row_keys(seed, step):
    """One uint32 key per row from int64 seeds [B] and the int32 step."""
    seed = tf.cast(seed, tf.int64)
    low, high = _u32(seed), _u32(tf.bitwise.right_shift(seed, tf.constant(32, tf.int64)))
    key = _fmix32(_xor(low, _fmix32(high + tf.constant(_GOLDEN, tf.uint32))))
    step_key = _fmix32(_u32(step) * tf.constant(0x27D4EB2F, tf.uint32) + tf.constant(1, tf.uint32))
    return _fmix32(_xor(key, step_key))


def uniform(seed, step, vocab_size):
    """Uniform floats in (0, 1), shape [B, vocab_size], a pure function of (seed[b], step, index)."""
    keys = row_keys(seed, step)[:, None]  # [B, 1]
    index = tf.cast(tf.range(vocab_size), tf.uint32)[None, :] * tf.constant(_GOLDEN, tf.uint32)
    bits = _fmix32(_xor(_fmix32(keys + index), keys))
    # 23 bits, so that (m + 0.5) / 2**23 is exact in float32 and lies in [2**-24, 1 - 2**-24]. With
    # 24 bits the top value rounded to 1.0: its Gumbel noise was +inf, which won the argmax
    # whatever the token's probability, or made NaN (inf - inf) on a token top-k/top-p removed.
    mantissa = tf.cast(tf.bitwise.right_shift(bits, tf.constant(9, tf.uint32)), tf.float32)
    return (mantissa + 0.5) * (1.0 / 8388608.0)


def gumbel(seed, step, vocab_size):
    """Gumbel(0, 1) noise [B, vocab_size]: argmax(logits + noise) samples from softmax(logits)."""
    return -tf.math.log(-tf.math.log(uniform(seed, step, vocab_size)))
