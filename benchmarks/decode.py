"""Decoding speed: tfgen against Hugging Face's XLA generate on the GPT-2 124M config (random weights).

    python benchmarks/decode.py [--model random:gpt2] [--new-tokens 64] [--repeats 3] [--json out.json]

Same process, same weights, same prompt; prints ms/token per case and HF/tfgen ratios, the
compile count and time for 10 prompt lengths, and the memory roofline (see tfgen/bench.py).
"""
import argparse
import json

import tfgen
from tfgen import bench


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-lengths", type=int, default=10)
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face side")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    generator = tfgen.load(args.model)
    results = bench.run(generator, new_tokens=args.new_tokens, repeats=args.repeats,
                        prompt_lengths=args.prompt_lengths, with_hf=not args.no_hf)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
