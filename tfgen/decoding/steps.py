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


def write_column(buffer, column, values):
    """buffer[:, column] = values, for a [B, L] buffer and a scalar column (no Python indexing)."""
    hit = tf.equal(tf.range(tf.shape(buffer)[-1]), column)
    return tf.where(hit, tf.expand_dims(tf.cast(values, buffer.dtype), -1), buffer)


def token_counts(tokens, first_slot, cur_len, vocab_size):
    """int32 [B, V]: how often each token occurs in tokens[:, first_slot:cur_len]."""
    slots = tf.range(tf.shape(tokens)[1])
    valid = (slots >= first_slot) & (slots < cur_len)
    batch = tf.shape(tokens)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(tokens))
    indices = tf.stack([tf.reshape(rows, [-1]), tf.reshape(tokens, [-1])], axis=-1)
    updates = tf.reshape(tf.broadcast_to(tf.cast(valid, tf.int32)[None, :], tf.shape(tokens)), [-1])
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
        step: how many tokens have been generated.
        params: a `SamplingParams` or `BeamParams` (repetition_penalty [B], first_slot,
            no_repeat_ngram_size, min_new_tokens, eos_token_id, rules).
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
    scores = processors.min_new_tokens(scores, step, params.min_new_tokens, params.eos_token_id)
    if rules.suppress is not None:
        scores = processors.suppress(scores, rules.suppress)
    if rules.begin_suppress is not None:
        scores = tf.cond(tf.equal(step, 0), lambda: processors.suppress(scores, rules.begin_suppress),
                         lambda: scores)
    return scores


def generated_lengths(new_tokens, eos_token_id, limit):
    """Tokens generated per row: up to and including the first EOS, at most `limit` [B] or scalar.

    `eos_token_id` is a scalar or one id per row [B] (-1 for a row that ignores EOS)."""
    count = tf.shape(new_tokens)[1]
    is_eos = tf.equal(new_tokens, tf.reshape(tf.cast(eos_token_id, new_tokens.dtype), [-1, 1]))
    first_eos = tf.where(
        tf.reduce_any(is_eos, axis=1), tf.argmax(tf.cast(is_eos, tf.int32), axis=1, output_type=tf.int32) + 1,
        count,
    )
    return tf.minimum(first_eos, tf.cast(limit, tf.int32))
