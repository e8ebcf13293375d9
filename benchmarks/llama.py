"""SmolLM2-135M greedy decoding: tfgen against keras-hub's LlamaCausalLM.generate, and the roofline.

Usage:
    python benchmarks/llama.py [--new-tokens 64] [--repeats 3] [--batches 1 8] [--json out.json]

Both run the same float32 weights (the packaged GGUF, dequantized) with XLA. keras-hub gets the
prompt right-padded to prompt + new tokens and its greedy sampler (`compile(sampler="greedy")`,
no stop token), so both produce exactly `--new-tokens` tokens per row. Times are the best of
`--repeats` runs after one compiling run; ms per token is per decoding step (a step makes one
token for every row). The roofline is the float32 weight bytes over the bandwidth a compiled
matrix-vector product reaches here (`tfgen.bench.matvec_bandwidth`): a batch-1 step must read
every weight once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

PROMPT = "The theory of relativity is"


def best_ms_per_step(run, steps: int, repeats: int) -> float:
    run()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1000 / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)

    import tfgen
    from tfgen.bench import matvec_bandwidth
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from references import keras_hub_backbone

    from tfgen.models.gguf import read_gguf
    from tfgen.loading import packaged_gguf_path

    gen = tfgen.load("smollm2-135m")
    bandwidth = matvec_bandwidth()
    weight_bytes = gen.num_parameters * 4
    roofline_ms = weight_bytes / bandwidth * 1000
    print(f"SmolLM2-135M: {gen.num_parameters:,} parameters, {weight_bytes / 1e6:.0f} MB float32; "
          f"matvec bandwidth {bandwidth / 1e9:.1f} GB/s -> roofline {roofline_ms:.1f} ms/token at batch 1")

    import keras_hub

    converted = read_gguf(packaged_gguf_path("smollm2-135m"))
    causal_lm = keras_hub.models.LlamaCausalLM(
        backbone=keras_hub_backbone(converted.config, converted.weights), preprocessor=None)
    causal_lm.compile(sampler="greedy")
    del converted

    prompt = gen.tokenize(PROMPT)
    steps = args.new_tokens
    results = dict(bandwidth_gbs=bandwidth / 1e9, weight_mb=weight_bytes / 1e6, roofline_ms=roofline_ms,
                   new_tokens=steps, cases=[])
    print(f"{'batch':>5} {'tfgen ms/token':>15} {'keras-hub ms/token':>19} {'keras-hub/tfgen':>16} "
          f"{'tfgen/roofline':>15}")
    for batch in args.batches:
        ids = np.asarray([prompt] * batch, np.int32)

        def ours():
            out = gen.generate_ids(ids, max_new_tokens=steps, min_new_tokens=steps)
            assert int(out.num_generated.min()) == steps

        length = len(prompt) + steps
        token_ids = np.zeros([batch, length], np.int32)
        token_ids[:, :len(prompt)] = prompt
        padding_mask = np.zeros([batch, length], bool)
        padding_mask[:, :len(prompt)] = True

        def theirs():
            causal_lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None)

        ours_ms = best_ms_per_step(ours, steps, args.repeats)
        theirs_ms = best_ms_per_step(theirs, steps, args.repeats)
        row = dict(batch=batch, tfgen_ms=ours_ms, keras_hub_ms=theirs_ms, ratio=theirs_ms / ours_ms,
                   vs_roofline=ours_ms / roofline_ms)
        results["cases"].append(row)
        print(f"{batch:>5} {ours_ms:>15.1f} {theirs_ms:>19.1f} {row['ratio']:>15.2f}x "
              f"{row['vs_roofline']:>14.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
