"""The SavedModel: string in, string out, around the same decoding programs the Python API runs.

Every signature is batch-major so TF Serving's batcher can merge requests. Inside the graph the
prompts are tokenized, left-truncated to `max_prompt_tokens`, left-padded to a prompt bucket and
the batch padded to a batch bucket; the decoding program (`tfgen.decoding.sampling.loop` or
`beam_search.loop`, jit-compiled unless the export says otherwise) therefore sees a bounded set of
shapes, each compiled once per server (and ahead of traffic by the warmup requests).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tfgen.config import MAX_LOGPROBS, ROW_FIELDS
from tfgen.decoding import beam_search, params, sampling, speculative, steps, stops
from tfgen.export.bucketed import BucketedProgram
from tfgen.export.graph_tokenizer import GraphTokenizer
from tfgen.tokenizer import token_texts

STRATEGIES = ("greedy", "sample", "beam", "stop", "logprobs", "speculative")
# The per-row inputs of the `generate` signature, in its order (other controls take neutral values).
_GENERATE_INPUTS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                    "seed")


class GenerationModule(tf.Module):
    """Holds the model's variables, the in-graph tokenizer and the serving functions."""

    def __init__(self, generator, *, max_prompt_tokens: int, max_new_tokens: int,
                 num_beams: int = 4, num_return_sequences: int = 1,
                 batch_buckets: Sequence[int] = (1, 8), prompt_buckets: Sequence[int] = (32, 128),
                 xla: bool = True):
        super().__init__(name="tfgen")
        self.model = generator.model  # tracks the weights
        self.lm = generator.lm.with_in_place_writes(xla)
        self.tokenizer = GraphTokenizer(generator.tokenizer)
        self.add_bos = bool(getattr(generator.tokenizer, "add_bos_token", False))
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.max_new_tokens = int(max_new_tokens)
        self.num_beams = int(num_beams)
        self.num_return_sequences = int(num_return_sequences)
        self.batch_buckets = tuple(int(b) for b in batch_buckets)
        self.prompt_buckets = tuple(int(b) for b in prompt_buckets)
        self.xla = xla
        # Each token's bytes for ending rows at stop strings inside the loop (`generate_stop`).
        # Each token's text for the `logprobs` strategy, built only when it is exported.
        self._token_texts_of = lambda: token_texts(generator.tokenizer, range(generator.vocab_size))
        token_bytes, token_lengths = generator.token_tables()
        self.token_bytes = tf.Variable(token_bytes, trainable=False, name="token_bytes")
        self.token_lengths = tf.Variable(token_lengths, trainable=False, name="token_lengths")
        # Each program as one shape-polymorphic function, used only where `_bucketed` cannot be.
        self._polymorphic = {
            "sample": tf.function(self._decode_program, jit_compile=xla),
            "logprobs": tf.function(self._decode_logprobs_program, jit_compile=xla),
            "beam": tf.function(self._beam_program, jit_compile=xla),
            "speculative": tf.function(self._speculative_program, jit_compile=xla),
        }
        # With XLA: each program as a StableHLO module per bucket (`tfgen.export.bucketed`), made by
        # the engine, so a server lowers nothing; the static arguments are the loops' below.
        num_steps = self.max_new_tokens
        statics = {"sample": ("sample", (num_steps, 0, False)),
                   "logprobs": ("sample", (num_steps, MAX_LOGPROBS, False)),
                   "beam": ("beam", (num_steps, self.num_beams, self.num_return_sequences)),
                   "speculative": ("speculative", (num_steps, speculative.DEFAULT_TOKENS, 0, False))}
        engine = generator.engine if xla and generator.engine.xla else None
        self._bucketed = {} if engine is None else {
            kind: BucketedProgram(engine, strategy, static, self.batch_buckets, self.prompt_buckets,
                                  rows_per_prompt=self.num_beams if kind == "beam" else 1)
            for kind, (strategy, static) in statics.items()}
        self._token_texts = None  # each token's text, built by the `logprobs` strategy only

    # -- compiled cores (the engine's own loops) ------------------------------------------------
    def _decode_program(self, ids, mask, loop_params):
        return sampling.loop(self.lm, ids, mask, loop_params, self.max_new_tokens)

    def _decode_logprobs_program(self, ids, mask, loop_params):
        return sampling.loop(self.lm, ids, mask, loop_params, self.max_new_tokens, top_logprobs=MAX_LOGPROBS)

    def _speculative_program(self, ids, mask, loop_params):
        return speculative.loop(self.lm, ids, mask, loop_params, self.max_new_tokens,
                                speculative.PromptLookup(), speculative.DEFAULT_TOKENS)

    def _beam_program(self, ids, mask, loop_params):
        return beam_search.loop(self.lm, ids, mask, loop_params, self.max_new_tokens, self.num_beams,
                                self.num_return_sequences)

    def _program(self, kind: str, ids, mask, loop_params):
        """Run decoding program `kind` ("sample", "logprobs", "beam", "speculative"): its module
        for the bucket when every bucket's could be made, else its shape-polymorphic function."""
        bucketed = self._bucketed.get(kind)
        out = None if bucketed is None else bucketed(ids, mask, loop_params)
        return self._polymorphic[kind](ids, mask, loop_params) if out is None else out

    # -- graph helpers --------------------------------------------------------------------------
    def _tokenize(self, prompt):
        """Prompts [B] -> ragged ids as `TextGenerator.prompt_ids` makes them (empty prompts as
        [BOS]; every prompt starts with BOS when the tokenizer adds it), left-truncated to
        max_prompt_tokens (keeping the BOS such a tokenizer adds)."""
        ragged = self.tokenizer.encode(prompt)
        if self.add_bos:
            keep = self.max_prompt_tokens - 1  # room for the BOS in front
            ragged = ragged[:, -keep:] if keep else ragged[:, :0]
            first = ragged[:, :1].to_tensor(default_value=-1)[:, 0]  # -1 for an empty prompt
            needs_bos = tf.not_equal(first, self.lm.bos_token_id)
        else:
            needs_bos = tf.equal(ragged.row_lengths(), 0)
        needs_bos = tf.cast(needs_bos, tf.int64)
        bos = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.cast(tf.reduce_sum(needs_bos), tf.int32)], self.lm.bos_token_id), needs_bos)
        ragged = tf.concat([bos, tf.cast(ragged, tf.int32)], axis=1)
        return ragged[:, -self.max_prompt_tokens:]

    def _pad(self, ragged, batch):
        """Pad to the batch and prompt buckets; returns (ids, mask, padded batch, first slot)."""
        longest = tf.cast(tf.reduce_max(ragged.row_lengths()), tf.int32)
        length = params.bucket_graph(longest, self.prompt_buckets)
        padded_batch = params.bucket_graph(batch, self.batch_buckets)
        ids, mask = params.left_pad_graph(ragged, length, padded_batch, self.lm.pad_token_id)
        return ids, mask, padded_batch, length - longest

    def _sampling_params(self, rows, padded_batch, first_slot, stop_tables=None):
        return params.sampling_params(rows, padded_batch, first_slot=first_slot, stops=stop_tables,
                                      eos_token_ids=self.lm.eos_token_ids, pad_token_id=self.lm.pad_token_id,
                                      vocab_size=self.lm.vocab_size)

    def _completion_text(self, new_tokens, num_generated):
        """Detokenize the new tokens [N, T] up to num_generated, without the EOS token."""
        ends = params.eos_mask(self.lm.eos_token_ids, self.lm.vocab_size)
        keep = (tf.range(tf.shape(new_tokens)[1])[None, :] < num_generated[:, None]) & \
            ~steps.ends_row(new_tokens, ends)
        return self.tokenizer.decode(tf.ragged.boolean_mask(new_tokens, keep))

    # -- signatures -----------------------------------------------------------------------------
    def generate_text(self, prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
                      repetition_penalty, seed):
        """The `generate` signature: per-row parameters, text out."""
        return self._generate(prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
                              repetition_penalty, seed)

    def generate_stop_text(self, prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
                           repetition_penalty, seed, stop):
        """The `generate_stop` signature: `generate` plus stop strings [B, S] per row ("" = none).

        A row ends inside the loop when one of its first MAX_STOPS stop strings (of up to WIDTH
        bytes) appears in its text, and its text is cut before the earliest of all of them.
        """
        return self._generate(prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
                              repetition_penalty, seed, stop=stop)

    def generate_logprobs_text(self, prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
                               repetition_penalty, seed, logprobs):
        """The `generate_logprobs` signature: `generate` plus `logprobs` [B] (0..20 per row) and,
        per generated token, its id, text and log-probability and the row's `logprobs` most
        likely alternatives (id, text, log-probability) under the distribution it was chosen from
        (`tfgen.decoding.sampling.log_prob_columns`). Token axes [B, T] run to the longest row's
        num_tokens; alternatives [B, T, K] to the largest `logprobs` of the request; entries past
        a row's own num_tokens or `logprobs` hold id -1, text "" and log-probability 0.
        """
        return self._generate(prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
                              repetition_penalty, seed, logprobs=logprobs)

    def _generate(self, prompt, max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty,
                  seed, stop=None, logprobs=None):
        batch = tf.size(prompt)
        given = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                     top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
        checks = params.check_rows_graph(given, batch, self.max_new_tokens)
        rows = self._rows(batch, **given)
        if stop is not None:
            checks.append(tf.debugging.assert_equal(tf.shape(stop)[0], batch,
                                                    message="stop: one row of stop strings per prompt"))
        if logprobs is not None:
            checks += [
                tf.debugging.assert_equal(tf.size(logprobs), batch, message="logprobs: one value per prompt"),
                tf.debugging.assert_greater_equal(logprobs, 0, message="logprobs: must be >= 0"),
                tf.debugging.assert_less_equal(logprobs, MAX_LOGPROBS,
                                               message=f"logprobs: must be <= {MAX_LOGPROBS}"),
            ]
        with tf.control_dependencies(checks):
            ragged = self._tokenize(prompt)
            if logprobs is not None:  # its own uses wait for its checks too
                logprobs = tf.identity(logprobs)
        ids, mask, padded_batch, first_slot = self._pad(ragged, batch)
        stop_tables = None
        if stop is not None:
            stop_bytes, stop_lengths = stops.encode_graph(stop)
            filler = padded_batch - batch
            stop_tables = params.StopTables(
                stop_bytes=tf.pad(stop_bytes, [[0, filler], [0, 0], [0, 0]]),
                stop_lengths=tf.pad(stop_lengths, [[0, filler], [0, 0]]),
                token_bytes=tf.convert_to_tensor(self.token_bytes),
                token_lengths=tf.convert_to_tensor(self.token_lengths),
            )
        out = self._program("sample" if logprobs is None else "logprobs", ids, mask,
                            self._sampling_params(rows, padded_batch, first_slot, stop_tables))
        new_tokens, num_generated = out["new_tokens"][:batch], out["num_generated"][:batch]
        completion = self._completion_text(new_tokens, num_generated)
        if stop is not None:
            completion = stops.cut_graph(completion, stop)
        result = {
            "text": tf.strings.join([prompt, completion]),
            "completion": completion,
            "num_tokens": num_generated,
        }
        if logprobs is not None:
            result.update(self._logprob_outputs(out, batch, num_generated, logprobs))
        return result

    def _logprob_outputs(self, out, batch, num_generated, logprobs):
        """The `generate_logprobs` outputs, cut to the longest row and the largest `logprobs`."""
        if self._token_texts is None:
            raise ValueError("the logprobs strategy's token texts were not built (call signatures())")
        steps_taken = tf.reduce_max(num_generated)
        width = tf.reduce_max(logprobs)
        real = tf.range(steps_taken)[None, :] < num_generated[:, None]  # [B, T]
        shown = real[:, :, None] & (tf.range(width)[None, None, :] < logprobs[:, None, None])  # [B, T, K]
        token_ids = tf.where(real, out["new_tokens"][:batch, :steps_taken], -1)
        top_ids = tf.where(shown, out["top_ids"][:batch, :steps_taken, :width], -1)

        def texts(ids):
            return tf.where(ids >= 0, tf.gather(self._token_texts, tf.maximum(ids, 0)), "")

        return {
            "token_ids": token_ids,
            "token_texts": texts(token_ids),
            "token_logprobs": tf.where(real, out["log_probs"][:batch, :steps_taken], 0.0),
            "top_ids": top_ids,
            "top_texts": texts(top_ids),
            "top_logprobs": tf.where(shown, out["top_log_probs"][:batch, :steps_taken, :width], 0.0),
        }

    def greedy_text(self, prompt):
        """The `serving_default` signature: greedy, the export's max_new_tokens."""
        batch = tf.size(prompt)
        rows = self._rows(batch)
        return self.generate_text(prompt, *[rows[name] for name in _GENERATE_INPUTS])

    def greedy_speculative_text(self, prompt):
        """The `greedy_speculative` signature: `serving_default`'s greedy text, with prompt lookup
        speculation (`tfgen.decoding.speculative`: the same tokens in fewer model passes), and
        forward_passes [B], the model passes each row took."""
        batch = tf.size(prompt)
        ids, mask, padded_batch, first_slot = self._pad(self._tokenize(prompt), batch)
        out = self._program("speculative", ids, mask,
                            self._sampling_params(self._rows(batch), padded_batch, first_slot))
        num_generated = out["num_generated"][:batch]
        completion = self._completion_text(out["new_tokens"][:batch], num_generated)
        return {"text": tf.strings.join([prompt, completion]), "completion": completion,
                "num_tokens": num_generated, "forward_passes": out["forward_passes"][:batch]}

    def _rows(self, batch, **given):
        """Every per-row loop input for `batch` prompts: the signature's own (`given`) and, for the
        controls the signature does not take, the value that leaves decoding unchanged."""
        neutral = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "temperature": 1.0, "top_k": 0,
                   "top_p": 1.0, "repetition_penalty": 1.0, "seed": 0, "min_new_tokens": 0,
                   "presence_penalty": 0.0, "frequency_penalty": 0.0, "min_p": 0.0, "typical_p": 1.0,
                   "ignore_eos": False}
        return {field.name: given[field.name] if field.name in given else
                tf.fill([batch], tf.constant(neutral[field.name], field.dtype)) for field in ROW_FIELDS}

    def beam_text(self, prompt):
        """The `beam` signature: the num_return_sequences best beams [B, R] and their scores."""
        batch = tf.size(prompt)
        ids, mask, padded_batch, first_slot = self._pad(self._tokenize(prompt), batch)
        loop_params = params.beam_params(
            tf.ones([padded_batch]), self.num_beams, max_new_tokens=self.max_new_tokens,
            first_slot=first_slot, eos_token_ids=self.lm.eos_token_ids, pad_token_id=self.lm.pad_token_id,
            vocab_size=self.lm.vocab_size)
        out = self._program("beam", ids, mask, loop_params)
        count = batch * self.num_return_sequences
        completion = self._completion_text(out["new_tokens"][:count], out["num_generated"][:count])
        shape = [batch, self.num_return_sequences]
        repeated_prompt = tf.repeat(prompt, self.num_return_sequences)
        return {
            "text": tf.reshape(tf.strings.join([repeated_prompt, completion]), shape),
            "completion": tf.reshape(completion, shape),
            "scores": tf.reshape(out["scores"][:count], shape),
            "num_tokens": tf.reshape(out["num_generated"][:count], shape),
        }

    def generate_ids(self, input_ids, attention_mask):
        """The `generate_ids` signature: greedy on token ids the client made itself."""
        batch = tf.shape(input_ids)[0]
        ragged = tf.ragged.boolean_mask(input_ids, attention_mask > 0)[:, -self.max_prompt_tokens:]
        ids, mask, padded_batch, first_slot = self._pad(ragged, batch)
        loop_params = self._sampling_params(self._rows(batch), padded_batch, first_slot)
        out = self._program("sample", ids, mask, loop_params)
        new_tokens = out["new_tokens"][:batch]
        return {
            "sequences": tf.concat([input_ids, new_tokens], axis=1),
            "scores": out["log_probs"][:batch],
            "num_tokens": out["num_generated"][:batch],
        }

    def signatures(self, strategies: Sequence[str], on_traced=None) -> dict:
        """Concrete functions for `tf.saved_model.save(signatures=...)`; `on_traced(name)` after each."""
        text = tf.TensorSpec([None], tf.string, name="prompt")
        done = on_traced or (lambda name: None)
        sigs = {"serving_default": tf.function(self.greedy_text).get_concrete_function(text)}
        done("serving_default")
        sigs["generate_ids"] = tf.function(self.generate_ids).get_concrete_function(
            tf.TensorSpec([None, None], tf.int32, name="input_ids"),
            tf.TensorSpec([None, None], tf.int32, name="attention_mask"),
        )
        done("generate_ids")
        if "sample" in strategies:
            sigs["generate"] = tf.function(self.generate_text).get_concrete_function(
                text, *self._per_row_specs())
            done("generate")
        if "beam" in strategies:
            sigs["beam"] = tf.function(self.beam_text).get_concrete_function(text)
            done("beam")
        if "stop" in strategies:
            sigs["generate_stop"] = tf.function(self.generate_stop_text).get_concrete_function(
                text, *self._per_row_specs(), tf.TensorSpec([None, None], tf.string, name="stop"))
            done("generate_stop")
        if "logprobs" in strategies:
            self._token_texts = tf.Variable(self._token_texts_of(), trainable=False, name="token_texts")
            sigs["generate_logprobs"] = tf.function(self.generate_logprobs_text).get_concrete_function(
                text, *self._per_row_specs(), tf.TensorSpec([None], tf.int32, name="logprobs"))
            done("generate_logprobs")
        if "speculative" in strategies:
            sigs["greedy_speculative"] = tf.function(self.greedy_speculative_text).get_concrete_function(text)
            done("greedy_speculative")
        return sigs

    @staticmethod
    def _per_row_specs():
        return (
            tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([None], tf.bool, name="do_sample"),
            tf.TensorSpec([None], tf.float32, name="temperature"),
            tf.TensorSpec([None], tf.int32, name="top_k"),
            tf.TensorSpec([None], tf.float32, name="top_p"),
            tf.TensorSpec([None], tf.float32, name="repetition_penalty"),
            tf.TensorSpec([None], tf.int64, name="seed"),
        )
