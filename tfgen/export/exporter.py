"""`export_saved_model` and `graph_module`: a TextGenerator as a SavedModel in TF Serving's layout.

The export checks its arguments, builds the generation module (`graph_module`, which checks the
limits against the model), and only then writes: it traces and saves the signatures to a
temporary directory beside the versions, writes the warmup records and metadata, validates the
result in a fresh process (tfgen/export/validation.py) and renames it into place.

Each program is compiled once: this process traces and saves but runs none of the export's
programs; the validator, the first process to run them, compiles each into the export's own
persistent XLA cache (`VERSION/assets.extra/xla_cache`), which later starts with the same settings
(`tfgen validate`, TF Serving through serve.sh's warm start) load instead of compiling.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from typing import List, Optional, Sequence

from tfgen.config import check_int
from tfgen.export import serving_files
from tfgen.export.validation import XLA_CACHE, expected_outputs, run_validation

DEFAULT_STRATEGIES = ("greedy", "sample", "beam")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# What a generator must have (a duck-typed check: this package does not import tfgen.generator).
_GENERATOR_PARTS = ("engine", "lm", "tokenizer", "token_tables")


class ExportError(RuntimeError):
    """The export failed; nothing was left in the target directory."""


def next_version(model_dir: str) -> int:
    """1 + the largest integer version directory in model_dir (1 when there is none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(n) for n in os.listdir(model_dir)
                if n.isdigit() and os.path.isdir(os.path.join(model_dir, n))]
    return max(versions, default=0) + 1


