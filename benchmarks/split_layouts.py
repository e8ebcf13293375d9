"""End to end A/B of the product layouts (`TFGEN_SPLIT_PRODUCTS`): one model loaded twice in one
process, once as one matrix per product and once as 2 blocks, timed in interleaved rounds.

    python benchmarks/split_layouts.py [SPEC] [--new-tokens 64] [--rounds 5]

Prints ms per generated token (best of the rounds) per batch and the speedup of the split layout.
"""
import argparse
import os
import time

import numpy as np

import tfgen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="random:gpt2")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    generators = {}
    for parts in ("1", "2"):  # the layout is read at load time
        os.environ["TFGEN_SPLIT_PRODUCTS"] = parts
        generators[parts] = tfgen.load(args.spec, seed=0)
    for batch in args.batches:
        ids = np.full([batch, 8], 464, np.int32)
        for generator in generators.values():  # compile both first
            generator.generate_ids(ids, max_new_tokens=args.new_tokens, ignore_eos=True)
        best = {parts: float("inf") for parts in generators}
        for _ in range(args.rounds):
            for parts, generator in generators.items():
                start = time.perf_counter()
                generator.generate_ids(ids, max_new_tokens=args.new_tokens, ignore_eos=True)
                best[parts] = min(best[parts], (time.perf_counter() - start) / args.new_tokens * 1000)
        print(f"{args.spec} batch {batch}: 1 block {best['1']:.2f} ms/token, 2 blocks {best['2']:.2f} "
              f"ms/token, speedup {best['1'] / best['2']:.3f}x", flush=True)


if __name__ == "__main__":
    main()
