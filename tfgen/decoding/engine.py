"""The decoding engine: shape buckets, one compiled program per (strategy, bucket), numpy in and out.

Batches are padded up to a batch bucket, prompts left-padded up to a length bucket and the
number of new tokens rounded up to a step bucket, so a new prompt length, batch size or
parameter value inside a bucket reuses the compiled program. Every sampling parameter is a
tensor with one value per row; nothing but the bucket shapes (and, for beam search, the number
of beams and of returned sequences) is part of a trace.
"""
from __future__ import annotations

import bisect
import collections
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tfgen.config import GenerationConfig
from tfgen.decoding import beam, sampling, stops
from tfgen.model import xla_writes

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PROMPT_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
STEP_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def bucket(value: int, buckets) -> int:
    """The smallest bucket >= value (values past the last bucket round up to a multiple of it)."""
    index = bisect.bisect_left(buckets, value)
    if index < len(buckets):
        return buckets[index]
    step = buckets[-1]
    return -(-value // step) * step


def derive_seed(seed: int, copy: int) -> int:
    """The seed of the copy-th returned sequence of a prompt (copy 0 keeps the seed itself)."""
    if copy == 0:
        return int(seed)
    mixed = (int(seed) + copy * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    mixed = ((mixed ^ (mixed >> 31)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return (mixed ^ (mixed >> 29)) & 0x7FFFFFFFFFFFFFFF


class Engine:
    """Runs the compiled decoding programs of one model (a `tfgen.model.CausalLM`).

    Args:
        lm: the model adapter.
        xla: compile with `jit_compile=True` (the default); False runs the same graph unfused.
        token_tables: () -> (token bytes [V, WIDTH], lengths [V]) tensors (`decoding/stops.py`),
            for ending rows at stop strings inside the loop; None leaves stop strings to the caller.

    Attributes:
        traces: how many times each (strategy, batch, prompt, steps[, beams, returns]) bucket was
            traced; `trace_count` is their sum.
    """

    def __init__(self, lm, xla: bool = True, token_tables=None):
        self.lm = lm
        self.xla = xla
        self.token_tables = token_tables
        self.traces: Dict[tuple, int] = collections.Counter()
        self._sample_fn = tf.function(self._sample_program, jit_compile=xla)
        self._beam_fn = tf.function(self._beam_program, jit_compile=xla)

    @property
    def trace_count(self) -> int:
        return sum(self.traces.values())

    def _sample_program(self, input_ids, attention_mask, params, num_steps):
        strategy = "sample+stop" if "stop_bytes" in params else "sample"
        self.traces[(strategy,) + tuple(input_ids.shape) + (num_steps,)] += 1
        with xla_writes(self.xla):
            return sampling.decode(self.lm, input_ids, attention_mask, params, num_steps)

    def _beam_program(self, input_ids, attention_mask, params, num_steps, num_beams, num_return):
        self.traces[("beam",) + tuple(input_ids.shape) + (num_steps, num_beams, num_return)] += 1
        with xla_writes(self.xla):
            return beam.decode(self.lm, input_ids, attention_mask, params, num_steps, num_beams, num_return)

    def prepare(self, input_ids: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig):
        """Pad a batch to its buckets and turn the config into per-row tensors.

        Returns (ids, mask, params, num_steps, rows): the padded int32 arrays [Bb, Pb], the params
        dict the decoding programs take, the step bucket, and how many rows are real.
        """
        batch, prompt_length = input_ids.shape
        eos = self.lm.eos_token_id if config.eos_token_id is None else config.eos_token_id
        pad = self.lm.pad_token_id if config.pad_token_id is None else config.pad_token_id
        copies = 1 if config.num_beams > 1 else config.num_return_sequences
        rows = {name: config.row_values(name, batch) for name in
                ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens")}
        seeds = config.row_values("seed", batch) if config.seed is not None else \
            np.random.default_rng().integers(0, 2**62, size=batch)
        if copies > 1:
            input_ids = np.repeat(input_ids, copies, axis=0)
            attention_mask = np.repeat(attention_mask, copies, axis=0)
            rows = {name: np.repeat(values, copies) for name, values in rows.items()}
            seeds = np.array([derive_seed(s, c) for s in seeds for c in range(copies)])
        n = input_ids.shape[0]
        padded_batch = bucket(n, BATCH_BUCKETS)
        padded_length = bucket(prompt_length, PROMPT_BUCKETS)
        steps = bucket(int(np.max(rows["max_new_tokens"])), STEP_BUCKETS)

        ids = np.full([padded_batch, padded_length], pad, np.int32)
        mask = np.zeros([padded_batch, padded_length], np.int32)
        ids[:n, padded_length - prompt_length:] = input_ids
        mask[:n, padded_length - prompt_length:] = attention_mask
        # Filler rows copy the first row. Beam search's stop test looks at every row, so a filler
        # row unlike the real ones could keep the loop running where Hugging Face stops; a copy
        # never does. Sampling ends them after one greedy step.
        ids[n:] = ids[0]
        mask[n:] = mask[0]

        def per_row(values, dtype, filler=None):
            out = np.empty([padded_batch], dtype)
            out[:n] = values
            out[n:] = out[0] if filler is None else filler
            return tf.constant(out)

        params = dict(
            do_sample=per_row(config.do_sample, bool, False),
            temperature=per_row(rows["temperature"], np.float32),
            top_k=per_row(rows["top_k"], np.int32),
            top_p=per_row(rows["top_p"], np.float32),
            repetition_penalty=per_row(rows["repetition_penalty"], np.float32),
            max_new_tokens=per_row(rows["max_new_tokens"], np.int32, 1),
            seed=per_row(seeds, np.int64),
            min_new_tokens=tf.constant(config.min_new_tokens, tf.int32),
            no_repeat_ngram_size=tf.constant(config.no_repeat_ngram_size, tf.int32),
            eos_token_id=tf.constant(eos, tf.int32),
            pad_token_id=tf.constant(pad, tf.int32),
            first_slot=tf.constant(padded_length - prompt_length, tf.int32),
        )
        encoded = stops.encode(config.stop_strings) if config.num_beams == 1 else None
        if encoded is not None and self.token_tables is not None:
            token_bytes, token_lengths = self.token_tables()
            params.update(stop_bytes=tf.constant(encoded[0]), stop_lengths=tf.constant(encoded[1]),
                          token_bytes=token_bytes, token_lengths=token_lengths)
        return ids, mask, params, steps, n

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig) -> dict:
        """Decode a left-padded batch. The config must be validated for this batch size.

        Returns a dict of numpy arrays: new_tokens [N, T], num_generated [N], and log_probs [N, T]
        (sampling/greedy: of each chosen token) or scores [N] (beam search), where N = batch *
        num_return_sequences and T = max(num_generated).
        """
        ids, mask, params, steps, n = self.prepare(input_ids, attention_mask, config)
        if config.num_beams > 1:
            out = self._run_beam(ids, mask, params, steps, config)
            n *= config.num_return_sequences
        else:
            out = self._sample_fn(tf.constant(ids), tf.constant(mask), params, steps)
        out = {key: value.numpy()[:n] for key, value in out.items()}
        longest = int(out["num_generated"].max()) if n else 0
        out["new_tokens"] = out["new_tokens"][:, :longest]
        if "log_probs" in out:
            out["log_probs"] = out["log_probs"][:, :longest]
        return out

    def _run_beam(self, ids, mask, params, steps, config):
        beams = config.num_beams
        if np.ndim(config.max_new_tokens) != 0:
            raise ValueError("beam search takes one max_new_tokens for the whole batch, got per-row values")
        params = dict(params)
        params["repetition_penalty"] = tf.repeat(params["repetition_penalty"], beams)
        params["max_new_tokens"] = tf.constant(int(config.max_new_tokens), tf.int32)
        params["length_penalty"] = tf.constant(float(config.length_penalty), tf.float32)
        params["early_stopping_true"] = tf.constant(config.early_stopping is True)
        params["early_stopping_never"] = tf.constant(config.early_stopping == "never")
        for name in ("do_sample", "temperature", "top_k", "top_p", "seed"):
            params.pop(name)
        return self._beam_fn(tf.constant(ids), tf.constant(mask), params, steps, beams,
                             config.num_return_sequences)


def make_engine(lm, xla: Optional[bool] = None) -> Engine:
    return Engine(lm, xla=True if xla is None else xla)