class _Progress:
    """Step lines and a tqdm bar on stderr: one unit per traced signature, the save, the warmup
    records, each validation check (the fresh process reports them one by one) and the move."""

    def __init__(self, enabled: bool, name: str, total: int):
        self.started = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"export {name}", unit="step", file=sys.stderr,
                            dynamic_ncols=True, leave=True)

    def elapsed(self) -> str:
        return f"{time.perf_counter() - self.started:.1f} s"

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)

    def advance(self, units: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(units)

    def validation_line(self, line: str) -> None:
        """A line from the validator: each `[ok]`/`[FAIL]` check moves the bar."""
        self.log(line)
        checked = line.lstrip().startswith(("[ok]", "[FAIL]"))
        if checked and self.bar is not None and self.bar.n < self.bar.total - 1:
            self.advance()

    def complete(self) -> None:
        """Fill the bar (the validator may report fewer checks than estimated)."""
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def export_saved_model(generator, path: str, *, version: Optional[int] = None,
                       strategies: Sequence[str] = DEFAULT_STRATEGIES, max_prompt_tokens: int = 128,
                       max_new_tokens: int = 64, num_beams: int = 4, num_return_sequences: int = 1,
                       batch_buckets: Sequence[int] = (1, 8), prompt_buckets: Optional[Sequence[int]] = None,
                       xla: bool = True, overwrite: bool = False, validate: bool = True,
                       progress: bool = True) -> str:
    """Export `generator` to `path/VERSION` in TensorFlow Serving's layout.

    Args:
        generator: a `tfgen.TextGenerator`.
        path: the model directory, e.g. "saved_models/gpt2"; versions go inside it.
        version: the version number; default is the next integer.
        strategies: which decoding signatures to export besides greedy `serving_default` and
            `generate_ids`: "sample" adds `generate` (per-row parameters), "beam" adds `beam`,
            "stop" (not in the default) adds `generate_stop` (`generate` plus stop strings per row);
            "logprobs" (not in the default) adds `generate_logprobs` (`generate` plus per-token
            log-probabilities and top alternatives, `logprobs` per row); "speculative" (not in the
            default) adds `greedy_speculative` (greedy with prompt lookup speculation, the same
            text in fewer model passes).
        max_prompt_tokens: longer prompts are left-truncated to their last max_prompt_tokens tokens.
        max_new_tokens: the most new tokens per request (and the default of serving_default).
        num_beams, num_return_sequences: of the `beam` signature.
        batch_buckets: batch sizes the server compiles for (and TF Serving's allowed_batch_sizes).
        prompt_buckets: prompt lengths compiled for; default powers of two up to max_prompt_tokens
            (at most three, the last being max_prompt_tokens).
        xla: jit-compile the decoding loop (TF Serving then needs --xla_cpu_compilation_enabled=true on CPU).
        overwrite: replace an existing version directory.
        validate: run the fresh-process validation before the version is put in place.
        progress: print progress to stderr.

    Returns:
        The version directory.

    Raises:
        ValueError/TypeError: bad arguments (nothing is written).
        ExportError: tracing, saving or validation failed (nothing is left behind).

    Example:
        >>> import tfgen
        >>> gen = tfgen.load("random:tiny")
        >>> tfgen.export_saved_model(gen, "saved_models/tiny", max_new_tokens=16)
    """
    name, strategies = _check_arguments(path, version, strategies)
    version = next_version(path) if version is None else version
    target = os.path.join(path, str(version))
    if os.path.exists(target) and not overwrite:
        raise ValueError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    with _export_errors():
        module = graph_module(
            generator, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens,
            num_beams=num_beams, num_return_sequences=num_return_sequences,
            batch_buckets=batch_buckets, prompt_buckets=prompt_buckets, xla=xla)
    total = _progress_steps(module, strategies, validate)
    with contextlib.closing(_Progress(progress, name, total)) as steps, \
            _staging_directory(path, version) as staging, _export_errors():
        export_dir = os.path.join(staging, "model")
        signatures = _trace(module, strategies, steps)
        _save(module, signatures, generator, name, export_dir, steps)
        if validate:
            _validate(export_dir, generator, module.max_new_tokens, xla, steps)
        else:
            steps.log("[3/4] validation skipped")
        _move_into_place(export_dir, target, path, name, module.batch_buckets, steps)
    return target


def _progress_steps(module, strategies: Sequence[str], validate: bool) -> int:
    """The progress bar's units: signatures, the save, the warmup records, the validator's checks
    (load, op audit, warmup presence, one per warmup request, the request forms) and the move."""
    optional = ("sample", "beam", "stop", "logprobs")
    signature_count = 2 + sum(strategy in strategies for strategy in optional)
    warmup_count = len(module.batch_buckets) * len(module.prompt_buckets) * signature_count
    signature_count += "speculative" in strategies  # traced, but no warmup requests of its own
    return signature_count + 2 + (warmup_count + 6 if validate else 0) + 1


def _trace(module, strategies: Sequence[str], steps: _Progress) -> dict:
    """Step 1: the concrete functions of the exported signatures."""
    steps.log("[1/4] tracing signatures ...")
    signatures = module.signatures(strategies, on_traced=lambda _: steps.advance())
    module.exported_signatures = tuple(signatures)
    steps.log(f"      {', '.join(signatures)} ({steps.elapsed()})")
    return signatures


def _save(module, signatures: dict, generator, name: str, export_dir: str, steps: _Progress) -> None:
    """Step 2: the SavedModel, its warmup records and its metadata file."""
    import tensorflow as tf

    steps.log("[2/4] saving the SavedModel ...")
    tf.saved_model.save(module, export_dir, signatures=signatures)
    steps.advance()
    requests = serving_files.warmup_requests(module)
    serving_files.write_warmup(export_dir, name, requests)
    serving_files.write_metadata(export_dir, serving_files.export_metadata(module, generator, signatures))
    if module.xla:
        serving_files.write_platform_config(export_dir, module.batch_buckets)
    steps.advance()
    steps.log(f"      {len(requests)} warmup requests ({steps.elapsed()})")


def _validate(export_dir: str, generator, max_new_tokens: int, xla: bool, steps: _Progress) -> None:
    """Step 3: the fresh-process validation, against the engine's greedy texts; with XLA it
    compiles every warmed program into the export's own XLA cache."""
    steps.log("[3/4] validating in a fresh process (TF Serving's loader, warmup replay, REST/gRPC forms) ...")
    expected = expected_outputs(generator, max_new_tokens)
    cache_dir = os.path.join(export_dir, XLA_CACHE) if xla else None
    key = _executables_key(export_dir) if xla else None
    seeded = key is not None and _seed_executables(key, cache_dir)
    report = run_validation(export_dir, expected=expected, log=steps.validation_line, xla_cache=cache_dir,
                            write_cache=True)
    compiled = report.get("xla_cache", {}).get("compiled", 0)
    if key is not None and report["ok"] and (compiled or not seeded):
        _keep_executables(key, cache_dir)
    if not report["ok"]:
        failed = [c for c in report["checks"] if not c["ok"]]
        raise ExportError("validation failed: " + "; ".join(f"{c['check']}: {c['detail']}" for c in failed))


# -- the validator's executables, kept in tfgen's cache for the next export of the same graph -----
_EXPORTS = "exports"  # tfgen.cache section


def _executables_key(export_dir: str) -> dict:
    """What the validator's executables depend on: the export's function library, which is what XLA
    compiles (the rest of saved_model.pb, such as the saver's node names, changes from one export of
    the same model to the next), and the environment (tfgen, TensorFlow, CPU)."""
    from tensorflow.core.protobuf import saved_model_pb2

    from tfgen import cache

    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as handle:
        saved = saved_model_pb2.SavedModel.FromString(handle.read())
    functions = sorted(function.SerializeToString(deterministic=True) for graph in saved.meta_graphs
                       for function in graph.graph_def.library.function)
    sha = hashlib.sha256()
    for function in functions:
        sha.update(len(function).to_bytes(8, "little") + function)
    return dict(cache.environment(), kind="export-executables", library=sha.hexdigest())


def _seed_executables(key: dict, cache_dir: str) -> bool:
    """Put the executables of an earlier export of the same graph into this one's XLA cache;
    returns whether there were any."""
    from tfgen import cache

    entry = cache.read_entry(_EXPORTS, key)
    if entry is None:
        return False
    cache.link_files(entry.path, entry.files, cache_dir)
    return True


def _keep_executables(key: dict, cache_dir: str) -> None:
    """Store the export's executables under `key` (whole, replacing an older entry)."""
    from tfgen import cache

    try:
        names = sorted(name for name in os.listdir(cache_dir) if name.endswith(".pb"))
        files = {}
        for name in names:
            with open(os.path.join(cache_dir, name), "rb") as handle:
                files[name] = handle.read()
    except OSError:
        return  # the next export compiles again; it never fails this one
    if files:
        cache.write_entry(_EXPORTS, key, files)


def _move_into_place(export_dir: str, target: str, model_dir: str, name: str, batch_buckets: Sequence[int],
                     steps: _Progress) -> None:
    """Step 4: rename the version into place and write the operator files beside it."""
    steps.log("[4/4] moving into place ...")
    _swap_into_place(export_dir, target)
    cache_dir = os.path.join(target, XLA_CACHE)
    serving_files.write_operator_files(model_dir, name, batch_buckets,
                                       xla_cache=cache_dir if os.path.isdir(cache_dir) else None)
    steps.complete()
    steps.log(f"exported {target} ({steps.elapsed()})")


@contextlib.contextmanager
def _staging_directory(path: str, version: int):
    """A temporary directory beside the versions; removed afterwards, and `path` too if left empty."""
    os.makedirs(path, exist_ok=True)
    remove_stale_staging(path)
    staging = tempfile.mkdtemp(prefix=f"{_STAGING}{version}-{os.getpid()}-", dir=path)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(path)


# -- crash safety: what a killed export leaves behind ---------------------------------------------
_STAGING = ".tmp-"  # staging directories: .tmp-VERSION-PID-random (TF Serving skips non-numeric names)
_STALE_SECONDS = 3600  # a staging directory without a readable pid counts as abandoned after this


def _swap_into_place(export_dir: str, target: str) -> None:
    """Rename the finished version to `target`. An existing version (overwrite) is first renamed
    aside, never deleted in place, so a kill at any moment leaves the old version whole, no
    version, or the new one whole; the aside copy is removed after, or by the next export."""
    aside = None
    if os.path.exists(target):
        # .tmp-old-PID-random-VERSION: the pid says whether its export still runs, the version
        # where to put it back if that export was killed between the renames.
        aside = os.path.join(os.path.dirname(target), f"{_STAGING}old-{os.getpid()}-"
                             f"{uuid.uuid4().hex[:8]}-{os.path.basename(target)}")
        os.makedirs(aside)
        os.rename(target, os.path.join(aside, "version"))
    os.rename(export_dir, target)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def remove_stale_staging(model_dir: str) -> List[str]:
    """Remove the staging directories killed exports left in `model_dir`; returns their paths.

    A staging directory names the process that made it; it is stale when that process is gone (or,
    without a pid in its name, when it is older than an hour). Directories of exports still
    running, in this or another process, are kept.
    """
    from tfgen import cache

    removed = []
    try:
        names = os.listdir(model_dir)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(model_dir, name)
        if not name.startswith(_STAGING) or not os.path.isdir(path):
            continue
        parts = name[len(_STAGING):].split("-")
        pid = int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None
        if pid is not None:
            stale = pid != os.getpid() and not cache.process_alive(pid)
        else:
            try:
                stale = time.time() - os.path.getmtime(path) > _STALE_SECONDS
            except OSError:
                continue
        if stale:
            _restore_aside_version(path, model_dir)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _restore_aside_version(staging: str, model_dir: str) -> None:
    """An overwrite killed between its two renames left the old version aside: put it back."""
    aside = os.path.join(staging, "version")
    name = os.path.basename(staging)[len(_STAGING):].split("-")[-1]
    if os.path.isdir(aside) and name.isdigit() and not os.path.exists(os.path.join(model_dir, name)):
        os.rename(aside, os.path.join(model_dir, name))


@contextlib.contextmanager
def _export_errors():
    """Bad arguments stay ValueError/TypeError; any other failure becomes an ExportError."""
    try:
        yield
    except (ExportError, ValueError, TypeError):
        raise
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ExportError(f"export failed: {type(error).__name__}: {first_line}") from error


def _remove_if_empty(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
    except OSError:
        pass


def _check_arguments(path, version, strategies):
    """The export's own arguments; returns the model name and the strategies as a list."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError("path must be a directory path")
    name = os.path.basename(os.path.normpath(str(path)))
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    if version is not None:
        check_int("version", version, low=1)
    from tfgen.export.module import STRATEGIES

    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise ValueError(f"strategies must be a subset of {','.join(STRATEGIES)}, got {strategies!r}")
    return name, list(strategies)


def graph_module(generator, *, max_prompt_tokens: int = 128, max_new_tokens: int = 64, num_beams: int = 4,
                 num_return_sequences: int = 1, batch_buckets: Sequence[int] = (1, 8),
                 prompt_buckets: Optional[Sequence[int]] = None, xla: bool = True):
    """The exporter's `tf.Module` without saving it: generation as TensorFlow functions on tensors.

    Its methods take and return tensors and are graph functions: call them inside the caller's
    own `tf.function` (or a `tf.data` map, a Keras layer's call): `greedy_text(prompt)`,
    `generate_text(prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
    repetition_penalty, seed)` with one value per row, `beam_text(prompt)` and
    `generate_ids(input_ids, attention_mask)`, each returning the dict of the SavedModel signature
    of the same name (see the README's Signatures). The tokenizer runs in the graph and the
    decoding is the engine's compiled loop; arguments as in `export_saved_model`.
    """
    from tfgen.export.module import GenerationModule

    batch_buckets, prompt_buckets = _check_limits(
        generator, max_prompt_tokens, max_new_tokens, num_beams, num_return_sequences, batch_buckets,
        prompt_buckets)
    return GenerationModule(
        generator, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens, num_beams=num_beams,
        num_return_sequences=num_return_sequences, batch_buckets=batch_buckets, prompt_buckets=prompt_buckets,
        xla=xla)


def _check_limits(generator, max_prompt_tokens, max_new_tokens, num_beams, num_return_sequences,
                  batch_buckets, prompt_buckets):
    """The module's limits against the model's context; returns the sorted batch and prompt buckets."""
    if not all(hasattr(generator, part) for part in _GENERATOR_PARTS):
        raise TypeError(f"generator must be a tfgen.TextGenerator, got {type(generator).__name__}")
    check_int("max_prompt_tokens", max_prompt_tokens, low=1)
    check_int("max_new_tokens", max_new_tokens, low=1)
    check_int("num_beams", num_beams, low=1)
    check_int("num_return_sequences", num_return_sequences, low=1, high=num_beams)
    context = generator.lm.max_positions
    if max_prompt_tokens + max_new_tokens > context:
        raise ValueError(f"max_prompt_tokens + max_new_tokens = {max_prompt_tokens + max_new_tokens} exceeds "
                         f"the model's context of {context} tokens")
    batch_buckets = sorted(set(batch_buckets))
    for size in batch_buckets:
        check_int("batch_buckets", size, low=1, high=1024)
    if prompt_buckets is None:
        prompt_buckets = [b for b in (32, 64) if b < max_prompt_tokens][-2:] + [max_prompt_tokens]
    prompt_buckets = sorted(set(prompt_buckets))
    for size in prompt_buckets:
        check_int("prompt_buckets", size, low=1, high=max_prompt_tokens)
    if prompt_buckets[-1] != max_prompt_tokens:
        prompt_buckets.append(max_prompt_tokens)
    return batch_buckets, prompt_buckets
