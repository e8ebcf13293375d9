"""Export a TextGenerator as a SavedModel that TensorFlow Serving runs as it is.

`export_saved_model` traces the serving signatures (tfgen/export/module.py), saves them to a
temporary directory beside the target, writes the warmup records, validates the result in a
fresh process that has only TensorFlow and tensorflow-text (tfgen/export/serving_emulator.py),
and only then renames it into place as saved_models/NAME/VERSION. The operator files
(models.config, batching_parameters.txt, serve.sh) go beside the versions.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from tfgen.export import serving_files

DEFAULT_STRATEGIES = ("greedy", "sample", "beam")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ExportError(RuntimeError):
    """The export failed; nothing was left in the target directory."""


def next_version(model_dir: str) -> int:
    """1 + the largest integer version directory in model_dir (1 when there is none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(n) for n in os.listdir(model_dir) if n.isdigit() and os.path.isdir(os.path.join(model_dir, n))]
    return max(versions, default=0) + 1


class _Progress:
    """Step lines and a tqdm bar on stderr: one unit per traced signature, the save, the warmup
    records, each validation check (the fresh process reports them one by one) and the move."""

    def __init__(self, enabled: bool, name: str, total: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"export {name}", unit="step", file=sys.stderr,
                            dynamic_ncols=True, leave=True)

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
            "stop" (not in the default) adds `generate_stop` (`generate` plus stop strings per row).
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
    settings = _check_arguments(generator, path, version, strategies, max_prompt_tokens, max_new_tokens,
                                num_beams, num_return_sequences, batch_buckets, prompt_buckets)
    strategies, batch_buckets, prompt_buckets = settings
    version = next_version(path) if version is None else version
    target = os.path.join(path, str(version))
    if os.path.exists(target) and not overwrite:
        raise ValueError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    name = os.path.basename(os.path.normpath(path))
    signature_count = 2 + sum(strategy in strategies for strategy in ("sample", "beam", "stop"))
    # Validation: load, op audit, warmup presence, one check per warmup request, the request forms.
    warmup_count = len(batch_buckets) * len(prompt_buckets) * signature_count
    progress_bar = _Progress(progress, name, signature_count + 2 + (warmup_count + 6 if validate else 0) + 1)
    log = progress_bar.log
    os.makedirs(path, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=path)
    try:
        started = time.perf_counter()
        module = graph_module(
            generator, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens,
            num_beams=num_beams, num_return_sequences=num_return_sequences,
            batch_buckets=batch_buckets, prompt_buckets=prompt_buckets, xla=xla)
        log("[1/4] tracing signatures ...")
        signatures = module.signatures(strategies, on_traced=lambda _: progress_bar.advance())
        module.exported_signatures = tuple(signatures)
        log(f"      {', '.join(signatures)} ({time.perf_counter() - started:.1f} s)")
        log("[2/4] saving the SavedModel ...")
        import tensorflow as tf

        export_dir = os.path.join(staging, "model")
        tf.saved_model.save(module, export_dir, signatures=signatures)
        progress_bar.advance()
        requests = serving_files.warmup_requests(module)
        serving_files.write_warmup(export_dir, name, requests)
        serving_files.write_metadata(export_dir, serving_files.export_metadata(module, generator, signatures))
        progress_bar.advance()
        log(f"      {len(requests)} warmup requests ({time.perf_counter() - started:.1f} s)")
        if validate:
            log("[3/4] validating in a fresh process (TF Serving's loader, warmup replay, REST/gRPC forms) ...")
            expected = _expected_outputs(generator, max_new_tokens)
            report = run_validation(export_dir, expected=expected, log=progress_bar.validation_line)
            if not report["ok"]:
                failed = [c for c in report["checks"] if not c["ok"]]
                raise ExportError("validation failed: " + "; ".join(
                    f"{c['check']}: {c['detail']}" for c in failed))
        else:
            log("[3/4] validation skipped")
        log("[4/4] moving into place ...")
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(export_dir, target)
        serving_files.write_operator_files(path, name, batch_buckets)
        progress_bar.complete()
        log(f"exported {target} ({time.perf_counter() - started:.1f} s)")
        return target
    except ExportError:
        raise
    except (ValueError, TypeError):
        raise
    except KeyboardInterrupt:
        raise
    except Exception as error:
        raise ExportError(f"export failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") \
            from error
    finally:
        progress_bar.close()
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(path)


