"""Start-up time, cold and warm: `tfgen generate` as a user runs it, `tfgen.load()` + first generate
broken down, and llama.cpp opening the same GGUF.

Cold runs use a fresh, empty TFGEN_CACHE (so they also convert the GGUF's weights); warm runs use the
same directory again. Every figure is a fresh process.

    python benchmarks/startup.py                      # SmolLM2-135M, the built-in model
    python benchmarks/startup.py --model random:tiny --runs 2
    python benchmarks/startup.py --export             # also `tfgen export` with the defaults, cold
                                                      # and warm, and the export's first requests

Prints one table and, with --json, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "The theory of relativity is"

# Run in a fresh process: every phase of tfgen.load() + the first generate, in seconds.
_PHASES = """
import json, sys, time
start = time.perf_counter()
import tfgen
from tfgen._keras_env import import_tensorflow_quietly
import_tensorflow_quietly()
imported = time.perf_counter()
generator = tfgen.load(sys.argv[1])
loaded = time.perf_counter()
generator.generate(sys.argv[2], max_new_tokens=20)
first = time.perf_counter()
generator.generate(sys.argv[2], max_new_tokens=20)
second = time.perf_counter()
seconds = generator.engine.programs.seconds
print(json.dumps({"import": imported - start, "load": loaded - imported,
                  "trace": seconds.get("trace", 0.0), "lower": seconds.get("lower", 0.0),
                  "restore": seconds.get("restore", 0.0),
                  "compile+run": seconds.get("first call", 0.0), "run": second - first,
                  "load+first generate": first - imported, "total": first - start,
                  "traces": generator.engine.trace_count, "restored": generator.engine.restore_count,
                  "compiled": generator.engine.compile_count}))
"""

_LLAMA_CPP = """
import json, sys, time
start = time.perf_counter()
import llama_cpp
imported = time.perf_counter()
llama_cpp.Llama(model_path=sys.argv[1], verbose=False)
print(json.dumps({"import": imported - start, "load": time.perf_counter() - imported}))
"""


# Run in a fresh process with TF_XLA_FLAGS pointing at the export's shipped XLA cache (read-only):
# TF Serving's session loader (Grappler off, as serve.sh's warm start), then every warmup record,
# each timed: the first request of each warmed program.
_FIRST_REQUESTS = """
import importlib.util, json, sys, time
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("serving_loader", sys.argv[1])
loader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loader)
from tensorflow_serving.apis import predict_pb2
imported = time.perf_counter()
model = loader.SessionModel(sys.argv[2], grappler=sys.argv[3] != "off")
loaded = time.perf_counter()
directory = loader.xla_cache_directory()
before = loader.xla_cache_entries(directory)
requests = []
for request in loader.warmup_records(sys.argv[2]):
    began = time.perf_counter()
    loader.grpc_predict(model, predict_pb2.PredictRequest.FromString(request.SerializeToString()))
    batch = next(iter(request.inputs.values())).tensor_shape.dim[0].size
    requests.append([request.model_spec.signature_name, batch, time.perf_counter() - began])
print(json.dumps({"import": imported - start, "load": loaded - imported, "requests": requests,
                  "compiled": loader.xla_cache_entries(directory) - before if directory else None}))
