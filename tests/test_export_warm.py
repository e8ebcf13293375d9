"""Exports compile each program once (issue 15, item 3): the fresh-process validator compiles every
warmed program into the export's own persistent XLA cache (VERSION/assets.extra/xla_cache), a later
fresh process with TF Serving's session loader finds every executable there, and the cache is optional.

Counted, not timed: TensorFlow names each executable PREFIX__SIGNATURE__HLO__DEVICE.pb, so a process
given a writable copy of the cache that adds no file compiled nothing.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tfgen.export import run_validation, serving_files
from tfgen.export.validation import XLA_CACHE, expected_outputs

MAX_NEW_TOKENS = 4


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _executables(directory):
    try:
        return {name for name in os.listdir(directory) if name.endswith(".pb")}
    except OSError:
        return set()


def _export(root):
    """`tfgen export` of random:tiny (one signature pair, one bucket) in a fresh process, with a
    private tfgen cache and its own XLA directory (what that process compiled lands there, while
    the validator it starts gets the export's cache); returns the version and the stderr lines."""
    env = dict(os.environ, TFGEN_CACHE=str(root / "tfgen-cache"), PYTHONPATH=ROOT,
               TF_XLA_FLAGS=f"--tf_xla_persistent_cache_directory={root / 'exporter-xla'}")
    done = subprocess.run(
        [sys.executable, "-m", "tfgen", "export", "random:tiny", "--name", "tiny", "--out", str(root),
         "--strategies", "greedy", "--max-prompt-tokens", "16", "--max-new-tokens", str(MAX_NEW_TOKENS),
         "--batch-buckets", "1", "--prompt-buckets", "16", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["path"], done.stderr


def _cache_line(stderr):
    return next(line for line in stderr.splitlines() if "XLA cache " in line)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-warm")
    version, stderr = _export(root)
    return root, version, stderr


def test_validator_fills_the_exports_cache_and_the_exporter_compiles_none_of_it(exported):
    root, version, stderr = exported
    shipped = _executables(os.path.join(version, XLA_CACHE))
    assert shipped, "the validator compiled nothing into the export's cache"
    assert "0 executables found" in _cache_line(stderr)
    compiled_by_exporter = _executables(root / "exporter-xla")  # the engine's programs (its expected texts)
    signatures = {name.split("__")[1] for name in shipped}
    assert not signatures & {name.split("__")[1] for name in compiled_by_exporter}, (
        shipped, compiled_by_exporter)


def test_reexport_of_the_same_graph_compiles_nothing(exported):
    """tfgen's cache keeps the validator's executables by the export's function library: the next
    export of the same model, in another process, starts its validator with them (hard links to
    the entry) and it compiles none."""
    root, version, _ = exported
    again, stderr = _export(root)
    assert os.path.basename(again) == "2"
    assert ", 0 compiled and added" in _cache_line(stderr), _cache_line(stderr)
    names = _executables(os.path.join(again, XLA_CACHE))
    assert names == _executables(os.path.join(version, XLA_CACHE))
    entries = os.path.join(root, "tfgen-cache", "exports")
    (entry,) = [os.path.join(entries, n) for n in os.listdir(entries) if not n.startswith(".")]
    for name in names:
        assert os.path.samefile(os.path.join(again, XLA_CACHE, name), os.path.join(entry, name))


def test_fresh_session_loader_start_compiles_nothing_with_the_shipped_cache(exported, tiny, tmp_path):
    _, version, _ = exported
    moved = str(tmp_path / "elsewhere" / "1")  # another path: the cache key must not depend on it
    shutil.copytree(version, moved)
    entries = _executables(os.path.join(moved, XLA_CACHE))
    report = run_validation(moved, expected=expected_outputs(tiny, MAX_NEW_TOKENS), log=lambda line: None,
                            xla_cache=os.path.join(moved, XLA_CACHE), write_cache=True)
    assert report["ok"], [check for check in report["checks"] if not check["ok"]]
    assert report["xla_cache"]["compiled"] == 0, report["xla_cache"]
    assert _executables(os.path.join(moved, XLA_CACHE)) == entries


def test_shipped_cache_is_optional(exported, tiny):
    _, version, _ = exported
    report = run_validation(version, expected=expected_outputs(tiny, MAX_NEW_TOKENS), log=lambda line: None,
                            xla_cache=None)  # TF Serving's defaults: no cache flag, Grappler on
    assert report["ok"], [check for check in report["checks"] if not check["ok"]]
    assert "xla_cache" not in report


def test_serve_script_has_the_warm_start_settings(exported):
    model_dir = os.path.dirname(exported[1])
    version = os.path.join(model_dir, max((n for n in os.listdir(model_dir) if n.isdigit()), key=int))
    serve = open(os.path.join(model_dir, "serve.sh"), encoding="utf-8").read()
    shipped = os.path.abspath(os.path.join(version, XLA_CACHE))
    warm, plain = serve.split("\nfi\n")
    assert f"--tf_xla_persistent_cache_directory={shipped}" in warm
    assert "--tf_xla_persistent_cache_read_only=true" in warm
    assert "--platform_config_file=" + os.path.join(os.path.abspath(version),
                                                    serving_files.PLATFORM_CONFIG_FILE) in warm
    assert "--enable_batching" not in warm  # TF Serving ignores it beside a platform config
    assert "--enable_batching=true" in plain and "TF_XLA_FLAGS" not in plain


def _block(text, name):
    """The body of the first `name { ... }` block of a text proto."""
    start = text.index(name + " {") + len(name) + 2
    depth, position = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        position += 1
    return text[start:position - 1]


def test_platform_config_turns_grappler_off_and_keeps_the_batching(exported):
    """The session config parses as TensorFlow's ConfigProto (TF Serving's own protos for the
    enclosing PlatformConfigMap are not in the tensorflow-serving-api wheel)."""
    import tensorflow as tf
    from google.protobuf import text_format

    _, version, _ = exported
    text = open(os.path.join(version, serving_files.PLATFORM_CONFIG_FILE), encoding="utf-8").read()
    assert "[type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig]" in text
    session = text_format.Parse(_block(text, "session_config"), tf.compat.v1.ConfigProto())
    assert session.graph_options.rewrite_options.disable_meta_optimizer
    batching = _block(text, "batching_parameters").split()
    assert batching == serving_files.batching_parameters([1]).split()


def test_no_cache_no_warm_start(tmp_path):
    serving_files.write_operator_files(str(tmp_path), "plain", [1, 8])
    assert "TFGEN_WARM_START" not in (tmp_path / "serve.sh").read_text()


def test_an_export_restores_the_programs_an_earlier_one_lowered(tmp_path, monkeypatch):
    """The exporter gets each program's StableHLO module from the engine (`Engine.lowered`): the
    first export traces and lowers it (storing it in tfgen's cache), a later one restores it and
    traces no decoding program; neither runs one."""
    import tfgen

    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path / "tfgen-cache"))
    gen = tfgen.load("random:tiny", seed=0)
    args = dict(max_prompt_tokens=16, max_new_tokens=MAX_NEW_TOKENS, batch_buckets=(1, 2),
                prompt_buckets=(16,), strategies="greedy", validate=False, progress=False)
    tfgen.export_saved_model(gen, str(tmp_path / "a"), **args)
    assert gen.engine.trace_count == 1 and gen.engine.restore_count == 0  # one trace for both buckets
    tfgen.export_saved_model(gen, str(tmp_path / "b"), **args)
    assert gen.engine.trace_count == 1 and gen.engine.restore_count == 2
    assert gen.engine.compile_count == 0
