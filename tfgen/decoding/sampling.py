"""Greedy search and sampling: one loop, the strategy chosen per row by `do_sample`.

Greedy is sampling's degenerate case: a greedy row skips the warpers (temperature, top-k,
top-p) and the noise, and takes the argmax of the processed scores, as Hugging Face's greedy
search does. Sampling is Gumbel-max over the warped scores, with noise keyed by (row seed, step)
so a row's text depends only on its own seed.

The loop is `init_state` (prefill, then choose the first token) followed by `advance` (feed the
last token, choose the next) until every row finished; `loop` runs it all inside one program,
`Engine.stream` drives `advance` from Python.
"""
from __future__ import annotations

import tensorflow as tf

from tfgen.decoding import noise, processors, steps, stops


def choose(logits, state, params, vocab_size):
    """Process the logits and pick each row's next token; returns (tokens [B], log-probs [B])."""
    step = state["step"]
    cur_len = state["prompt_length"] + step
    scores = steps.apply_processors(logits, state["tokens"], cur_len, step, params, vocab_size)
    scores = _penalize_generated(scores, state, params, vocab_size)
    sample = params.do_sample

    def warp_and_sample():
        warped = processors.temperature(scores, tf.where(sample, params.temperature, 1.0))
        warped = processors.top_k(warped, tf.where(sample, params.top_k, 0))
        warped = processors.top_p(warped, tf.where(sample, params.top_p, 1.0))
        warped = processors.min_p(warped, tf.where(sample, params.min_p, 0.0))
        warped = processors.typical_p(warped, tf.where(sample, params.typical_p, 1.0))
        gumbel = noise.gumbel(params.seed, step, vocab_size)
        noisy = tf.where(sample[:, None], warped + gumbel, warped)
        return warped, tf.argmax(noisy, axis=-1, output_type=tf.int32)

    def greedy():
        return scores, tf.argmax(scores, axis=-1, output_type=tf.int32)

    final, tokens = tf.cond(tf.reduce_any(sample), warp_and_sample, greedy)
    log_probs = tf.gather(tf.nn.log_softmax(final, axis=-1), tokens, axis=1, batch_dims=1)
    return tokens, log_probs


def _penalize_generated(scores, state, params, vocab_size):
    """OpenAI's presence and frequency penalties over each row's generated tokens. They come after
    Hugging Face's processors: every one of those either multiplies a logit (applied before, as
    vLLM applies repetition before these penalties) or bans it (-inf stays -inf)."""
    presence, frequency = params.presence_penalty, params.frequency_penalty

    def penalize():
        prompt_length = state["prompt_length"]
        counts = steps.token_counts(state["tokens"], prompt_length, prompt_length + state["step"], vocab_size)
        return processors.presence_frequency_penalty(scores, counts, presence, frequency)

    active = tf.reduce_any(tf.not_equal(presence, 0.0) | tf.not_equal(frequency, 0.0))
    return tf.cond(active, penalize, lambda: scores)


def _row_eos(params):
    """Each row's EOS id [B]; -1 (no token) for rows that ignore EOS."""
    return tf.where(params.ignore_eos, -1, params.eos_token_id)


def record(state, tokens, log_probs, params):
    """Write the chosen tokens into the state and update which rows finished."""
    finished = state["finished"]
    tokens = tf.where(finished, params.pad_token_id, tokens)
    step = state["step"]
    slot = state["prompt_length"] + step
    newly_done = tf.equal(tokens, _row_eos(params)) | (step + 1 >= params.max_new_tokens)
    if params.stops is not None:  # a row also ends when a stop string appears in its text
        tables = params.stops
        window = stops.append(state["stop_window"], tokens, tables.token_bytes, tables.token_lengths)
        newly_done = newly_done | stops.matches(window, tables.stop_bytes, tables.stop_lengths)
        state = dict(state, stop_window=window, length=tf.where(finished, state["length"], step + 1))
    return dict(
        state,
        tokens=steps.write_column(state["tokens"], slot, tokens),
        log_probs=steps.write_column(state["log_probs"], step, tf.where(finished, 0.0, log_probs)),
        finished=finished | newly_done,
        last=tokens,
        step=step + 1,
    )


def init_state(lm, input_ids, attention_mask, params, num_steps):
    """Prefill the cache with the prompt and choose the first token."""
    batch, prompt_length = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
    max_length = prompt_length + num_steps
    logits, cache, key_mask, positions = steps.prefill(lm, input_ids, attention_mask, max_length)
    state = dict(
        tokens=tf.pad(tf.cast(input_ids, tf.int32), [[0, 0], [0, num_steps]],
                      constant_values=params.pad_token_id),
        log_probs=tf.zeros([batch, num_steps], tf.float32),
        finished=tf.zeros([batch], tf.bool),
        last=tf.zeros([batch], tf.int32),
        step=tf.constant(0),
        prompt_length=prompt_length,
        positions=positions,
        key_mask=key_mask,
        cache=cache,
    )
    if params.stops is not None:
        state.update(stop_window=tf.fill([batch, stops.WIDTH], stops.UNKNOWN),
                     length=tf.zeros([batch], tf.int32))
    tokens, log_probs = choose(logits, state, params, lm.vocab_size)
    return record(state, tokens, log_probs, params)


def advance(lm, state, params):
    """Feed the last chosen token and choose the next."""
    slot = state["prompt_length"] + state["step"] - 1
    logits, cache, key_mask = steps.feed(
        lm, state["last"], slot, state["positions"], state["key_mask"], state["cache"]
    )
    state = dict(state, cache=cache, key_mask=key_mask, positions=state["positions"] + 1)
    tokens, log_probs = choose(logits, state, params, lm.vocab_size)
    return record(state, tokens, log_probs, params)


def loop(lm, input_ids, attention_mask, params, num_steps):
    """Generate up to `num_steps` tokens per row in one loop.

    Args:
        lm: a `tfgen.models.base.CausalLM`.
        input_ids, attention_mask: int32 [B, P], left-padded.
        params: a `tfgen.decoding.params.SamplingParams`.
        num_steps: static bound on new tokens (the cache holds P + num_steps slots).

    Returns:
        dict with new_tokens int32 [B, num_steps], log_probs float32 [B, num_steps],
        num_generated int32 [B].
    """
    state = init_state(lm, input_ids, attention_mask, params, num_steps)
    limit = tf.minimum(tf.reduce_max(params.max_new_tokens), num_steps)
    state = tf.while_loop(
        lambda s: (s["step"] < limit) & ~tf.reduce_all(s["finished"]),
        lambda s: [advance(lm, s, params)],
        [state],
        maximum_iterations=num_steps - 1,
    )[0]
    return finish(state, params)


def finish(state, params):
    new_tokens = state["tokens"][:, tf.shape(state["tokens"])[1] - tf.shape(state["log_probs"])[1]:]
    limit = tf.minimum(params.max_new_tokens, state["step"])
    if params.stops is not None:  # rows ended by a stop string: their later slots hold padding, not EOS
        limit = tf.minimum(limit, state["length"])
    return dict(
        new_tokens=new_tokens,
        log_probs=state["log_probs"],
        num_generated=steps.generated_lengths(new_tokens, _row_eos(params), limit),
    )
