"""`tfgen bench`: decoding speed against Hugging Face's XLA generate, with the memory roofline.

The measuring is tfgen/bench.py's; this module only reads the options and prints.

Example:
    tfgen bench --model gpt2 --new-tokens 64 --repeats 3
"""
from __future__ import annotations

import argparse
import json

from tfgen.cli.options import add_model_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per case; the best counts (default 3)")
    parser.add_argument("--prompt-lengths", type=int, default=10,
                        help="prompt lengths for the compile-cost test (default 10; 0 skips it)")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face reference")
    add_model_options(parser, default="random:gpt2 (the GPT-2 124M config, compared with Hugging Face)")


def run(args: argparse.Namespace) -> int:
    """Benchmark; the table goes to stdout as it is measured, or one JSON report at the end."""
    import tfgen
    from tfgen import bench

    for name in ("new_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    generator = tfgen.load(args.model if args.model else "random:gpt2")
    results = bench.run(generator, new_tokens=args.new_tokens, repeats=args.repeats,
                        prompt_lengths=args.prompt_lengths, with_hf=not args.no_hf,
                        log=(lambda line: None) if args.json else print)
    if args.json:
        print(json.dumps(results))
    return 0
