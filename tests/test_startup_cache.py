"""The start-up cache (tfgen.cache, tfgen.decoding.programs): a warm process traces nothing and
prints what a cold one printed; torn, corrupt and foreign entries are rebuilt; concurrent fillers
both succeed; TFGEN_CACHE=off writes nothing; eviction keeps the bound; `tfgen cache` works.

Behaviour, not wall-clock time: the processes print their trace and restore counters.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from tfgen import cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One greedy program (batch 1, prompt bucket 8, step bucket 16) of random:tiny.
SCRIPT = """
import json, tfgen
generator = tfgen.load("random:tiny")
text = generator.generate("The theory of relativity is", max_new_tokens=4)
print(json.dumps({"text": text, "traces": generator.engine.trace_count,
                  "restored": generator.engine.restore_count, "compiled": generator.engine.compile_count,
                  "lowered": sum(generator.engine.programs.lowered.values())}))
"""


def _environment(cache_dir, **extra):
    env = dict(os.environ, TFGEN_CACHE=str(cache_dir), PYTHONPATH=ROOT, **extra)
    env.pop("TF_XLA_FLAGS", None)
    return env


def _start(cache_dir, script=SCRIPT, **extra):
    return subprocess.Popen([sys.executable, "-c", script], env=_environment(cache_dir, **extra), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _entries(cache_dir):
    folder = os.path.join(str(cache_dir), "programs")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if not name.startswith("."))


def _is_whole(path, monkeypatch, cache_dir):
    """Whether an entry passes read_entry's checks (read with the key its manifest names)."""
    monkeypatch.setenv("TFGEN_CACHE", str(cache_dir))
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as handle:
        key = json.load(handle)["key"]
    return cache.read_entry("programs", key) is not None


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """Two processes started at once on an empty cache, then a third (warm) one."""
    cache_dir = tmp_path_factory.mktemp("startup-cache")
    pair = [_start(cache_dir), _start(cache_dir)]
    cold = [_result(process) for process in pair]
    warm = _result(_start(cache_dir))
    return cache_dir, cold, warm


def test_concurrent_cold_processes_both_succeed(filled, monkeypatch):
    cache_dir, cold, _ = filled
    assert cold[0]["text"] == cold[1]["text"]
    assert cold[0]["text"].startswith("The theory of relativity is")
    assert all(run["traces"] == 1 and run["restored"] == 0 for run in cold), cold
    assert all(run["compiled"] == 1 and run["lowered"] == 1 for run in cold), cold
    entries = _entries(cache_dir)
    assert len(entries) == 1  # the same key: one entry, whichever rename came last
    assert _is_whole(entries[0], monkeypatch, cache_dir)
    names = os.listdir(entries[0])
    assert "program.pb" in names and any(name.startswith("xla-") for name in names), names
    assert "program.stablehlo" in names, names


def test_warm_process_traces_nothing_and_prints_the_same(filled):
    _, cold, warm = filled
    assert warm["traces"] == 0
    assert warm["restored"] == 1
    # It runs the stored StableHLO module and finds its executable: XLA compiles nothing.
    assert warm["compiled"] == 0 and warm["lowered"] == 1
    assert warm["text"] == cold[0]["text"]


def test_warm_after_importing_tensorflow_first(filled):
    """`import tensorflow as tf; import tfgen`, TensorFlow code's usual order, starts warm too:
    TensorFlow reads TF_XLA_FLAGS when its runtime starts, after tfgen has set them."""
    _, cold, _ = filled
    warm = _result(_start(filled[0], "import tensorflow as tf\n" + SCRIPT))
    assert (warm["traces"], warm["restored"], warm["compiled"]) == (0, 1, 0), warm
    assert warm["text"] == cold[0]["text"]


@pytest.mark.parametrize("before", ["tf.constant(1.0) + 1", "tf.config.list_physical_devices()"],
                         ids=["op", "device-listing"])
def test_tensorflow_started_before_tfgen_says_the_cache_is_off(tmp_path, before):
    """A TensorFlow op (tfgen sees the runtime started) or a device listing (TensorFlow read its
    flags without starting one; tfgen sees nothing persisted after a compile) before `import
    tfgen`: nothing can be persisted; the run still works, and says why the next start will not
    be warm."""
    script = f"import tensorflow as tf\n{before}\n" + SCRIPT
    process = _start(tmp_path, script)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["text"].startswith("The theory of relativity is") and result["compiled"] == 1
    assert "persistent XLA cache is off" in err and "Import tfgen before" in err


def test_corrupt_entry_is_rebuilt(filled, monkeypatch):
    cache_dir, cold, _ = filled
    entry = _entries(cache_dir)[0]
    library = os.path.join(entry, "program.pb")
    with open(library, "r+b") as handle:  # garbled, same size
        data = bytearray(handle.read())
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        handle.seek(0)
        handle.write(bytes(data))
    executable = next(os.path.join(entry, name) for name in os.listdir(entry) if name.startswith("xla-"))
    with open(executable, "r+b") as handle:  # truncated
        handle.truncate(100)
    rebuilt = _result(_start(cache_dir))
    assert rebuilt["traces"] == 1 and rebuilt["restored"] == 0
    assert rebuilt["text"] == cold[0]["text"]
    entries = _entries(cache_dir)
    assert len(entries) == 1 and _is_whole(entries[0], monkeypatch, cache_dir)


