"""Validate an export in a fresh process, as TF Serving would load it.

`run_validation` runs tfgen/export/serving_loader.py as a script in a new Python process that
imports only TensorFlow and tensorflow-text (the ops TF Serving links), forwards its check lines
and returns its JSON report. The exporter runs it before putting a version in place, with the
greedy texts of the in-process engine (`expected_outputs`) to compare against.

Compiling once: the validator is the first process that runs the export's programs, so the exporter
gives it the export's own persistent XLA cache (`XLA_CACHE` inside the version, written while it is
still being staged) and Grappler off, which makes the HLO, and so the cache keys, the same in every
process (serving_loader.py says why). Every later start with that directory and the same settings,
`tfgen validate` or a TF Serving replica (serve.sh), loads those executables instead of compiling.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Optional

# The validator script; run by path so that this process does not import what it imports.
LOADER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving_loader.py")
PROMPTS = ["The theory of relativity is", "Hello, my name is", ""]
# TensorFlow's persistent XLA cache shipped inside a version directory.
XLA_CACHE = os.path.join("assets.extra", "xla_cache")
SHIPPED = "shipped"  # run_validation's default: the export's own cache, read-only, when it has one
_CACHE_FLAGS = ("--tf_xla_persistent_cache_directory=", "--tf_xla_persistent_cache_read_only")


def expected_outputs(generator, max_new_tokens: int) -> dict:
    """The engine's greedy texts for the validator's prompts, which the export must reproduce."""
    texts = generator.generate(PROMPTS, max_new_tokens=max_new_tokens)
    return {"prompts": list(PROMPTS), "greedy_texts": texts}


def run_validation(path: str, expected: Optional[dict] = None, log=print, timeout: int = 3600,
                   xla_cache: Optional[str] = SHIPPED, write_cache: bool = False) -> dict:
    """Validate an export in a fresh Python process that imports only TensorFlow and tensorflow-text.

    Args:
        xla_cache: the validator's persistent XLA cache directory (then loaded with Grappler off):
            by default the export's own (`XLA_CACHE`) if it has one; None for none (Grappler on,
            TF Serving's default).
        write_cache: let the validator add what it compiles (the exporter fills the export's cache
            this way); otherwise the cache is read-only, so an installed export is never written.

    Returns the report dict (with "ok"; with a cache also "xla_cache": entries before and after);
    prints each check through `log`.
    """
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    if xla_cache == SHIPPED:
        shipped = os.path.join(path, XLA_CACHE)
        xla_cache = shipped if os.path.isdir(shipped) else None
    with tempfile.TemporaryDirectory() as scratch:
        report_file = os.path.join(scratch, "report.json")
        command = [sys.executable, LOADER_SCRIPT, path, "--report", report_file]
        if xla_cache is not None:
            command.append("--no-grappler")
        if expected is not None:
            expected_file = os.path.join(scratch, "expected.json")
            with open(expected_file, "w", encoding="utf-8") as handle:
                json.dump(expected, handle)
            command += ["--expected", expected_file]
        stderr = _run_forwarding(command, log, timeout, _xla_flags(xla_cache, write_cache))
        if not os.path.isfile(report_file):
            tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
            return {"path": path, "ok": False, "checks": [
                {"check": "validator process", "ok": False, "detail": tail[0]}]}
        with open(report_file, encoding="utf-8") as handle:
            return json.load(handle)


def _xla_flags(directory: Optional[str], write: bool) -> str:
    """TF_XLA_FLAGS for the validator: the caller's own flags without any persistent cache (this
    process's, which tfgen points at its own cache), then `directory`'s, read-only unless `write`."""
    kept = [part for part in os.environ.get("TF_XLA_FLAGS", "").split() if not part.startswith(_CACHE_FLAGS)]
    if directory is not None:
        kept.append(f"{_CACHE_FLAGS[0]}{os.path.abspath(directory)}")
        if not write:
            kept.append(f"{_CACHE_FLAGS[1]}=true")
    return " ".join(kept)


def _run_forwarding(command, log, timeout: int, xla_flags: str) -> str:
    """Run the validator, passing each stdout line to `log` as it comes; returns its stderr."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_XLA_FLAGS=xla_flags)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:
        log(line.rstrip())
    stderr = process.stderr.read()
    process.wait(timeout=timeout)
    return stderr
