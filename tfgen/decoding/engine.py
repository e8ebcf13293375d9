"""The decoding engine: one compiled program per (strategy, bucket), numpy in and out.

The engine pads a batch to its buckets (`tfgen.decoding.params`), builds the loop's parameter
record from a `GenerationConfig` and runs the compiled loop: `sampling.loop` (greedy and sampling,
chosen per row) or `beam_search.loop`. Every sampling parameter is a tensor with one value per
row; nothing but the bucket shapes (and, for beam search, the number of beams and of returned
sequences) is part of a trace. For streaming it also compiles the loop's two steps on their own
(`stream`): prefill + first token, and one more token.
"""
from __future__ import annotations

import collections
from typing import Dict, Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from tfgen.config import ROW_FIELDS, GenerationConfig
from tfgen.decoding import beam_search, params, programs, sampling, speculative, stops


class Prepared(NamedTuple):
    """A batch ready for a compiled program: padded int32 ids/mask [Bb, Pb], the loop's parameter
    record, the step bucket, and how many rows are real."""

    ids: np.ndarray
    mask: np.ndarray
    params: object
    num_steps: int
    rows: int


class Engine:
    """Runs the compiled decoding programs of one model (a `tfgen.models.base.CausalLM`).

    Args:
        lm: the model adapter.
        xla: compile with `jit_compile=True` (the default; the cache is then written with XLA's
            in-place update); False runs the same graph unfused.
        token_tables: () -> (token bytes [V, WIDTH], lengths [V]) tensors (`decoding/stops.py`),
            for ending rows at stop strings inside the loop; None leaves stop strings to the caller.

    Attributes:
        traces: how many times each (strategy, batch, prompt, steps[, beams, returns]) bucket was
            traced in Python; `trace_count` is their sum.
        restored: programs restored from tfgen's on-disk cache instead (a warm start traces
            nothing); `restore_count` is their sum. `compile_count`: programs XLA compiled here
            (a warm start compiles nothing either).
    """

    def __init__(self, lm, xla: bool = True, token_tables=None):
        self.lm = lm.with_in_place_writes(xla)
        self.xla = xla
        self.token_tables = token_tables
        self.traces: Dict[tuple, int] = collections.Counter()
        # Each program is traced once per process, or restored from tfgen's cache without tracing.
        self.programs = programs.Programs(self.lm, xla)
        self._sample_fn = self.programs.function("sample", self._sample_program, num_static=3)
        self._beam_fn = self.programs.function("beam", self._beam_program, num_static=3)
        self._init_fn = self.programs.function("stream-init", self._init_program, num_static=1)
        self._advance_fn = self.programs.function("stream-step", self._advance_program)
        self._speculative_fns: Dict[object, object] = {}  # proposer -> its program (`_speculative_fn`)

    @property
    def trace_count(self) -> int:
        return sum(self.traces.values())

    @property
    def restored(self) -> Dict[tuple, int]:
        """Programs restored from the cache instead of traced (`tfgen.decoding.programs`)."""
        return self.programs.restored

    @property
    def restore_count(self) -> int:
        return sum(self.programs.restored.values())

    @property
    def compile_count(self) -> int:
        """Programs XLA compiled in this process (`Programs.compiled`): 0 on a warm start."""
        return sum(self.programs.compiled.values())

    # -- the compiled programs -------------------------------------------------------------------
    def _sample_program(self, input_ids, attention_mask, loop_params, num_steps, top_logprobs, raw_logprobs):
        strategy = "sample" if loop_params.stops is None else "sample+stop"
        if top_logprobs:
            strategy += "+logprobs" + ("+raw" if raw_logprobs else "")
        self.traces[(strategy,) + tuple(input_ids.shape) + (num_steps,)] += 1
        return sampling.loop(self.lm, input_ids, attention_mask, loop_params, num_steps, top_logprobs,
                             raw_logprobs)

    def _beam_program(self, input_ids, attention_mask, loop_params, num_steps, num_beams, num_return):
        self.traces[("beam",) + tuple(input_ids.shape) + (num_steps, num_beams, num_return)] += 1
        return beam_search.loop(self.lm, input_ids, attention_mask, loop_params, num_steps, num_beams,
                                num_return)

    def _speculative_fn(self, proposer):
        """The speculative loop's program for one proposer. A draft model's weights are captured
        (not inputs), so its program is traced once per process and draft object."""
        lookup = isinstance(proposer, speculative.PromptLookup)
        key = proposer if lookup else (id(proposer.lm), proposer.pass_exponent)
        if key not in self._speculative_fns:
            if not lookup:
                proposer = proposer._replace(lm=proposer.lm.with_in_place_writes(self.xla))
            # The proposer's settings (the key) are in the name, so cached programs never mix them.
            default = lookup and proposer == speculative.PromptLookup()
            name = f"speculative-{proposer.name}" + ("" if default else "-" + "-".join(map(str, key)))

            def body(input_ids, attention_mask, loop_params, num_steps, num_tokens, top_logprobs,
                     raw_logprobs):
                self.traces[(name,) + tuple(input_ids.shape) + (num_steps, num_tokens)] += 1
                return speculative.loop(self.lm, input_ids, attention_mask, loop_params, num_steps, proposer,
                                        num_tokens, top_logprobs, raw_logprobs)

            self._speculative_fns[key] = self.programs.function(name, body, num_static=4)
        return self._speculative_fns[key]

    def lowered(self, strategy: str, examples, num_steps: int, *static) -> list:
        """The programs `generate` runs for each example (ids, mask, loop_params) of one shape each,
        as StableHLO modules restored or traced (once for all of them) and lowered but not run
        (`programs.Lowered`; None where one cannot be). strategy "sample" (static: top_logprobs,
        raw_logprobs), "beam" (num_beams, num_return_sequences) or "speculative" (default prompt
        lookup; num_tokens, top_logprobs, raw_logprobs)."""
        if strategy == "speculative":
            function = self._speculative_fn(speculative.PromptLookup())
        else:
            function = {"sample": self._sample_fn, "beam": self._beam_fn}[strategy]
        return function.lowered([tuple(example) + (num_steps,) + static for example in examples])

    def _init_program(self, ids, mask, loop_params, num_steps):
        self.traces[("stream-init",) + tuple(ids.shape) + (num_steps,)] += 1
        return sampling.init_state(self.lm, ids, mask, loop_params, num_steps)

    def _advance_program(self, state, loop_params):
        self.traces[("stream-step",) + tuple(state["tokens"].shape)] += 1
        return sampling.advance(self.lm, state, loop_params)

    # -- numpy in, numpy out ----------------------------------------------------------------------
    def prepare(self, input_ids: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig,
                stop_in_loop: bool = True) -> Prepared:
        """Pad a batch to its buckets and turn the config into the loop's parameter record.

        Sampling repeats each row num_return_sequences times (each copy its own seed); beam search
        returns its sequences itself. `stop_in_loop` False leaves stop strings to the caller.
        """
        batch, prompt_length = input_ids.shape
        eos = config.eos_token_ids(self.lm.eos_token_ids)
        pad = self.lm.pad_token_id if config.pad_token_id is None else config.pad_token_id
        rows = {field.name: config.row_values(field.name, batch) for field in ROW_FIELDS
                if field.name != "seed"}
        rows["seed"] = params.row_seeds(config.seed, batch)
        copies = 1 if config.num_beams > 1 else config.num_return_sequences
        if copies > 1:
            input_ids = np.repeat(input_ids, copies, axis=0)
            attention_mask = np.repeat(attention_mask, copies, axis=0)
            rows = {name: np.repeat(values, copies) for name, values in rows.items()}
            rows["seed"] = params.copy_seeds(rows["seed"][::copies], copies)
        ids, mask = params.pad_to_buckets(input_ids, attention_mask, pad)
        padded_batch, padded_length = ids.shape
        num_steps = params.bucket(int(np.max(rows["max_new_tokens"])), params.STEP_BUCKETS)
        rules = params.token_rules(self.lm.vocab_size, config.logit_bias, config.bad_words_ids,
                                   config.suppress_tokens, config.begin_suppress_tokens, eos_token_ids=eos)
        scalars = dict(first_slot=padded_length - prompt_length, eos_token_ids=eos, pad_token_id=pad,
                       vocab_size=self.lm.vocab_size,
                       no_repeat_ngram_size=config.no_repeat_ngram_size, rules=rules)
        if config.num_beams > 1:
            penalty = params.column("repetition_penalty", rows["repetition_penalty"], padded_batch)
            loop_params = params.beam_params(
                penalty, config.num_beams, max_new_tokens=int(config.max_new_tokens),
                min_new_tokens=int(config.min_new_tokens), length_penalty=float(config.length_penalty),
                early_stopping=config.early_stopping, **scalars)
        else:
            loop_params = params.sampling_params(
                rows, padded_batch, stops=self._stop_tables(config) if stop_in_loop else None, **scalars)
        return Prepared(ids, mask, loop_params, num_steps, input_ids.shape[0])

    def _stop_tables(self, config: GenerationConfig):
        encoded = stops.encode(config.stop_strings)
        if encoded is None or self.token_tables is None:
            return None
        token_bytes, token_lengths = self.token_tables()
        return params.StopTables(tf.constant(encoded[0]), tf.constant(encoded[1]), token_bytes, token_lengths)

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig,
                 speculation=None) -> dict:
        """Decode a left-padded batch. The config must be validated for this batch size.

        `speculation`: None, or (proposer, k) for speculative decoding (greedy and sampling,
        `tfgen.decoding.speculative`); its outputs then also hold forward_passes, proposed and
        accepted [N].

        Returns a dict of numpy arrays: new_tokens [N, T], num_generated [N], and log_probs [N, T]
        (sampling/greedy: of each chosen token) or scores [N] (beam search), where N = batch *
        num_return_sequences and T = max(num_generated); with config.logprobs = K also top_ids /
        top_log_probs [N, T, K] and, with raw_logprobs, raw_log_probs [N, T] and raw_top_ids /
        raw_top_log_probs [N, T, K] (`tfgen.decoding.sampling.log_prob_columns`).
        """
        prepared = self.prepare(input_ids, attention_mask, config)
        ids, mask = tf.constant(prepared.ids), tf.constant(prepared.mask)
        n = prepared.rows
        if config.num_beams > 1:
            if speculation is not None:
                raise ValueError("speculative decoding supports greedy search and sampling, not beam search "
                                 "(num_beams=1)")
            out = self._beam_fn(ids, mask, prepared.params, prepared.num_steps, config.num_beams,
                                config.num_return_sequences)
            n *= config.num_return_sequences
        elif speculation is not None:
            proposer, num_tokens = speculation
            out = self._speculative_fn(proposer)(ids, mask, prepared.params, prepared.num_steps, num_tokens,
                                                 config.top_logprobs, bool(config.raw_logprobs))
        else:
            out = self._sample_fn(ids, mask, prepared.params, prepared.num_steps, config.top_logprobs,
                                  bool(config.raw_logprobs))
        out = {key: value.numpy()[:n] for key, value in out.items()}
        longest = int(out["num_generated"].max()) if n else 0
        for key, value in out.items():  # per-step outputs [N, steps, ...] down to the longest row
            if value.ndim >= 2 and key != "scores":
                out[key] = value[:, :longest]
        if config.logprobs is not None:  # the alternatives asked for, of the MAX_LOGPROBS computed
            for key, dtype in (("top_ids", np.int32), ("top_log_probs", np.float32)):
                out.setdefault(key, np.zeros(out["new_tokens"].shape + (0,), dtype))  # logprobs=0
            for key in ("top_ids", "top_log_probs", "raw_top_ids", "raw_top_log_probs"):
                if key in out:
                    out[key] = out[key][:, :, :config.logprobs]
        return out

    def stream(self, ids, config: GenerationConfig) -> Iterator[int]:
        """Yield the new token ids of one prompt (a list of ids) as they are chosen, one compiled
        step per token. Greedy or sampling; stop strings are the caller's (it watches the text).
        The config must be validated for a batch of one."""
        prepared = self.prepare(np.asarray([ids], np.int32), np.ones([1, len(ids)], np.int32), config,
                                stop_in_loop=False)
        loop_params = prepared.params
        state = self._init_fn(tf.constant(prepared.ids), tf.constant(prepared.mask), loop_params,
                              prepared.num_steps)
        limit = int(config.row_values("max_new_tokens", 1)[0])
        ends = () if config.ignore_eos else config.eos_token_ids(self.lm.eos_token_ids)
        for count in range(1, limit + 1):
            token = int(state["last"][0])
            yield token
            if token in ends or count == limit:
                return
            state = self._advance_fn(state, loop_params)