def test_cache_off_writes_nothing(filled, tmp_path):
    _, cold, _ = filled
    home = tmp_path / "home"
    home.mkdir()
    env_cache = tmp_path / "xdg"
    process = _start("off", HOME=str(home), XDG_CACHE_HOME=str(env_cache))
    result = _result(process)
    assert result["text"] == cold[0]["text"]
    assert result["restored"] == 0 and result["traces"] == 1
    assert not env_cache.exists() and not (home / ".cache" / "tfgen").exists()


def test_cache_command_info_and_clear(filled):
    cache_dir, _, _ = filled
    env = _environment(cache_dir)

    def run(*args):
        done = subprocess.run([sys.executable, "-m", "tfgen", "cache", *args, "--json"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    before = run("info")
    assert before["root"] == str(cache_dir) and before["sections"]["programs"]["entries"] == 1
    assert before["sections"]["programs"]["bytes"] > 0
    freed = run("clear")
    assert freed["freed_bytes"] >= before["sections"]["programs"]["bytes"]
    assert run("info")["sections"]["programs"]["entries"] == 0


# -- the entry store itself (no TensorFlow) ----------------------------------------------------------
def test_eviction_keeps_the_bound_least_recently_used_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))
    monkeypatch.setenv("TFGEN_CACHE_MAX_BYTES", "2600")
    keys = [{"entry": index} for index in range(3)]
    for key in keys[:2]:
        assert cache.write_entry("programs", key, {"payload": bytes(1000)}) is not None
        time.sleep(0.02)
    assert cache.read_entry("programs", keys[0]) is not None  # touched: now more recent than entry 1
    time.sleep(0.02)
    cache.write_entry("programs", keys[2], {"payload": bytes(1000)})
    assert cache.read_entry("programs", keys[1]) is None  # the least recently used went
    assert cache.read_entry("programs", keys[0]) is not None
    assert cache.read_entry("programs", keys[2]) is not None
    summary = cache.info()
    assert summary["sections"]["programs"]["bytes"] <= 2600
    assert summary["sections"]["programs"]["entries"] == 2


def test_foreign_and_torn_entries_are_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))
    mine, other = {"model": "a"}, {"model": "b"}
    path = cache.write_entry("programs", mine, {"payload": b"abc"})
    foreign = os.path.join(os.path.dirname(path), cache.digest(other))
    os.rename(path, foreign)  # an entry made for another key, under this key's name
    assert cache.read_entry("programs", other) is None
    assert not os.path.exists(foreign)
    path = cache.write_entry("programs", mine, {"payload": b"abc"})
    os.remove(os.path.join(path, "payload"))  # torn
    assert cache.read_entry("programs", mine) is None and not os.path.exists(path)


def test_bad_size_bound_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TFGEN_CACHE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="TFGEN_CACHE_MAX_BYTES"):
        cache.max_bytes()


def test_xla_flag_keeps_the_users_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))
    added = cache.xla_flag("--tf_xla_enable_lazy_compilation=false")
    assert added.startswith("--tf_xla_enable_lazy_compilation=false ")
    assert f"--tf_xla_persistent_cache_directory={tmp_path}" in added
    mine = "--tf_xla_persistent_cache_directory=/somewhere/else"
    assert cache.xla_flag(mine) == mine
    monkeypatch.setenv("TFGEN_CACHE", "off")
    assert cache.xla_flag("") == ""


def test_a_module_that_fails_runs_by_name(monkeypatch, tmp_path):
    """A program's StableHLO module that XlaCallModule rejects on its first call falls back to the
    traced functions called by name, with the same output."""
    import numpy as np
    import tfgen
    from tfgen.decoding import programs

    monkeypatch.setenv("TFGEN_CACHE", "off")
    generator = tfgen.load("random:tiny")
    ids = [[5, 6, 7, 8]]
    expected = np.asarray(generator.generate_ids(ids, max_new_tokens=3).sequences)
    broken = []
    lower = programs._lower

    def spoiled(program, flat):
        module = lower(program, flat)
        assert module is not None  # the tiny model lowers
        broken.append(programs._Module(b"not a StableHLO artifact", module.version, module.types))
        return broken[-1]

    monkeypatch.setattr(programs, "_lower", spoiled)
    fresh = tfgen.load("random:tiny")
    got = np.asarray(fresh.generate_ids(ids, max_new_tokens=3).sequences)
    assert broken and np.array_equal(got, expected)
    assert sum(fresh.engine.programs.lowered.values()) == 0  # it ran by name


def test_module_result_types_read_from_the_stablehlo_text():
    """A program traced with unknown axes and lowered for one shape gets its output types from the
    module's main signature (`programs._result_types`): the same dtypes and shapes as TensorFlow's
    own trace of that shape."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    from tfgen.decoding import programs

    def body(ids, weights):
        return {"f": tf.cast(ids, tf.float32) * weights[0], "b": tf.reduce_sum(ids, 1) > 0,
                "s": tf.shape(ids)[0], "l": tf.cast(ids[:, :1], tf.int64), "h": tf.cast(weights, tf.bfloat16)}

    loose = tf.function(body, jit_compile=True).get_concrete_function(
        tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.float32))
    ids, weights = tf.zeros([3, 5], tf.int32), tf.zeros([7], tf.float32)
    text = context.context().get_compiler_ir(
        device_name=None, platform_name="CPU", function_name=loose.function_def.signature.name,
        flat_args=[ids, weights], captured_inputs=[], stage="stablehlo").decode()
    exact = tf.function(body, jit_compile=True).get_concrete_function(ids, weights)
    assert programs._result_types(text) == [(t.dtype.name, t.shape.as_list()) for t in exact.outputs]
    assert programs._result_types("no module here") is None
