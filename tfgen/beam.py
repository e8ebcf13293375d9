"""Batch generation with Apache Beam: RunInference over a tfgen model or an exported SavedModel.

A pipeline reads JSON lines (`{"prompt": ..., "id": ..., "temperature": ...}`), checks each one,
generates for the good ones with `RunInference` and writes two outputs: results (the input's
fields plus `text`, `completion`, `num_tokens`) and dead letters (`{"error", "line"}`) for lines
that are not JSON, have no prompt or hold a parameter out of range. Every input line lands in
exactly one of them (blank lines are skipped and counted). The same pipeline runs on the
DirectRunner/Prism locally and unchanged on Dataflow, Flink or Spark.

Failures while generating (see `_Handler.run_inference`): a batch whose model call fails with a
transient error (`TransientError`, connection errors, timeouts, TensorFlow's
Unavailable, ResourceExhausted, DeadlineExceeded, Aborted) is called again, up to `retries` more
times with a doubling delay; a batch that still fails, or fails any other way, runs row by row,
so only the rows that fail on their own become dead letters, each with its error. No exception
leaves the handler, so a runner never replays a bundle and a row is never written twice.
Counters (Beam Metrics, namespace "tfgen"): ok + dead_letter + blank = the input lines; retries
counts the repeated calls.

Needs the optional extra: `pip install "tfgen[beam]"`.

Example:
    >>> import apache_beam as beam
    >>> from tfgen.beam import GenerateText, TFGenModelHandler
    >>> with beam.Pipeline() as p:
    ...     out = (p | beam.Create(['{"prompt": "Hello", "id": 1}'])
    ...              | GenerateText(TFGenModelHandler("random:tiny"), max_new_tokens=8))
    ...     out["results"] | beam.Map(print)
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence

from tfgen.config import PER_ROW_FIELDS, GenerationConfig, stop_list
from tfgen.decoding.params import BATCH_BUCKETS, row_seeds
from tfgen.export.serving_files import METADATA_FILE
from tfgen.generator import Completion, cut_at_stop

try:
    import apache_beam as beam
    from apache_beam.ml.inference.base import ModelHandler, RunInference
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
except ImportError as error:  # the core package stays importable without Beam
    raise ImportError(f"tfgen.beam needs Apache Beam ({error}); install it with: pip install 'tfgen[beam]'") \
        from None

NAMESPACE = "tfgen"  # Beam metrics: tfgen/ok, dead_letter, blank, retries, and RunInference's own
COUNTERS = ("ok", "dead_letter", "blank", "retries")
RESULT_FIELDS = ("text", "completion", "num_tokens")
PARAMETERS = tuple(f.name for f in dataclasses.fields(GenerationConfig))
# Settings that are one value per `complete` call: rows that differ in them run as separate calls.
_CALL_FIELDS = tuple(name for name in PARAMETERS if name not in PER_ROW_FIELDS and name != "stop")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}
# Settings whose one value is itself a list or a mapping (JSON keys of logit_bias are strings).
_STRUCTURED = ("stop", "logit_bias", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
               "eos_token_id")


class TransientError(RuntimeError):
    """A failure worth retrying (a model server briefly away, a device busy): raise it from a
    handler's model call to have the batch called again."""


def _transient_errors() -> tuple:
    """The exceptions that make a batch's call be retried (TensorFlow's, when it is loaded)."""
    errors = (TransientError, ConnectionError, TimeoutError)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        errors += (tf.errors.UnavailableError, tf.errors.ResourceExhaustedError,
                   tf.errors.DeadlineExceededError, tf.errors.AbortedError)
    return errors


