"""Beam search, step for step Hugging Face's TF beam search (same scores, tie order and finalisation).

Each step scores every (beam, token) pair by its summed log-probability, keeps the 2 * num_beams
best candidates (so that num_beams survive even if the best ones end), moves candidates that end
with EOS into the finished set with their length-penalised score, and keeps the num_beams best
unfinished ones running. The cache rows follow their beams with one gather per layer.
"""
from __future__ import annotations

import tensorflow as tf

from tfgen.decoding import steps

_NEG = -1.0e9


def _gather_beams(tensor, indices):
    """tensor [B, K, ...] gathered along the beam axis by indices [B, K']."""
    return tf.gather(tensor, indices, axis=1, batch_dims=1)


def _flat(tensor):
    shape = tf.shape(tensor)
    return tf.reshape(tensor, tf.concat([[shape[0] * shape[1]], shape[2:]], axis=0))


def _unflat(tensor, num_beams):
    shape = tf.shape(tensor)
    return tf.reshape(tensor, tf.concat([[shape[0] // num_beams, num_beams], shape[1:]], axis=0))


def _length_norm(length, penalty):
    return tf.cast(length, tf.float32) ** penalty


def select(logits, state, params, num_beams, vocab_size):
    """One beam step from the logits [B*K, V] of the running beams."""
    cur_len = state["prompt_length"] + state["step"]
    running = state["running"]  # [B, K, L]
    batch = tf.shape(running)[0]
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    log_probs = steps.apply_processors(log_probs, _flat(running), cur_len, state["step"], params, vocab_size)
    log_probs = _unflat(log_probs, num_beams) + state["running_scores"][:, :, None]
    log_probs = tf.reshape(log_probs, [batch, num_beams * vocab_size])

    topk_log_probs, topk_indices = tf.math.top_k(log_probs, k=2 * num_beams)
    topk_beams = topk_indices // vocab_size
    topk_ids = topk_indices % vocab_size
    topk_sequences = steps.write_column(_gather_beams(running, topk_beams), cur_len, topk_ids)

    eos_in_next = tf.gather(params.eos_mask, topk_ids)  # [B, 2K]
    in_first_half = tf.concat([tf.ones([num_beams], tf.bool), tf.zeros([num_beams], tf.bool)], 0)
    just_finished = eos_in_next & in_first_half[None, :]

    running_topk = topk_log_probs + tf.cast(eos_in_next, tf.float32) * _NEG
    next_running = tf.math.top_k(running_topk, k=num_beams)[1]
    new_running = _gather_beams(topk_sequences, next_running)
    new_running_scores = _gather_beams(running_topk, next_running)

    generated = cur_len + 1 - state["prompt_length"]
    finished_scores = topk_log_probs / _length_norm(generated, params.length_penalty)
    finished = state["finished"]
    batch_full = tf.reduce_all(finished, axis=-1, keepdims=True) & params.early_stopping_true
    finished_scores += tf.cast(~just_finished | batch_full, tf.float32) * _NEG

    merged_sequences = tf.concat([state["sequences"], topk_sequences], axis=1)
    merged_scores = tf.concat([state["scores"], finished_scores], axis=1)
    merged_finished = tf.concat([finished, just_finished], axis=1)
    best = tf.math.top_k(merged_scores, k=num_beams)[1]

    source_beams = _gather_beams(topk_beams, next_running)  # [B, K], which beam each new one extends
    return dict(
        state,
        running=new_running,
        running_scores=new_running_scores,
        sequences=_gather_beams(merged_sequences, best),
        scores=_gather_beams(merged_scores, best),
        finished=_gather_beams(merged_finished, best),
        last=tf.reshape(_gather_beams(topk_ids, next_running), [-1]),
        source=tf.reshape(source_beams + tf.range(batch)[:, None] * num_beams, [-1]),
        step=state["step"] + 1,
    )


def keep_going(state, params):
    """Hugging Face's stop test: not at max length, a beam still open, improvement still possible."""
    step = state["step"]
    penalty = params.length_penalty
    max_new = params.max_new_tokens
    horizon = tf.where(params.early_stopping_never & (penalty > 0.0), max_new, step)
    best_running = state["running_scores"][:, :1] / _length_norm(horizon, penalty)
    worst_finished = tf.where(
        state["finished"], tf.reduce_min(state["scores"], axis=1, keepdims=True), _NEG
    )
    improvement = tf.reduce_any(best_running > worst_finished)
    open_beam = ~(tf.reduce_all(state["finished"]) & params.early_stopping_true)
    return (step < max_new) & open_beam & improvement


def init_state(lm, input_ids, attention_mask, params, num_steps, num_beams):
    """Prefill once per prompt, copy the cache to every beam, and take the first beam step."""
    batch, prompt_length = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
    max_length = prompt_length + num_steps
    logits, cache, key_mask, positions = steps.prefill(lm, input_ids, attention_mask, max_length)
    tokens = tf.pad(tf.cast(input_ids, tf.int32), [[0, 0], [0, num_steps]],
                    constant_values=params.pad_token_id)
    running = tf.repeat(tokens[:, None, :], num_beams, axis=1)
    first_beam_only = tf.constant([0.0] + [_NEG] * (num_beams - 1))
    state = dict(
        running=running,
        running_scores=tf.tile(first_beam_only[None, :], [batch, 1]),
        sequences=tf.fill(tf.shape(running), params.pad_token_id),
        scores=tf.fill([batch, num_beams], _NEG),
        finished=tf.zeros([batch, num_beams], tf.bool),
        step=tf.constant(0),
        prompt_length=prompt_length,
        positions=tf.repeat(positions, num_beams, axis=0),
        key_mask=tf.repeat(key_mask, num_beams, axis=0),
        cache=lm.repeat_cache(cache, num_beams),
        last=tf.zeros([batch * num_beams], tf.int32),
        source=tf.range(batch * num_beams),
    )
    return select(tf.repeat(logits, num_beams, axis=0), state, params, num_beams, lm.vocab_size)


def advance(lm, state, params, num_beams):
    """Reorder the cache to the surviving beams, feed their last tokens, take one beam step."""
    cache = lm.gather_cache(state["cache"], state["source"])
    slot = state["prompt_length"] + state["step"] - 1
    logits, cache, key_mask = steps.feed(lm, state["last"], slot, state["positions"],
                                          tf.gather(state["key_mask"], state["source"]), cache)
    state = dict(state, cache=cache, key_mask=key_mask, positions=state["positions"] + 1)
    return select(logits, state, params, num_beams, lm.vocab_size)


def loop(lm, input_ids, attention_mask, params, num_steps, num_beams, num_return_sequences):
    """Beam search for up to `num_steps` new tokens; params: a `tfgen.decoding.params.BeamParams`.

    Returns:
        dict with new_tokens int32 [B * R, num_steps], scores float32 [B * R] (Hugging Face's
        sequences_scores), num_generated int32 [B * R]; R = num_return_sequences.
    """
    state = init_state(lm, input_ids, attention_mask, params, num_steps, num_beams)
    state = tf.while_loop(
        lambda s: keep_going(s, params),
        lambda s: [advance(lm, s, params, num_beams)],
        [state],
        maximum_iterations=num_steps - 1,
    )[0]
    # Hugging Face's finalisation: a prompt with no finished hypothesis returns its running beams.
    any_finished = tf.reduce_any(state["finished"], axis=1)
    sequences = tf.where(any_finished[:, None, None], state["sequences"], state["running"])
    running_scores = state["running_scores"] / _length_norm(state["step"], params.length_penalty)
    scores = tf.where(any_finished[:, None], state["scores"], running_scores)
    sequences = _flat(sequences[:, :num_return_sequences])
    new_tokens = sequences[:, tf.shape(input_ids)[1]:]
    lengths = steps.generated_lengths(new_tokens, params.eos_mask, state["step"])
    # A prompt that finished fewer hypotheses than it returns fills the other slots with Hugging
    # Face's placeholders (score -1e9, only padding): they generated nothing.
    real = state["finished"] | ~any_finished[:, None]  # [B, K]
    return dict(
        new_tokens=new_tokens,
        scores=tf.reshape(scores[:, :num_return_sequences], [-1]),
        num_generated=tf.where(tf.reshape(real[:, :num_return_sequences], [-1]), lengths, 0),
    )
