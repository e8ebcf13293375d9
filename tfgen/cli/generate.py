"""`tfgen generate`: continue prompts from the command line, a file or stdin.

Examples:
    tfgen generate "The theory of relativity is" --max-new-tokens 30
    tfgen generate "Once upon a time" --do-sample --top-p 0.9 --seed 1 --num-return-sequences 3
    tfgen generate --file prompts.txt --json
    tfgen generate "Once upon a time" --do-sample --best-of 5 --seed 1
    tfgen generate "The sky is" --logprobs 3 --json
    tfgen generate "He told her" --screen --screen-keep flagged --screen-threshold 0.01 --top-k 26
    tfgen generate "Repeat: the cat sat on the mat." --speculative prompt_lookup --verbose
"""
from __future__ import annotations

import argparse
import sys
from typing import List

from tfgen.cli.options import (UsageError, add_candidate_options, add_generation_options, add_model_options,
                               add_speculative_options, generation_params, load, print_json, screen_params,
                               speculative_params, warn_if_random)

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
    add_candidate_options(parser)  # --json with --screen: {"prompt", "kept", "dropped", ...} per prompt
    add_speculative_options(parser)  # --verbose also prints the tokens per model pass
    output = parser.add_argument_group("output")
    output.add_argument("--stream", action="store_true", help="print the text as it is generated")
    output.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="prompts generated together (8)")
    output.add_argument("--no-xla", action="store_true", help="run decoding without XLA compilation")


def run(args: argparse.Namespace) -> int:
    """Check everything, load the model, then print each output as it is ready."""
    if args.stream and args.json:
        raise UsageError("--stream and --json cannot be combined")
    if args.stream and (args.logprobs is not None or args.raw_logprobs):
        raise UsageError("--stream and --logprobs cannot be combined")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    screening = screen_params(args)
    if args.best_of is not None:
        if args.stream:
            raise UsageError("--stream and --best-of cannot be combined")
        if args.best_of < 1:
            raise ValueError(f"--best-of must be >= 1, got {args.best_of}")
    prompts = _read_prompts(args)
    params = generation_params(args)  # before the model loads, so mistakes show at once
    if args.screen and (args.speculative or args.draft_model):
        raise UsageError("--screen does not combine with speculative decoding")
    generator = load(args, xla=not args.no_xla)
    params.update(speculative_params(args, xla=not args.no_xla))  # streams decode without it
    if args.chat:
        params["chat"] = True
    if args.screen:
        return _screen(generator, prompts, params, screening, args)
    if args.stream:
        return _stream(generator, prompts, params, chat=args.chat)
    if args.best_of is not None:
        params["best_of"] = args.best_of
    copies = params.get("num_return_sequences", 1)
    shown = 0
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first:first + args.batch_size]
        completions = generator.generate(batch, return_full_text=False, **params)
        if not first:  # once the input passed every check, so an error stays the only line
            warn_if_random(generator, "the generated text is gibberish")
        for index, completion in enumerate(completions):
            prompt = batch[index // copies]
            entries = None
            if not isinstance(completion, str):  # --logprobs: Completions that carry them
                completion, entries = completion.completion, completion.logprobs
            text = completion if args.chat else prompt + completion
            if args.json:
                record = {"prompt": prompt, "text": text, "completion": completion}
                if entries is not None:
                    record["logprobs"] = [_logprob_record(entry) for entry in entries]
                print_json(record)
            else:
                if shown:
                    print(_SEPARATOR)
                print(text, flush=True)
                if entries is not None:
                    _print_logprobs(entries)
            shown += 1
        stats = generator.last_speculation if "speculative" in params else None
        if stats is not None and args.verbose:
            print(f"speculative decoding: {stats.tokens_per_pass:.2f} tokens per model pass, "
                  f"{int(stats.accepted.sum())} of {int(stats.proposed.sum())} proposed tokens accepted",
                  file=sys.stderr)
    return 0


def _logprob_record(entry) -> dict:
    """A `TokenLogprob` as JSON: OpenAI-like {"id", "text", "logprob", "top": [...]}, plus the raw
    distribution's values under "raw_logprob" / "raw_top" when asked for."""
    def alternatives(items):
        return [{"id": a.id, "text": a.text, "logprob": a.logprob} for a in items]

    record = {"id": entry.id, "text": entry.text, "logprob": entry.logprob, "top": alternatives(entry.top)}
    if entry.raw_logprob is not None:
        record.update(raw_logprob=entry.raw_logprob, raw_top=alternatives(entry.raw_top))
    return record


def _print_logprobs(entries) -> None:
    """One line per generated token: its log-probability, its text, then the alternatives."""
    for entry in entries:
        top = "  ".join(f"{a.text!r} {a.logprob:.3f}" for a in entry.top)
        print(f"  {entry.logprob:8.3f}  {entry.text!r:<20} {top}".rstrip(), flush=True)


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


def _screen(generator, prompts: List[str], params: dict, screening: dict, args: argparse.Namespace) -> int:
    """--screen: per prompt, the kept samples with their classifier scores and how many were dropped."""
    import tfgen
    from tfgen.screening import ProfanityClassifier

    classifier = ProfanityClassifier()  # before any generation: a missing [screen] extra shows at once
    for index, prompt in enumerate(prompts):
        result = tfgen.screen(generator, prompt, classifier=classifier, **screening, **params)
        if not index:
            warn_if_random(generator, "the generated text is gibberish")
        kept = [{"text": sample.text, "completion": sample.completion.completion, "score": sample.score}
                for sample in result.kept]
        if args.json:
            print_json({"prompt": prompt, "kept": kept, "dropped": result.dropped,
                        "num_samples": len(result.samples), "threshold": result.threshold,
                        "keep": result.keep})
            continue
        for sample in kept:
            print(_SEPARATOR)
            print(f"[{sample['score']:.4f}] {sample['completion'] if args.chat else sample['text']}")
        side = "below" if result.keep == "below" else "at or above"
        print(_SEPARATOR)
        print(f"kept {len(kept)} of {len(result.samples)} samples scoring {side} {result.threshold:g} "
              f"(profanity), dropped {result.dropped}", flush=True)
    return 0


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