"""


def _environment(cache_dir: str) -> dict:
    env = dict(os.environ, TFGEN_CACHE=cache_dir, PYTHONPATH=ROOT)
    env.pop("TF_XLA_FLAGS", None)
    return env


def _python(code: str, args, env) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _generate_wall(model: str, env) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tfgen", "generate", PROMPT, "--model", model], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - start


def measure(model: str, runs: int) -> dict:
    """Cold and warm figures, each the median of `runs` fresh processes (cold: a new cache each)."""
    result = {"model": model, "runs": runs}
    cold_wall, warm_wall, cold_phases, warm_phases = [], [], [], []
    for _ in range(runs):
        cache_dir = tempfile.mkdtemp(prefix="tfgen-startup-")
        try:
            env = _environment(cache_dir)
            cold_wall.append(_generate_wall(model, env))
            warm_wall.append(_generate_wall(model, env))
            shutil.rmtree(os.path.join(cache_dir, "programs"), ignore_errors=True)  # programs cold again
            cold_phases.append(_python(_PHASES, [model, PROMPT], env))
            warm_phases.append(_python(_PHASES, [model, PROMPT], env))
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
    result["generate_wall"] = {"cold": statistics.median(cold_wall), "warm": statistics.median(warm_wall)}
    result["phases"] = {name: {key: statistics.median(run[key] for run in phases) for key in phases[0]}
                        for name, phases in (("cold", cold_phases), ("warm", warm_phases))}
    if not model.startswith("random:"):
        try:
            from tfgen.loading import PACKAGED_GGUF, packaged_gguf_path

            path = packaged_gguf_path(model) if model in PACKAGED_GGUF else model.split("gguf:")[-1]
            figures = [_python(_LLAMA_CPP, [path], dict(os.environ)) for _ in range(runs)]
            result["llama_cpp"] = {key: statistics.median(f[key] for f in figures) for key in figures[0]}
        except (ImportError, RuntimeError, ValueError) as error:
            result["llama_cpp"] = {"error": str(error)[:200]}
    return result


def _export_wall(model: str, out: str, env) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tfgen", "export", model, "--name", "bench", "--out", out,
                           "--no-progress"], env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - start


def measure_export(model: str) -> dict:
    """`tfgen export` with the defaults from an empty cache and again (version 2, warm), then a
    fresh session-loader process's first request of each warmed program, with the shipped cache and
    without any (TF Serving's defaults)."""
    from tfgen.export.validation import LOADER_SCRIPT, XLA_CACHE

    cache_dir = tempfile.mkdtemp(prefix="tfgen-startup-")
    out = tempfile.mkdtemp(prefix="tfgen-startup-export-")
    try:
        env = _environment(cache_dir)
        cold = _export_wall(model, out, env)
        result = {"export_wall": {"cold": cold, "warm": _export_wall(model, out, env)}}
        version = os.path.join(out, "bench", "2")
        shipped = os.path.join(version, XLA_CACHE)
        warm_env = dict(env, TF_XLA_FLAGS=f"--tf_xla_persistent_cache_directory={shipped} "
                                          "--tf_xla_persistent_cache_read_only=true")
        result["first_requests"] = {
            "shipped cache": _python(_FIRST_REQUESTS, [LOADER_SCRIPT, version, "off"], warm_env),
            "no cache": _python(_FIRST_REQUESTS, [LOADER_SCRIPT, version, "on"], env)}
        return result
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def print_export_table(result: dict) -> None:
    wall = result["export_wall"]
    print(f"tfgen export wall:    cold {wall['cold']:6.1f} s   warm {wall['warm']:6.1f} s"
          "   (targets: cold <= 120 s, warm <= 60 s)")
    for name, figures in result["first_requests"].items():
        requests = ", ".join(f"{sig} b{batch} {seconds:.2f}" for sig, batch, seconds in figures["requests"])
        compiled = "every program" if figures["compiled"] is None else figures["compiled"]
        print(f"fresh process, {name}: load {figures['load']:.2f} s, compiled {compiled}; "
              f"first requests (s): {requests}")
    print("(target: a warmed program's first request <= 1 s)")


def print_table(result: dict) -> None:
    print(f"model {result['model']}, median of {result['runs']} fresh process(es)")
    wall = result["generate_wall"]
    print(f"tfgen generate wall:  cold {wall['cold']:6.2f} s   warm {wall['warm']:6.2f} s"
          "   (target: warm <= 3 s)")
    keys = ["import", "load", "trace", "lower", "restore", "compile+run", "run", "load+first generate"]
    print("phase (s)            " + "".join(f"{key:>21}" for key in keys))
    for name, phases in result["phases"].items():
        print(f"{name:<21}" + "".join(f"{phases[key]:21.2f}" for key in keys)
              + f"   traces {phases['traces']:.0f}, restored {phases['restored']:.0f}, "
              f"compiled {phases['compiled']:.0f}")
    print("(target: warm load + first generate <= 1.5 s)")
    if "llama_cpp" in result:
        figures = result["llama_cpp"]
        if "error" in figures:
            print(f"llama.cpp: {figures['error']}")
        else:
            print(f"llama.cpp on the same GGUF: import {figures['import']:.2f} s, "
                  f"load {figures['load']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--export", action="store_true",
                        help="also measure `tfgen export` and its first requests")
    parser.add_argument("--export-only", action="store_true", help="only the export figures")
    args = parser.parse_args()
    result = {"model": args.model}
    if not args.export_only:
        result = measure(args.model, args.runs)
        print_table(result)
    if args.export or args.export_only:
        result["export"] = measure_export(args.model)
        print_export_table(result["export"])
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
