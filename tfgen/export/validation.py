"""Validate an export in a fresh process, as TF Serving would load it.

`run_validation` runs tfgen/export/serving_loader.py as a script in a new Python process that
imports only TensorFlow and tensorflow-text (the ops TF Serving links), forwards its check lines
and returns its JSON report. The exporter runs it before putting a version in place, with the
greedy texts of the in-process engine (`expected_outputs`) to compare against.
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


def expected_outputs(generator, max_new_tokens: int) -> dict:
    """The engine's greedy texts for the validator's prompts, which the export must reproduce."""
    texts = generator.generate(PROMPTS, max_new_tokens=max_new_tokens)
    return {"prompts": list(PROMPTS), "greedy_texts": texts}


def run_validation(path: str, expected: Optional[dict] = None, log=print, timeout: int = 3600) -> dict:
    """Validate an export in a fresh Python process that imports only TensorFlow and tensorflow-text.

    Returns the report dict (with "ok"); prints each check through `log`.
    """
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    with tempfile.TemporaryDirectory() as scratch:
        report_file = os.path.join(scratch, "report.json")
        command = [sys.executable, LOADER_SCRIPT, path, "--report", report_file]
        if expected is not None:
            expected_file = os.path.join(scratch, "expected.json")
            with open(expected_file, "w", encoding="utf-8") as handle:
                json.dump(expected, handle)
            command += ["--expected", expected_file]
        stderr = _run_forwarding(command, log, timeout)
        if not os.path.isfile(report_file):
            tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
            return {"path": path, "ok": False, "checks": [
                {"check": "validator process", "ok": False, "detail": tail[0]}]}
        with open(report_file, encoding="utf-8") as handle:
            return json.load(handle)


def _run_forwarding(command, log, timeout: int) -> str:
    """Run the validator, passing each stdout line to `log` as it comes; returns its stderr."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:
        log(line.rstrip())
    stderr = process.stderr.read()
    process.wait(timeout=timeout)
    return stderr
