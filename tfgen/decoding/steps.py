"""The steps every decoding loop shares: prefill, feed one token, the processors in order, lengths."""
from __future__ import annotations

import tensorflow as tf

from tfgen.decoding import processors
from tfgen.models.base import positions_from_mask


def prefill(lm, input_ids, attention_mask, max_length):
    """One forward pass over the left-padded prompt that fills the cache.

    Returns (logits [B, V] of the last prompt token, cache, key_mask [B, L], positions [B]): the
    key mask marks the prompt's real tokens; positions is the position of the next token.
    """
    prompt_length = tf.shape(input_ids)[1]
    mask = tf.cast(attention_mask, tf.int32)
    key_mask = tf.pad(mask > 0, [[0, 0], [0, max_length - prompt_length]])
    cache = lm.init_cache(tf.shape(input_ids)[0], max_length)
    logits, cache = lm.forward(input_ids, positions_from_mask(mask), tf.constant(0), key_mask, cache)
    return logits, cache, key_mask, tf.reduce_sum(mask, axis=1)


def feed(lm, tokens, slot, positions, key_mask, cache):
    """Run one new token per row [B] at cache slot `slot`; returns (logits, cache, key_mask)."""
    key_mask = key_mask | tf.equal(tf.range(tf.shape(key_mask)[1]), slot)[None, :]
    logits, cache = lm.forward(tokens[:, None], positions[:, None], slot, key_mask, cache)
    return logits, cache, key_mask


def write_column(buffer, column, values, axis=-1):
    """buffer[..., column] = values along `axis` (the last by default) for a scalar column, no
    Python indexing: a [B, L] buffer and values [B]; [B, K, L] and [B, K]; or, with axis=1,
    [B, L, N] and [B, N]. `column` may also be [B], one column per row (speculative decoding)."""
    axis = axis % len(buffer.shape)
    shape = [1] * len(buffer.shape)
    shape[axis] = -1
    row_shape = [-1] + [1] * (len(buffer.shape) - 1)
    hit = tf.equal(tf.reshape(tf.range(tf.shape(buffer)[axis]), shape), tf.reshape(column, row_shape))
    return tf.where(hit, tf.expand_dims(tf.cast(values, buffer.dtype), axis), buffer)


def token_counts(tokens, first_slot, cur_len, vocab_size):
    """int32 [B, V]: how often each token occurs in tokens[:, first_slot:cur_len] (cur_len a scalar
    or [B], one per row)."""
    slots = tf.range(tf.shape(tokens)[1])[None, :]
    valid = (slots >= first_slot) & (slots < tf.reshape(cur_len, [-1, 1]))  # [1 or B, L]
    batch = tf.shape(tokens)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(tokens))
    indices = tf.stack([tf.reshape(rows, [-1]), tf.reshape(tokens, [-1])], axis=-1)
    updates = tf.reshape(tf.broadcast_to(tf.cast(valid, tf.int32), tf.shape(tokens)), [-1])
    return tf.scatter_nd(indices, updates, [batch, vocab_size])


def seen_tokens(tokens, first_slot, cur_len, vocab_size):
    """bool [B, V]: which tokens occur in tokens[:, first_slot:cur_len]."""
    return token_counts(tokens, first_slot, cur_len, vocab_size) > 0


def apply_processors(scores, tokens, cur_len, step, params, vocab_size):
    """Hugging Face's processors, in its order: logit bias (its sequence_bias), repetition penalty,
    no-repeat n-gram, bad words, min new tokens, suppress tokens, suppress tokens at the beginning.

    Args:
        scores: float [B, V] (logits, or log-probabilities in beam search).
        tokens: int32 [B, L], the sequence buffer; cur_len: how many slots are filled.
        step: how many tokens have been generated. cur_len and step are scalars, or [B] each
            (speculative decoding scores each row's drafted positions as rows of their own).
        params: a `SamplingParams` or `BeamParams` (repetition_penalty [B], first_slot,
            no_repeat_ngram_size, min_new_tokens, eos_mask, rules).
    """
    penalty = params.repetition_penalty
    first_slot = params.first_slot
    rules = params.rules
    if rules.logit_bias is not None:
        scores = processors.logit_bias(scores, rules.logit_bias)
    scores = tf.cond(
        tf.reduce_any(tf.not_equal(penalty, 1.0)),
        lambda: processors.repetition_penalty(
            scores, seen_tokens(tokens, first_slot, cur_len, vocab_size), penalty),
        lambda: scores,
    )
    scores = processors.no_repeat_ngram(
        scores, tokens, cur_len, params.no_repeat_ngram_size, first_slot)
    if rules.bad_words is not None:
        scores = processors.bad_words(scores, tokens, cur_len, rules.bad_words, first_slot)
    scores = processors.min_new_tokens(scores, step, params.min_new_tokens, params.eos_mask)
    if rules.suppress is not None:
        scores = processors.suppress(scores, rules.suppress)
    if rules.begin_suppress is not None:
        first = tf.reshape(tf.equal(step, 0), [-1, 1])  # [1, 1] or [B, 1]
        scores = tf.where(first, processors.suppress(scores, rules.begin_suppress), scores)
    return scores


def ends_row(tokens, eos_mask, ignore_eos=None):
    """bool, the shape of `tokens`: which are EOS ids (`eos_mask` [V]); rows whose `ignore_eos`
    [B] is set have none."""
    hit = tf.gather(eos_mask, tokens)
    if ignore_eos is None:
        return hit
    shape = tf.concat([tf.shape(ignore_eos), tf.ones([tf.rank(tokens) - 1], tf.int32)], 0)
    return hit & ~tf.reshape(ignore_eos, shape)


def generated_lengths(new_tokens, eos_mask, limit, ignore_eos=None):
    """Tokens generated per row: up to and including the first EOS, at most `limit` [B] or scalar.

    `eos_mask` bool [V] marks the EOS ids; rows whose `ignore_eos` [B] is set have none."""
    count = tf.shape(new_tokens)[1]
    is_eos = ends_row(new_tokens, eos_mask, ignore_eos)
    first_eos = tf.where(
        tf.reduce_any(is_eos, axis=1), tf.argmax(tf.cast(is_eos, tf.int32), axis=1, output_type=tf.int32) + 1,
        count,
    )
    return tf.minimum(first_eos, tf.cast(limit, tf.int32))
