"""The `tfgen` command line: generate text and look inside models.

Each subcommand is a `Command`: a function that adds its arguments and a function that runs it
and returns the exit status. `COMMANDS` lists them; add new ones there.

Examples:
    tfgen generate "The theory of relativity is" --max-new-tokens 30
    tfgen generate "Once upon a time" --do-sample --top-p 0.9 --seed 1 --num-return-sequences 3
    tfgen inspect next "The theory of relativity is" -k 5 --model DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, List, Optional, Sequence

from tfgen import cli_beam, cli_export

EXIT_USAGE = 2  # bad input: argument, value, file or model spec
EXIT_INTERRUPTED = 130


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        name, help: as shown by `tfgen --help`.
        add_arguments: declares the command's options on its argparse parser.
        run: does the work, returns the exit status; None for a group of `subcommands`.
        subcommands: for a group such as `inspect`.
    """

    name: str
    help: str
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None
    run: Optional[Callable[[argparse.Namespace], int]] = None
    subcommands: Sequence["Command"] = ()


class UsageError(Exception):
    """A bad command line; reported as one `error:` line like every other input error."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits from inside parse_args; we want one line and our status.
    def error(self, message):
        raise UsageError(f"{message} (see: {self.prog} --help)")


# -- shared options ---------------------------------------------------------------------------------
def _add_model_options(parser: argparse.ArgumentParser,
                       default: str = "smollm2-135m (SmolLM2-135M-Instruct, offline)") -> None:
    parser.add_argument("--model", metavar="SPEC", default=None,
                        help=f"the model (default: {default}): smollm2-135m, gguf:PATH "
                             "(a Llama-architecture GGUF file), a save_pretrained directory, a hub id "
                             "(gpt2, distilgpt2, ...) or random:NAME (gpt2, distilgpt2, gpt2-medium, "
                             "gpt2-large, gpt2-xl, tiny)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and transformers' own log messages")


def _load(args: argparse.Namespace, xla: bool = True):
    import tfgen

    return tfgen.load(args.model, xla=xla)


def _warn_if_random(generator, consequence: str) -> None:
    if getattr(generator, "random_weights", False):
        print(f"note: {generator.name} has random (untrained) weights, so {consequence}; "
              "pass --model DIR or a hub id for a trained model", file=sys.stderr)


def _quoted(token: str) -> str:
    """A token in quotes, its spaces visible; unlike repr(), byte escapes are not doubled."""
    return "'" + token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + "'"


def _print_json(value) -> None:
    print(json.dumps(value, ensure_ascii=False), flush=True)


# -- tfgen generate ------------------------------------------------------------------------------
def _early_stopping(value: str):
    return {"true": True, "false": False, "never": "never"}[value]


def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", metavar="PROMPT",
                        help="the text to continue; '-' reads prompts from stdin, one per line")
    parser.add_argument("--file", metavar="PATH", help="read prompts from a file, one per line")
    _add_model_options(parser)
    group = parser.add_argument_group("decoding (Hugging Face names and defaults)")
    group.add_argument("--max-new-tokens", type=int, metavar="N", help="tokens to generate at most (20)")
    group.add_argument("--min-new-tokens", type=int, metavar="N", help="no EOS before N tokens (0)")
    group.add_argument("--num-beams", type=int, metavar="N", help="beam search with N beams (1: off)")
    group.add_argument("--do-sample", action="store_const", const=True, help="sample instead of greedy")
    group.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (1.0)")
    group.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely (50; 0: off)")
    group.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass (1.0: off)")
    group.add_argument("--repetition-penalty", type=float, metavar="R", help="1.0: off")
    group.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="0: off")
    group.add_argument("--length-penalty", type=float, metavar="X", help="beam score / length**X (1.0)")
    group.add_argument("--early-stopping", choices=["true", "false", "never"], help="beam search stop rule")
    group.add_argument("--num-return-sequences", type=int, metavar="N", help="outputs per prompt (1)")
    group.add_argument("--seed", type=int, metavar="S", help="makes sampling reproducible")
    group.add_argument("--stop", action="append", metavar="STR", help="end the text at STR (repeatable)")
    group.add_argument("--chat", action="store_true",
                       help="treat each prompt as a user message in the model's chat template and print "
                            "the reply (chat models such as smollm2-135m)")
    output = parser.add_argument_group("output")
    output.add_argument("--stream", action="store_true", help="print the text as it is generated")
    output.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="prompts generated together (8)")
    output.add_argument("--no-xla", action="store_true", help="run decoding without XLA compilation")
    # --json (see _add_model_options): {"prompt", "text", "completion"} per output.


_SEPARATOR = "-" * 40  # between outputs in plain text

_GENERATION_OPTIONS = ("max_new_tokens", "min_new_tokens", "num_beams", "do_sample", "temperature", "top_k",
                       "top_p", "repetition_penalty", "no_repeat_ngram_size", "length_penalty",
                       "early_stopping", "num_return_sequences", "seed", "stop")


def _read_prompts(args: argparse.Namespace) -> List[str]:
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


def _generate(args: argparse.Namespace) -> int:
    from tfgen.config import GenerationConfig

    if args.stream and args.json:
        raise UsageError("--stream and --json cannot be combined")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    prompts = _read_prompts(args)
    params = {name: getattr(args, name) for name in _GENERATION_OPTIONS if getattr(args, name) is not None}
    if "early_stopping" in params:
        params["early_stopping"] = _early_stopping(params["early_stopping"])
    GenerationConfig(**params).validate()  # before the model loads, so mistakes show at once
    generator = _load(args, xla=not args.no_xla)
    if args.chat:
        params["chat"] = True
    # The notice comes once the input passed every check, so an error stays the only line.
    if args.stream:
        for index, prompt in enumerate(prompts):
            pieces = generator.stream(prompt, **params)  # validates before the first token
            if index:
                print(_SEPARATOR)
            else:
                _warn_if_random(generator, "the generated text is gibberish")
            if not args.chat:  # a chat reply is printed on its own
                print(prompt, end="", flush=True)
            for piece in pieces:
                print(piece, end="", flush=True)
            print(flush=True)
        return 0
    copies = params.get("num_return_sequences", 1)
    shown = 0
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first:first + args.batch_size]
        completions = generator.generate(batch, return_full_text=False, **params)
        if not first:
            _warn_if_random(generator, "the generated text is gibberish")
        for index, completion in enumerate(completions):
            prompt = batch[index // copies]
            text = completion if args.chat else prompt + completion
            if args.json:
                _print_json({"prompt": prompt, "text": text, "completion": completion})
            else:
                if shown:
                    print(_SEPARATOR)
                print(text, flush=True)
            shown += 1
    return 0


# -- tfgen inspect ---------------------------------------------------------------------------------
def _layer(value: str):
    if value == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {value!r}") from None


def _inspect_tokens(args: argparse.Namespace) -> int:
    generator = _load(args)
    ids, tokens = generator.tokenize(args.text), generator.tokens(args.text)
    if args.json:
        _print_json({"text": args.text, "ids": ids, "tokens": tokens})
        return 0
    print(f"{len(ids)} tokens")
    for token_id, token in zip(ids, tokens):
        print(f"{token_id:>7}  {_quoted(token)}")
    return 0


def _inspect_next(args: argparse.Namespace) -> int:
    generator = _load(args)
    ranked = generator.next_tokens(args.text, k=args.k)
    _warn_if_random(generator, "these probabilities are meaningless")
    if args.json:
        _print_json({"text": args.text, "next": [
            {"token": token, "id": token_id, "probability": probability}
            for token, token_id, probability in ranked]})
        return 0
    width = max(len(_quoted(token)) for token, _, _ in ranked)
    print(f"{'rank':>4}  {'token':<{width}}  {'id':>6}  probability")
    for rank, (token, token_id, probability) in enumerate(ranked, 1):
        print(f"{rank:>4}  {_quoted(token):<{width}}  {token_id:>6}  {probability:.6f}")
    return 0


def _inspect_hidden(args: argparse.Namespace) -> int:
    import numpy as np

    generator = _load(args)
    states = generator.hidden_states(args.text, layer=args.layer)  # [T, H] or [layers, T, H]
    norms = np.linalg.norm(states, axis=-1)
    if args.json:
        _print_json({"text": args.text, "layer": args.layer, "shape": list(states.shape),
                     "tokens": generator.tokens(args.text) or [generator.decode([generator.lm.bos_token_id])],
                     "l2_norms": norms.astype(float).round(6).tolist()})
        return 0
    print(f"hidden states of layer {args.layer}: shape {list(states.shape)}"
          f" ({'layers, ' if states.ndim == 3 else ''}tokens, hidden)")
    print("L2 norm per token:")
    for layer, row in (enumerate(norms) if states.ndim == 3 else [(args.layer, norms)]):
        print(f"  layer {layer:>3}: " + " ".join(f"{value:.3f}" for value in row))
    return 0


def _inspect_similarity(args: argparse.Namespace) -> int:
    generator = _load(args)
    value = generator.similarity(args.word_a, args.word_b)
    _warn_if_random(generator, "the similarity is meaningless")
    if args.json:
        _print_json({"a": args.word_a, "b": args.word_b, "similarity": value})
    else:
        print(f"{value:.6f}")
    return 0


def _inspect_params(args: argparse.Namespace) -> int:
    generator = _load(args)
    count = generator.num_parameters
    if args.json:
        _print_json({"model": generator.name, "num_parameters": count})
    else:
        print(f"{count:,} parameters ({generator.name})")
    return 0


def _text_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", metavar="TEXT")
    _add_model_options(parser)


def _next_arguments(parser: argparse.ArgumentParser) -> None:
    _text_argument(parser)
    parser.add_argument("-k", type=int, default=10, help="how many tokens (10)")


def _hidden_arguments(parser: argparse.ArgumentParser) -> None:
    _text_argument(parser)
    parser.add_argument("--layer", type=_layer, default=-1,
                        help="layer index (0: embeddings, -1: the last, the default) or 'all'")


def _similarity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("word_a", metavar="WORD_A")
    parser.add_argument("word_b", metavar="WORD_B")
    _add_model_options(parser)


INSPECT_COMMANDS = [
    Command("tokens", "token ids and token strings of TEXT", _text_argument, _inspect_tokens),
    Command("next", "the most likely next tokens after TEXT, with probabilities", _next_arguments,
            _inspect_next),
    Command("hidden", "hidden states of TEXT: shape and per-token L2 norms", _hidden_arguments,
            _inspect_hidden),
    Command("similarity", "cosine similarity of two words' input embeddings", _similarity_arguments,
            _inspect_similarity),
    Command("params", "number of parameters", _add_model_options, _inspect_params),
]


# -- the command table -------------------------------------------------------------------------------
COMMANDS = [
    Command("generate", "continue a prompt", _add_generate_arguments, _generate),
    Command("inspect", "look inside a model: tokens, next, hidden, similarity, params",
            subcommands=INSPECT_COMMANDS),
    Command("export", "export a SavedModel for TensorFlow Serving (validated, atomic)",
            cli_export.export_arguments, cli_export.export),
    Command("validate", "check an export as TF Serving would load it, in a fresh process",
            cli_export.validate_arguments, cli_export.validate),
    Command("bench", "decoding speed against Hugging Face's XLA generate, with the memory roofline",
            cli_export.bench_arguments, cli_export.bench),
    Command("batch", "generate for a JSON-lines file with an Apache Beam pipeline (local or Dataflow)",
            cli_beam.batch_arguments, cli_beam.batch),
]


def _add_commands(parser: argparse.ArgumentParser, commands: Sequence[Command], depth: int = 0) -> None:
    subparsers = parser.add_subparsers(dest=f"command_{depth}", metavar="COMMAND", required=True)
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        if command.add_arguments is not None:
            command.add_arguments(sub)
        if command.subcommands:
            _add_commands(sub, command.subcommands, depth + 1)
        else:
            sub.set_defaults(run=command.run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tfgen", description="TensorFlow text generation for GPT-2-family models.")
    _add_commands(parser, COMMANDS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help
            return done.code if isinstance(done.code, int) else 0
        if getattr(args, "verbose", False):  # commands without the option run quietly
            return args.run(args)
        return _quietly(args.run, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`tfgen ... | head`): stop without a traceback
        sys.stdout = open(os.devnull, "w")
        return 1
    except (UsageError, ValueError, TypeError, ImportError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _quietly(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run without TensorFlow's native log lines and transformers' advice on stderr."""
    from tfgen._keras_env import native_stderr_silenced

    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with native_stderr_silenced():
            return run(args)
    finally:
        transformers.logging.set_verbosity(verbosity)


if __name__ == "__main__":
    sys.exit(main())
