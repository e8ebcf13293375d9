"""`tfgen generate`: continue prompts from the command line, a file or stdin.

Examples:
    tfgen generate "The theory of relativity is" --max-new-tokens 30
    tfgen generate "Once upon a time" --do-sample --top-p 0.9 --seed 1 --num-return-sequences 3
    tfgen generate --file prompts.txt --json
"""
from __future__ import annotations

import argparse
import sys
from typing import List

from tfgen.cli.options import (UsageError, add_generation_options, add_model_options, generation_params,
                               load, print_json, warn_if_random)

_SEPARATOR = "-" * 40  # between outputs in plain text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The prompt source, the model, the decoding options and how to print."""
    parser.add_argument("prompt", nargs="?", metavar="PROMPT",
                        help="the text to continue; '-' reads prompts from stdin, one per line")
    parser.add_argument("--file", metavar="PATH", help="read prompts from a file, one per line")
    add_model_options(parser)  # --json: {"prompt", "text", "completion"} per output
    group = add_generation_options(parser, "decoding (Hugging Face names and defaults)")
    group.add_argument("--chat", action="store_true",
                       help="treat each prompt as a user message in the model's chat template and print "
                            "the reply (chat models such as smollm2-135m)")
    output = parser.add_argument_group("output")
    output.add_argument("--stream", action="store_true", help="print the text as it is generated")
    output.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="prompts generated together (8)")
    output.add_argument("--no-xla", action="store_true", help="run decoding without XLA compilation")


def run(args: argparse.Namespace) -> int:
    """Check everything, load the model, then print each output as it is ready."""
    if args.stream and args.json:
        raise UsageError("--stream and --json cannot be combined")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    prompts = _read_prompts(args)
    params = generation_params(args)  # before the model loads, so mistakes show at once
    generator = load(args, xla=not args.no_xla)
    if args.chat:
        params["chat"] = True
    if args.stream:
        return _stream(generator, prompts, params, chat=args.chat)
    copies = params.get("num_return_sequences", 1)
    shown = 0
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first:first + args.batch_size]
        completions = generator.generate(batch, return_full_text=False, **params)
        if not first:  # once the input passed every check, so an error stays the only line
            warn_if_random(generator, "the generated text is gibberish")
        for index, completion in enumerate(completions):
            prompt = batch[index // copies]
            text = completion if args.chat else prompt + completion
            if args.json:
                print_json({"prompt": prompt, "text": text, "completion": completion})
            else:
                if shown:
                    print(_SEPARATOR)
                print(text, flush=True)
            shown += 1
    return 0


def _read_prompts(args: argparse.Namespace) -> List[str]:
    """PROMPT itself, or the non-blank lines of --file or of stdin (PROMPT '-')."""
    if args.file is not None and args.prompt is not None:
        raise UsageError("give a PROMPT or --file, not both")
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read prompts from --file {args.file}: {error}") from None
    elif args.prompt == "-":
        lines = sys.stdin.read().splitlines()
    elif args.prompt is not None:
        return [args.prompt]
    else:
        raise UsageError("give a PROMPT, '-' for stdin, or --file PATH")
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {args.file or 'stdin'} (blank lines are skipped)")
    return prompts


def _stream(generator, prompts: List[str], params: dict, chat: bool) -> int:
    """--stream: each prompt's text piece by piece, as the model produces it."""
    for index, prompt in enumerate(prompts):
        pieces = generator.stream(prompt, **params)  # validates before the first token
        if index:
            print(_SEPARATOR)
        else:
            warn_if_random(generator, "the generated text is gibberish")
        if not chat:  # a chat reply is printed on its own
            print(prompt, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print(flush=True)
    return 0
