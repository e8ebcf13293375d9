"""Streaming: the sampling loop's steps driven from Python, one compiled step per token.

`init_state` (prefill + first token) and `advance` (feed + choose) are the same functions the
one-program loop in `sampling.decode` runs; here each is compiled once per bucket and called
per token, so text can be shown as it is produced.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from tfgen.decoding import sampling, stops
from tfgen.model import xla_writes


class StepPrograms:
    """The compiled init/advance pair of one engine."""

    def __init__(self, engine):
        self.engine = engine
        self._init = tf.function(self._init_program, jit_compile=engine.xla)
        self._advance = tf.function(self._advance_program, jit_compile=engine.xla)

    def _init_program(self, ids, mask, params, num_steps):
        self.engine.traces[("stream-init",) + tuple(ids.shape) + (num_steps,)] += 1
        with xla_writes(self.engine.xla):
            return sampling.init_state(self.engine.lm, ids, mask, params, num_steps)

    def _advance_program(self, state, params):
        self.engine.traces[("stream-step",) + tuple(state["tokens"].shape)] += 1
        with xla_writes(self.engine.xla):
            return sampling.advance(self.engine.lm, state, params)


def stream_ids(generator, ids, config) -> Iterator[int]:
    """Yield the new token ids of one prompt (list of ids) as they are chosen."""
    engine = generator.engine
    programs = getattr(engine, "step_programs", None)
    if programs is None:
        programs = engine.step_programs = StepPrograms(engine)
    padded, mask, params, steps, _ = engine.prepare(
        np.asarray([ids], np.int32), np.ones([1, len(ids)], np.int32), config)
    # The stream watches the text for stop strings itself (and holds back what may become one).
    params = {name: value for name, value in params.items() if name not in stops.PARAM_KEYS}
    state = programs._init(tf.constant(padded), tf.constant(mask), params, steps)
    limit = int(config.row_values("max_new_tokens", 1)[0])
    eos = int(params["eos_token_id"])
    for count in range(1, limit + 1):
        token = int(state["last"][0])
        yield token
        if token == eos or count == limit:
            return
        state = programs._advance(state, params)


def stream_text(generator, prompt: str, config) -> Iterator[str]:
    """Yield text pieces of the continuation of `prompt`; stop strings end it (and are not shown)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    config.validate(batch_size=1, vocab_size=generator.vocab_size)
    if config.num_beams > 1 or config.num_return_sequences > 1:
        raise ValueError("stream supports greedy search and sampling of one sequence "
                         "(num_beams=1, num_return_sequences=1)")
    ids = generator.tokenize(prompt) or [generator.lm.bos_token_id]
    generator._check_length(len(ids), config)
    return _pieces(generator, ids, config)


def _pieces(generator, ids, config) -> Iterator[str]:
    stops = config.stop_strings
    hold = max((len(s) for s in stops), default=1) - 1
    new, shown = [], 0
    text = ""
    for token in stream_ids(generator, ids, config):
        new.append(token)
        text = generator.tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd"):
            continue  # a multi-byte character split across tokens: wait for the rest
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut != -1:
            if cut > shown:
                yield text[shown:cut]
            return
        ready = len(text) - hold
        if ready > shown:
            yield text[shown:ready]
            shown = ready
    if len(text) > shown:
        yield text[shown:]