def _remove_if_empty(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
    except OSError:
        pass


def _expected_outputs(generator, max_new_tokens: int) -> dict:
    prompts = ["The theory of relativity is", "Hello, my name is", ""]
    texts = generator.generate(prompts, max_new_tokens=max_new_tokens)
    return {"prompts": prompts, "greedy_texts": texts}


def run_validation(path: str, expected: Optional[dict] = None, log=print, timeout: int = 3600) -> dict:
    """Validate an export in a fresh Python process that imports only TensorFlow and tensorflow-text.

    Returns the report dict (with "ok"); prints each check through `log`.
    """
    from tfgen.export import serving_emulator

    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, serving_emulator.__file__, path, "--report", os.path.join(scratch, "report.json")]
        if expected is not None:
            expected_file = os.path.join(scratch, "expected.json")
            with open(expected_file, "w", encoding="utf-8") as handle:
                json.dump(expected, handle)
            command += ["--expected", expected_file]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for line in process.stdout:
            log(line.rstrip())
        stderr = process.stderr.read()
        process.wait(timeout=timeout)
        report_file = os.path.join(scratch, "report.json")
        if not os.path.isfile(report_file):
            tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
            return {"path": path, "ok": False, "checks": [
                {"check": "validator process", "ok": False, "detail": tail[0]}]}
        with open(report_file, encoding="utf-8") as handle:
            return json.load(handle)


def _check_arguments(generator, path, version, strategies, max_prompt_tokens, max_new_tokens, num_beams,
                     num_return_sequences, batch_buckets, prompt_buckets):
    from tfgen.config import _check_int

    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError("path must be a directory path")
    name = os.path.basename(os.path.normpath(str(path)))
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    if version is not None:
        _check_int("version", version, low=1)
    return _check_limits(generator, strategies, max_prompt_tokens, max_new_tokens, num_beams,
                         num_return_sequences, batch_buckets, prompt_buckets)


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

    _, batch_buckets, prompt_buckets = _check_limits(
        generator, DEFAULT_STRATEGIES, max_prompt_tokens, max_new_tokens, num_beams, num_return_sequences,
        batch_buckets, prompt_buckets)
    return GenerationModule(
        generator, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens, num_beams=num_beams,
        num_return_sequences=num_return_sequences, batch_buckets=batch_buckets, prompt_buckets=prompt_buckets,
        xla=xla)


def _check_limits(generator, strategies, max_prompt_tokens, max_new_tokens, num_beams, num_return_sequences,
                  batch_buckets, prompt_buckets):
    from tfgen.config import _check_int
    from tfgen.generator import TextGenerator

    if not isinstance(generator, TextGenerator):
        raise TypeError(f"generator must be a tfgen.TextGenerator, got {type(generator).__name__}")
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    from tfgen.export.module import STRATEGIES

    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise ValueError(f"strategies must be a subset of {','.join(STRATEGIES)}, got {strategies!r}")
    _check_int("max_prompt_tokens", max_prompt_tokens, low=1)
    _check_int("max_new_tokens", max_new_tokens, low=1)
    _check_int("num_beams", num_beams, low=1)
    _check_int("num_return_sequences", num_return_sequences, low=1, high=num_beams)
    context = generator.lm.max_positions
    if max_prompt_tokens + max_new_tokens > context:
        raise ValueError(f"max_prompt_tokens + max_new_tokens = {max_prompt_tokens + max_new_tokens} exceeds "
                         f"the model's context of {context} tokens")
    batch_buckets = sorted(set(batch_buckets))
    for size in batch_buckets:
        _check_int("batch_buckets", size, low=1, high=1024)
    if prompt_buckets is None:
        prompt_buckets = [b for b in (32, 64) if b < max_prompt_tokens][-2:] + [max_prompt_tokens]
    prompt_buckets = sorted(set(prompt_buckets))
    for size in prompt_buckets:
        _check_int("prompt_buckets", size, low=1, high=max_prompt_tokens)
    if prompt_buckets[-1] != max_prompt_tokens:
        prompt_buckets.append(max_prompt_tokens)
    return list(strategies), batch_buckets, prompt_buckets
