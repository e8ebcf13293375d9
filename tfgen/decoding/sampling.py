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
    """Process the logits and pick each row's next token.

    Returns (tokens [B], columns): the values `record` writes for this step, `log_probs` [B] of
    each chosen token under the distribution it was chosen from, and, when the state asks for
    them (`init_state`'s top_logprobs / raw_logprobs), that distribution's top alternatives and
    the raw model distribution's (`log_prob_columns`).
    """
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
    return tokens, log_prob_columns(logits, final, tokens, state)


# State buffers of the optional log-probability outputs, [B, steps, top_n] or [B, steps].
_TOP = ("top_ids", "top_log_probs")
_RAW = ("raw_log_probs", "raw_top_ids", "raw_top_log_probs")


def log_prob_columns(logits, final, tokens, state):
    """One step's log-probability outputs.

    `final` [B, V] is the distribution each row's token was chosen from: the processed scores for
    a greedy row, also warped (temperature, top-k, top-p, min-p, typical-p) for a sampled one, as
    OpenAI and vLLM report them; `logits` [B, V] the model's raw output. Always log_probs [B] of
    the chosen tokens; with top alternatives in the state, the top_n most likely ids and their
    log-probabilities under `final` ([B, top_n], most likely first); with raw outputs, the chosen
    token's and the top_n alternatives' under log_softmax(logits).
    """
    log_softmax = tf.nn.log_softmax(final, axis=-1)
    columns = dict(log_probs=tf.gather(log_softmax, tokens, axis=1, batch_dims=1))
    if "top_ids" in state:
        top_n = state["top_ids"].shape[-1]
        values, ids = tf.math.top_k(log_softmax, k=top_n)
        columns.update(top_ids=ids, top_log_probs=values)
        if "raw_log_probs" in state:
            raw = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
            raw_values, raw_ids = tf.math.top_k(raw, k=top_n)
            columns.update(raw_log_probs=tf.gather(raw, tokens, axis=1, batch_dims=1),
                           raw_top_ids=raw_ids, raw_top_log_probs=raw_values)
    return columns


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


def record(state, tokens, columns, params):
    """Write the chosen tokens and their log-probability columns (`choose`) into the state and
    update which rows finished."""
    finished = state["finished"]
    tokens = tf.where(finished, params.pad_token_id, tokens)
    step = state["step"]
    slot = state["prompt_length"] + step
    newly_done = steps.ends_row(tokens, params.eos_mask, params.ignore_eos) | \
        (step + 1 >= params.max_new_tokens)
    if params.stops is not None:  # a row also ends when a stop string appears in its text
        tables = params.stops
        window = stops.append(state["stop_window"], tokens, tables.token_bytes, tables.token_lengths)
        newly_done = newly_done | stops.matches(window, tables.stop_bytes, tables.stop_lengths)
        state = dict(state, stop_window=window, length=tf.where(finished, state["length"], step + 1))
    written = {name: steps.write_column(state[name], step, _blank_finished(value, finished), axis=1)
               for name, value in columns.items()}
    return dict(
        state,
        **written,
        tokens=steps.write_column(state["tokens"], slot, tokens),
        finished=finished | newly_done,
        last=tokens,
        step=step + 1,
    )


def _blank_finished(value, finished):
    """A step's column with rows that had already finished zeroed (ids: 0, log-probs: 0.0)."""
    done = tf.reshape(finished, [-1] + [1] * (len(value.shape) - 1))
    return tf.where(done, tf.zeros_like(value), value)


def init_state(lm, input_ids, attention_mask, params, num_steps, top_logprobs=0, raw_logprobs=False):
    """Prefill the cache with the prompt and choose the first token.

    top_logprobs > 0 (static) also records, per step, that many most likely alternatives;
    raw_logprobs (static, with top_logprobs) the raw model distribution's as well
    (`log_prob_columns`).
    """
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
    if top_logprobs:
        top = [batch, num_steps, top_logprobs]
        state.update(top_ids=tf.zeros(top, tf.int32), top_log_probs=tf.zeros(top, tf.float32))
        if raw_logprobs:
            state.update(raw_log_probs=tf.zeros([batch, num_steps], tf.float32),
                         raw_top_ids=tf.zeros(top, tf.int32), raw_top_log_probs=tf.zeros(top, tf.float32))
    tokens, columns = choose(logits, state, params, lm.vocab_size)
    return record(state, tokens, columns, params)


def advance(lm, state, params):
    """Feed the last chosen token and choose the next."""
    slot = state["prompt_length"] + state["step"] - 1
    logits, cache, key_mask = steps.feed(
        lm, state["last"], slot, state["positions"], state["key_mask"], state["cache"]
    )
    state = dict(state, cache=cache, key_mask=key_mask, positions=state["positions"] + 1)
    tokens, columns = choose(logits, state, params, lm.vocab_size)
    return record(state, tokens, columns, params)


def loop(lm, input_ids, attention_mask, params, num_steps, top_logprobs=0, raw_logprobs=False):
    """Generate up to `num_steps` tokens per row in one loop.

    Args:
        lm: a `tfgen.models.base.CausalLM`.
        input_ids, attention_mask: int32 [B, P], left-padded.
        params: a `tfgen.decoding.params.SamplingParams`.
        num_steps: static bound on new tokens (the cache holds P + num_steps slots).
        top_logprobs, raw_logprobs: static; the optional log-probability outputs (`init_state`).

    Returns:
        dict with new_tokens int32 [B, num_steps], log_probs float32 [B, num_steps],
        num_generated int32 [B]; with top_logprobs, top_ids int32 / top_log_probs float32
        [B, num_steps, top_logprobs]; with raw_logprobs, raw_log_probs [B, num_steps] and
        raw_top_ids / raw_top_log_probs.
    """
    state = init_state(lm, input_ids, attention_mask, params, num_steps, top_logprobs, raw_logprobs)
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
        {name: state[name] for name in _TOP + _RAW if name in state},
        new_tokens=new_tokens,
        log_probs=state["log_probs"],
        num_generated=steps.generated_lengths(new_tokens, params.eos_mask, limit, params.ignore_eos),
    )
