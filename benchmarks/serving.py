"""Exported-model latency: the SavedModel in a fresh process (TF Serving's loader) against the engine.

    python benchmarks/serving.py [--model random:gpt2] [--new-tokens 32] [--repeats 5]

Exports greedy signatures to a temporary directory, measures the in-process engine's latency for
the same requests (batch 1 and 8), then loads the export in a new process that imports only
TensorFlow and tensorflow-text and times `serving_default` requests after warmup.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import tfgen

PROMPT = "The theory of relativity is"

_FRESH = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import serving_loader
model = serving_loader.SessionModel(sys.argv[2])
out = {}
for batch in (1, 8):
    feed = {"prompt": np.array([sys.argv[3].encode()] * batch, dtype=object)}
    model.run("serving_default", feed)
    best = float("inf")
    for _ in range(int(sys.argv[4])):
        start = time.perf_counter()
        model.run("serving_default", feed)
        best = min(best, time.perf_counter() - start)
    out[batch] = best * 1000
print(json.dumps(out))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    generator = tfgen.load(args.model)
    engine_ms = {}
    for batch in (1, 8):
        prompts = [PROMPT] * batch
        generator.generate(prompts, max_new_tokens=args.new_tokens)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            generator.generate(prompts, max_new_tokens=args.new_tokens)
            best = min(best, time.perf_counter() - start)
        engine_ms[batch] = best * 1000
    with tempfile.TemporaryDirectory() as root:
        path = tfgen.export_saved_model(generator, os.path.join(root, "bench"), strategies="greedy",
                                        max_prompt_tokens=32, max_new_tokens=args.new_tokens,
                                        batch_buckets=(1, 8), prompt_buckets=(32,))
        from tfgen.export.validation import LOADER_SCRIPT

        result = subprocess.run(
            [sys.executable, "-c", _FRESH, os.path.dirname(LOADER_SCRIPT), path, PROMPT,
             str(args.repeats)], capture_output=True, text=True, check=True)
        served_ms = {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    print(f"{'batch':>5s} {'engine ms':>10s} {'export ms':>10s} {'export/engine':>14s}")
    for batch in (1, 8):
        print(f"{batch:5d} {engine_ms[batch]:10.1f} {served_ms[batch]:10.1f} "
              f"{served_ms[batch] / engine_ms[batch]:13.2f}x")


if __name__ == "__main__":
    main()