# -- rows -----------------------------------------------------------------------------------------
def parse_row(line: Any, defaults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Turn one input line into an element for the model handler, or a dead letter.

    Args:
        line: a JSON text line (str or UTF-8 bytes), or an already parsed dict.
        defaults: generation parameters for rows that do not set them.

    Returns:
        `{"fields": row, "params": settings, "line": text}` for a good row (params: the defaults
        updated by the row's own parameters; a JSON null means "not set"), `{"error": reason,
        "line": text}` for a bad one, or None for a blank line.
    """
    if isinstance(line, dict):
        row, text = line, json.dumps(line, ensure_ascii=False, default=str)
    else:
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as error:
                return dead_letter(line.decode("utf-8", errors="replace"), f"not UTF-8: {error}")
        text = line.lstrip("\ufeff")
        if not text.strip():
            return None
        try:
            row = json.loads(text)
        except ValueError as error:
            return dead_letter(text, f"not JSON: {error}")
        if not isinstance(row, dict):
            return dead_letter(text, f"not a JSON object: got a JSON {type(row).__name__}")
    if "prompt" not in row:
        return dead_letter(text, "no prompt: the object has no 'prompt' field")
    if not isinstance(row["prompt"], str):
        return dead_letter(text, f"prompt must be a string, got {type(row['prompt']).__name__}")
    params = dict(defaults or {})
    params.update({name: row[name] for name in PARAMETERS if row.get(name) is not None})
    try:
        for name, value in params.items():
            if isinstance(value, (list, dict)) and name not in _STRUCTURED:
                raise TypeError(f"{name} takes one value per row, got {value!r}")
        if isinstance(params.get("logit_bias"), dict):
            params["logit_bias"] = _int_keys(params["logit_bias"])
        GenerationConfig(**params).validate()
    except (TypeError, ValueError) as error:
        return dead_letter(text, str(error))
    return {"fields": row, "params": params, "line": text}


def _int_keys(bias: dict) -> dict:
    """logit_bias as JSON writes it ({"50256": -100}) -> {50256: -100}."""
    try:
        return {int(token): value for token, value in bias.items()}
    except (TypeError, ValueError):
        raise TypeError(f"logit_bias keys must be token ids, got {sorted(bias)!r}") from None


def dead_letter(line: str, error: str) -> Dict[str, str]:
    """A dead-letter record: the input line as read and why it was not generated."""
    return {"error": error, "line": line}


def _result(element: Dict[str, Any], completions: Sequence[Completion]) -> dict:
    """The output row: the input's fields plus text, completion, num_tokens, and logprobs when the
    row asked for them (one {"id", "text", "logprob", "top": [...]} per token); lists when the
    row asked for num_return_sequences > 1."""
    out = dict(element["fields"])
    single = len(completions) == 1
    fields = [("text", [c.text for c in completions]), ("completion", [c.completion for c in completions]),
              ("num_tokens", [c.num_tokens for c in completions])]
    if completions[0].logprobs is not None:
        fields.append(("logprobs", [[dataclasses.asdict(t) for t in c.logprobs] for c in completions]))
    for name, values in fields:
        out[name] = values[0] if single else values
    return out


# -- model handlers -------------------------------------------------------------------------------
class _Handler(ModelHandler):
    """What both handlers share: batch sizes, metrics namespace, byte counts, and `run_inference`.

    `run_inference` asks `_check(element, model)` for each element: a reason (the element becomes
    a dead letter) or a group key. Each group runs as one `_run(model, elements, key)` call (see
    `_isolating`): a transient error is retried `retries` times, starting `retry_delay` seconds
    apart; a call that fails for good runs the group's elements one by one so only the bad ones
    become dead letters.
    """

    def __init__(self, max_batch_size: int, min_batch_size: Optional[int], retries: int = 2,
                 retry_delay: float = 0.5):
        low = max_batch_size if min_batch_size is None else min_batch_size
        if not 1 <= low <= max_batch_size:
            raise ValueError(f"min_batch_size must be in 1..max_batch_size={max_batch_size}, got {low}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not isinstance(retry_delay, (int, float)) or retry_delay < 0:
            raise ValueError(f"retry_delay must be a number of seconds >= 0, got {retry_delay!r}")
        self._batch = {"min_batch_size": low, "max_batch_size": max_batch_size}
        self._retry = _Retry(retries, float(retry_delay))
        super().__init__(**self._batch)

    def batch_elements_kwargs(self):
        return dict(self._batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(len(element["fields"]["prompt"].encode("utf-8")) for element in batch)

    def run_inference(self, batch: Sequence[dict], model, inference_args=None) -> Iterable[dict]:
        """One output per element, in order: a result row or a dead letter."""
        outputs: List[Optional[dict]] = [None] * len(batch)
        groups: Dict[Any, List[int]] = {}
        for index, element in enumerate(batch):
            try:
                key = self._check(element, model)
            except (TypeError, ValueError) as error:
                outputs[index] = dead_letter(element["line"], str(error))
                continue
            groups.setdefault(key, []).append(index)
        for key, indices in groups.items():
            elements = [batch[i] for i in indices]
            done = _isolating(lambda rows, key=key: self._run(model, rows, key), elements, self._errors(),
                              self._retry)
            for index, output in zip(indices, done):
                outputs[index] = output
        return outputs

    def _check(self, element: dict, model) -> Any:
        """The element's group key; raises TypeError/ValueError (the reason) for a row to refuse."""
        raise NotImplementedError

    def _run(self, model, elements: List[dict], key) -> List[dict]:
        """One output per element of a group, with one call of the model."""
        raise NotImplementedError

    def _errors(self) -> tuple:
        """The exceptions of `_run` that mean bad input (run the group's elements one by one)."""
        return (ValueError, TypeError)


class _Retry(NamedTuple):
    """How a handler retries a model call that failed with a transient error."""

    retries: int  # calls after the first
    delay: float  # seconds before the first retry; doubled before each next one

    def call(self, run, elements: List[dict]) -> List[dict]:
        """run(elements), called again on a transient error; the last error propagates."""
        transient = _transient_errors()
        for attempt in range(self.retries + 1):
            try:
                return run(elements)
            except transient:
                if attempt == self.retries:
                    raise
                Metrics.counter(NAMESPACE, "retries").inc()
                time.sleep(self.delay * 2 ** attempt)


def _isolating(run, elements: List[dict], bad_input: tuple, retry: _Retry) -> List[dict]:
    """run(elements) -> outputs, retried on transient errors. When the call still fails, each
    element runs alone so only the ones that fail by themselves become dead letters: with the
    message of a bad-input error (`bad_input`), else with the exception's type and message (and
    the attempts, for a transient error retried to the end)."""
    try:
        return retry.call(run, elements)
    except Exception as error:  # noqa: BLE001 - a failing row becomes a dead letter, never a lost bundle
        if len(elements) > 1:
            return [out for element in elements for out in _isolating(run, [element], bad_input, retry)]
        message = " ".join((getattr(error, "message", None) or str(error)).split())
        if not isinstance(error, bad_input):
            message = f"{type(error).__name__}: {message}"
            if isinstance(error, _transient_errors()):
                message += f" (still failing after {retry.retries + 1} attempts)"
        return [dead_letter(elements[0]["line"], message)]


def _call_settings(params: Dict[str, Any]) -> Dict[str, Any]:
    """The settings `TextGenerator.complete` takes once per call (beam search: max_new_tokens and
    min_new_tokens too); the rest are per row."""
    settings = {name: params.get(name, _DEFAULTS[name]) for name in _CALL_FIELDS}
    if settings["num_beams"] > 1:
        for name in ("max_new_tokens", "min_new_tokens"):
            settings[name] = params.get(name, _DEFAULTS[name])
    return settings


class TFGenModelHandler(_Handler):
    """RunInference handler that generates with a live tfgen model (`tfgen.load(spec)`).

    Each worker process loads the model once (RunInference's shared handle) and reuses it for
    every bundle. Elements come from `parse_row`; a batch runs as one `TextGenerator.complete`
    call per group of rows that agree on the settings `complete` takes once per call (do_sample,
    num_beams, min_new_tokens, ..., stop): temperature, top_k, top_p, repetition_penalty,
    max_new_tokens and seed stay per row. Rows whose prompt plus max_new_tokens exceed the
    model's context become dead letters before anything runs.

    Args:
        model: the model spec, as `tfgen.load` takes it (directory, hub id, random:NAME).
        seed: initialisation seed of random models (the same weights in every worker).
        xla: compile decoding with XLA.
        local_files_only: never try the network for hub ids.
        max_batch_size: rows per batch, one of the engine's batch buckets (default 8).
        min_batch_size: smallest batch Beam may form; default max_batch_size, so every full
            batch hits the same compiled program (a bundle's last batch is padded up to a bucket).
        retries: how many more times a batch whose call failed with a transient error
            (`TransientError`, connection errors, timeouts, TensorFlow's Unavailable,
            ResourceExhausted, DeadlineExceeded, Aborted) is called before it runs row by row.
        retry_delay: seconds before the first retry, doubled before each next one.

    Example:
        >>> handler = TFGenModelHandler("random:tiny", max_batch_size=4)
    """

    def __init__(self, model: Optional[str] = None, *, seed: int = 0, xla: bool = True,
                 local_files_only: bool = False, max_batch_size: int = 8,
                 min_batch_size: Optional[int] = None, retries: int = 2, retry_delay: float = 0.5):
        if max_batch_size not in BATCH_BUCKETS:
            raise ValueError(f"max_batch_size must be one of the engine's batch buckets "
                             f"{', '.join(map(str, BATCH_BUCKETS))}; got {max_batch_size}")
        super().__init__(max_batch_size, min_batch_size, retries, retry_delay)
        self._spec = model
        self._seed = seed
        self._xla = xla
        self._local_files_only = local_files_only

    def load_model(self):
        import tfgen

        return tfgen.load(self._spec, seed=self._seed, xla=self._xla, local_files_only=self._local_files_only)

    def _check(self, element: dict, model) -> tuple:
        params = element["params"]
        config = GenerationConfig(**params)
        config.validate(vocab_size=model.vocab_size)
        config.check_fits(len(model.prompt_ids(element["fields"]["prompt"])), model.lm.max_positions)
        # Rows that agree on every per-call setting (lists and mappings included) share a call.
        settings = json.dumps(_call_settings(params), sort_keys=True, default=str)
        return settings, tuple(stop_list(params.get("stop")))

    def _run(self, model, elements: List[dict], key: tuple) -> List[dict]:
        settings, stop = _call_settings(elements[0]["params"]), list(key[1])  # the group shares them
        rows = {name: [element["params"].get(name, _DEFAULTS[name]) for element in elements]
                for name in PER_ROW_FIELDS if name not in settings}
        completions = model.complete([element["fields"]["prompt"] for element in elements],
                                     **settings, **rows, stop=stop or None)
        copies = settings["num_return_sequences"]
        return [_result(element, completions[row * copies:(row + 1) * copies])
                for row, element in enumerate(elements)]


# Settings the exported `generate` signature does not take: rows that set them to anything but
# the default become dead letters there.
_SAVED_MODEL_FIXED = ("min_new_tokens", "no_repeat_ngram_size", "num_beams", "num_return_sequences",
                      "eos_token_id", "pad_token_id", "presence_penalty", "frequency_penalty", "min_p",
                      "typical_p", "logit_bias", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                      "ignore_eos")


class SavedModelHandler(_Handler):
    """RunInference handler that runs an export's `generate` signature (`tf.saved_model.load` in
    each worker) instead of a live model.

    Every parameter of the signature is per row (prompt, max_new_tokens, do_sample, temperature,
    top_k, top_p, repetition_penalty, seed), so a batch is one call. The export's prompt policy
    holds: prompts longer than its max_prompt_tokens keep their last tokens. Rows that leave
    max_new_tokens unset get the export's limit (as `serving_default` does); rows above the limit,
    or that ask for what the signature does not take (beam search, num_return_sequences,
    min_new_tokens, no_repeat_ngram_size, eos/pad ids), become dead letters. The limits come
    from the export's `assets.extra/tfgen_export.json`.

    Args:
        path: the version directory, e.g. "saved_models/gpt2/1" (exported with the "sample"
            strategy), readable by TensorFlow on every worker.
        max_batch_size: rows per batch; default the largest of the export's batch buckets.
        min_batch_size: default max_batch_size.
        retries, retry_delay: as in `TFGenModelHandler`.

    Raises:
        ValueError: the export has no readable tfgen_export.json, or no `generate` signature.
    """

    def __init__(self, path: str, *, max_batch_size: Optional[int] = None,
                 min_batch_size: Optional[int] = None, retries: int = 2, retry_delay: float = 0.5):
        if not isinstance(path, str) or not path:
            raise TypeError("path must be the SavedModel's version directory")
        metadata = _export_metadata(path)
        if "generate" not in metadata["signatures"]:
            raise ValueError(_no_generate(path))
        if max_batch_size is None:
            max_batch_size = max(metadata["batch_buckets"])
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        super().__init__(max_batch_size, min_batch_size, retries, retry_delay)
        self._path = path
        self.max_new_tokens = int(metadata["max_new_tokens"])

    def load_model(self):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  registers the tokenizer's op before loading

        loaded = tf.saved_model.load(self._path)
        if "generate" not in loaded.signatures:
            raise ValueError(_no_generate(self._path))
        return _SavedModel(loaded, loaded.signatures["generate"])

    def _check(self, element: dict, model) -> None:
        params = element["params"]
        unsupported = [name for name in _SAVED_MODEL_FIXED
                       if params.get(name, _DEFAULTS[name]) != _DEFAULTS[name]]
        if unsupported:
            raise ValueError(f"the SavedModel's generate signature does not take {', '.join(unsupported)}; "
                             "use a live model (--model) for these")
        max_new = params.get("max_new_tokens", self.max_new_tokens)
        if max_new > self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be <= {self.max_new_tokens} (the export's limit), "
                             f"got {max_new}")
        return None  # every row takes the same call

    def _errors(self) -> tuple:
        import tensorflow as tf

        return (tf.errors.InvalidArgumentError, ValueError)

    def _run(self, model, elements: List[dict], key: None) -> List[dict]:
        import tensorflow as tf

        def column(name, dtype, default):
            return tf.constant([e["params"].get(name, default) for e in elements], dtype)

        out = model.generate(
            prompt=tf.constant([e["fields"]["prompt"] for e in elements]),
            max_new_tokens=column("max_new_tokens", tf.int32, self.max_new_tokens),
            do_sample=column("do_sample", tf.bool, False),
            temperature=column("temperature", tf.float32, _DEFAULTS["temperature"]),
            top_k=column("top_k", tf.int32, _DEFAULTS["top_k"]),
            top_p=column("top_p", tf.float32, _DEFAULTS["top_p"]),
            repetition_penalty=column("repetition_penalty", tf.float32, _DEFAULTS["repetition_penalty"]),
            seed=tf.constant(row_seeds([e["params"].get("seed") for e in elements], len(elements))),
        )
        results = []
        texts, counts = out["completion"].numpy(), out["num_tokens"].numpy()
        for element, text, count in zip(elements, texts, counts):
            stops = stop_list(element["params"].get("stop"))
            completion = cut_at_stop(text.decode("utf-8", errors="replace"), stops)
            prompt = element["fields"]["prompt"]
            results.append(_result(element, [Completion(prompt, completion, int(count))]))
        return results


@dataclasses.dataclass
class _SavedModel:
    loaded: Any  # keeps the variables alive
    generate: Any


def _export_metadata(path: str) -> Dict[str, Any]:
    """The export's tfgen_export.json (limits, signatures), read with TensorFlow's file system."""
    import tensorflow as tf

    target = os.path.join(path, METADATA_FILE)
    try:
        with tf.io.gfile.GFile(target, "r") as handle:
            metadata = json.loads(handle.read())
        limits = {"max_new_tokens": int(metadata["max_new_tokens"]),
                  "batch_buckets": [int(size) for size in metadata["batch_buckets"]],
                  "signatures": list(metadata["signatures"])}
        if not limits["batch_buckets"]:
            raise ValueError("no batch_buckets")
    except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError) as error:
        reason = getattr(error, "message", None) or str(error)
        raise ValueError(f"cannot read the export's metadata {target} ({reason}); is {path} a tfgen "
                         "SavedModel version directory? Re-export the model with this tfgen "
                         "(tfgen export) to write it") from None
    return limits


def _no_generate(path: str) -> str:
    return f"{path} has no 'generate' signature; export it with the 'sample' strategy"


# -- transforms -----------------------------------------------------------------------------------
class _Parse(beam.DoFn):
    def __init__(self, defaults):
        self._defaults = defaults
        self._blank = Metrics.counter(NAMESPACE, "blank")

    def process(self, line):
        element = parse_row(line, self._defaults)
        if element is None:
            self._blank.inc()
        elif "error" in element:
            yield beam.pvalue.TaggedOutput("dead_letters", element)
        else:
            yield element


def _route(output):
    return beam.pvalue.TaggedOutput("dead_letters", output) if "error" in output else output


class GenerateText(beam.PTransform):
    """Lines in (JSON text, bytes or dicts), generated rows and dead letters out.

    Returns a dict of two PCollections: "results" (dicts: the input's fields plus `text`,
    `completion`, `num_tokens`) and "dead_letters" (dicts: `error`, `line`). Every non-blank
    input line ends up in exactly one of them; the counters tfgen/ok, tfgen/dead_letter and
    tfgen/blank say how many went where.

    Args:
        handler: a `TFGenModelHandler` or `SavedModelHandler`.
        progress_path: a local file that gets one byte per finished line (a local progress bar
            polls it; see `run_batch`). Leave None on remote runners.
        **defaults: generation parameters (GenerationConfig fields) for rows that do not set them.

    Example:
        >>> out = lines | GenerateText(TFGenModelHandler("gpt2"), max_new_tokens=32, do_sample=True)
        >>> out["results"] | beam.Map(json.dumps) | beam.io.WriteToText("results.jsonl")
    """

    def __init__(self, handler: ModelHandler, progress_path: Optional[str] = None, **defaults):
        super().__init__()
        config = GenerationConfig.from_any(None, **defaults)  # unknown names: TypeError here
        config.validate()
        self._handler = handler
        self._defaults = {name: value for name, value in defaults.items() if value is not None}
        self._progress_path = progress_path

    def expand(self, lines):
        parsed = lines | "Parse" >> beam.ParDo(_Parse(self._defaults)).with_outputs(
            "dead_letters", main="rows")
        generated = (parsed.rows
                     | "Generate" >> RunInference(self._handler)
                     | "Route" >> beam.Map(_route).with_outputs("dead_letters", main="results"))
        dead = (parsed.dead_letters, generated.dead_letters) | "DeadLetters" >> beam.Flatten()
        return {
            "results": generated.results | "CountOk" >> beam.ParDo(_Tally("ok", self._progress_path)),
            "dead_letters": dead | "CountDead" >> beam.ParDo(_Tally("dead_letter", self._progress_path)),
        }


class _Tally(beam.DoFn):
    """Counts the rows that reached an output, and ticks the local progress file."""

    def __init__(self, name: str, progress_path: Optional[str]):
        self._name = name
        self._counter = Metrics.counter(NAMESPACE, name)
        self._progress_path = progress_path

    def setup(self):
        # O_APPEND writes of one byte are atomic, so several worker processes can share the file.
        self._fd = os.open(self._progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) \
            if self._progress_path else None

    def process(self, element):
        self._counter.inc()
        if self._fd is not None:
            os.write(self._fd, b".")
        yield element

    def teardown(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


def _dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


class GenerateJsonl(beam.PTransform):
    """The whole file-to-file job: read JSON lines, `GenerateText`, write results and dead letters.

    Args:
        input: a file or glob the runner can read (local, gs://, ...).
        output, dead_letter: output files; with num_shards=1 (default) exactly these names.
        handler, progress_path, **defaults: as in `GenerateText`.
        num_shards: 1 writes one file; 0 lets the runner choose (names OUTPUT-SSSSS-of-NNNNN).
    """

    def __init__(self, input: str, output: str, dead_letter: str, handler: ModelHandler,
                 progress_path: Optional[str] = None, num_shards: int = 1, **defaults):
        super().__init__()
        self._input, self._output, self._dead_letter = input, output, dead_letter
        self._generate = GenerateText(handler, progress_path=progress_path, **defaults)
        self._num_shards = num_shards

    def expand(self, pipeline):
        from apache_beam import coders

        lines = pipeline | "Read" >> beam.io.ReadFromText(self._input, coder=coders.BytesCoder())
        out = lines | "GenerateText" >> self._generate
        single = dict(num_shards=1, shard_name_template="") if self._num_shards == 1 else \
            dict(num_shards=self._num_shards)
        written = out["results"] | "Results" >> beam.Map(_dumps) | "WriteResults" >> \
            beam.io.WriteToText(self._output, **single)
        dead = out["dead_letters"] | "Dead" >> beam.Map(_dumps) | "WriteDeadLetters" >> \
            beam.io.WriteToText(self._dead_letter, **single)
        return {"results": written, "dead_letters": dead}


# -- running locally with a progress bar ------------------------------------------------------------
_LOCAL_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PrismRunner",
                  "FnApiRunner", None)


def run_batch(input: str, output: str, handler: ModelHandler, *, dead_letter: Optional[str] = None,
              pipeline_args: Optional[Sequence[str]] = None, progress: bool = True, num_shards: int = 1,
              **defaults) -> Dict[str, int]:
    """Run `GenerateJsonl` as a pipeline and wait for it.

    On a local runner (DirectRunner, Prism) a progress bar on stderr counts finished lines
    against the number of non-blank input lines. Remote runners show the same counters in their
    own UI.

    Args:
        input, output, handler, num_shards, **defaults: as in `GenerateJsonl`.
        dead_letter: default OUTPUT.dead.jsonl (OUTPUT without a .jsonl suffix).
        pipeline_args: Beam pipeline options as command-line flags, e.g.
            ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"].
        progress: show the progress bar (local runners only).

    Returns:
        {"ok": rows generated, "dead_letter": rows in the dead-letter file, "blank": blank lines},
        and "retries" (model calls repeated after a transient error) when there were any.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(list(pipeline_args or []))
    runner = options.view_as(StandardOptions).runner
    local = runner in _LOCAL_RUNNERS or str(runner).endswith(("DirectRunner", "PrismRunner"))
    dead_letter = dead_letter or default_dead_letter_path(output)
    tracker = _Progress(input) if progress and local else None
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | GenerateJsonl(input, output, dead_letter, handler,
                                 progress_path=tracker.path if tracker else None, num_shards=num_shards,
                                 **defaults)
    try:
        if tracker:
            tracker.start()
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        if tracker:
            tracker.stop()
    return counters(result)


def default_dead_letter_path(output: str) -> str:
    """results.jsonl -> results.dead.jsonl; anything else gets .dead.jsonl appended."""
    base = output[:-len(".jsonl")] if output.endswith(".jsonl") else output
    return base + ".dead.jsonl"


def counters(result) -> Dict[str, int]:
    """tfgen/ok, tfgen/dead_letter and tfgen/blank of a finished pipeline, and tfgen/retries when
    any call was retried."""
    counts = {name: 0 for name in COUNTERS}
    for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name = metric.key.metric.name
        if name in counts:
            value = metric.committed if metric.committed is not None else metric.attempted
            counts[name] += int(value or 0)
    if not counts["retries"]:
        del counts["retries"]
    return counts


class _Progress:
    """A tqdm bar fed by the one-byte-per-line progress file the workers append to."""

    def __init__(self, input: str):
        handle, self.path = tempfile.mkstemp(prefix="tfgen-progress-", suffix=".txt")
        os.close(handle)
        self._total = _count_lines(input)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._done.set()
        self._thread.join()
        try:
            os.remove(self.path)
        except OSError:
            pass

    def _poll(self):
        from tqdm import tqdm

        with tqdm(total=self._total, unit="line", desc="tfgen batch", file=sys.stderr,
                  dynamic_ncols=True) as bar:
            while True:
                finished = self._done.wait(0.5)
                done = os.path.getsize(self.path)
                if done > bar.n:
                    bar.update(done - bar.n)
                if finished:
                    return


def _count_lines(path: str) -> Optional[int]:
    """Non-blank lines of a local input file (None for globs and remote paths)."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


__all__ = ["GenerateText", "GenerateJsonl", "TFGenModelHandler", "SavedModelHandler", "run_batch",
           "parse_row", "TransientError",
           "counters", "default_dead_letter_path", "NAMESPACE"]
