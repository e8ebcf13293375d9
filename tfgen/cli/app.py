"""The `tfgen` command line: the table of subcommands, the parser built from it, and `main`.

Each subcommand is a `Command`: a function that adds its arguments and a function that runs it
and returns the exit status, both from the command's own module in this package. `COMMANDS`
lists them; add new ones there. The command modules import TensorFlow, transformers and Beam
only inside their run functions, so `tfgen --help` answers without loading any of them.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from typing import Callable, Optional, Sequence

from tfgen.cli import batch, benchmark, cache_commands, generate, inspecting, serving
from tfgen.cli.options import EXIT_INTERRUPTED, EXIT_USAGE, UsageError


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


INSPECT_COMMANDS = [
    Command("tokens", "token ids and token strings of TEXT", inspecting.tokens_arguments, inspecting.tokens),
    Command("next", "the most likely next tokens after TEXT, with probabilities", inspecting.next_arguments,
            inspecting.next_tokens),
    Command("hidden", "hidden states of TEXT: shape and per-token L2 norms", inspecting.hidden_arguments,
            inspecting.hidden),
    Command("similarity", "cosine similarity of two words' input embeddings", inspecting.similarity_arguments,
            inspecting.similarity),
    Command("params", "number of parameters", inspecting.params_arguments, inspecting.params),
]

CACHE_COMMANDS = [
    Command("info", "where tfgen's cache is, its size bound, what it holds", cache_commands.info_arguments,
            cache_commands.info),
    Command("clear", "remove cached programs (--all: also converted weights)", cache_commands.clear_arguments,
            cache_commands.clear),
]

COMMANDS = [
    Command("generate", "continue a prompt", generate.add_arguments, generate.run),
    Command("inspect", "look inside a model: tokens, next, hidden, similarity, params",
            subcommands=INSPECT_COMMANDS),
    Command("export", "export a SavedModel for TensorFlow Serving (validated, atomic)",
            serving.export_arguments, serving.export),
    Command("validate", "check an export as TF Serving would load it, in a fresh process",
            serving.validate_arguments, serving.validate),
    Command("bench", "decoding speed against Hugging Face's XLA generate, with the memory roofline",
            benchmark.add_arguments, benchmark.run),
    Command("batch", "generate for a JSON-lines file with an Apache Beam pipeline (local or Dataflow)",
            batch.add_arguments, batch.run),
    Command("cache", "tfgen's on-disk cache of traced and compiled programs: info, clear",
            subcommands=CACHE_COMMANDS),
]


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits from inside parse_args; we want one line and our status.
    def error(self, message):
        raise UsageError(f"{message} (see: {self.prog} --help)")


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
    """The whole command line's parser, from `COMMANDS`; builds without importing TensorFlow."""
    parser = _Parser(prog="tfgen",
                     description="TensorFlow text generation for GPT-2, Llama, Gemma and KerasHub models.")
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


def console(argv: Optional[Sequence[str]] = None) -> None:
    """The `tfgen` program (console script and `python -m tfgen`): `main`, then exit.

    A process that loaded TensorFlow spends about a second tearing its runtime down at interpreter
    exit, after everything is written. So once `main` returns, the exit handlers run (they remove
    this process's XLA cache directory), the standard streams are flushed and the process ends at
    once with `os._exit`. Commands write their files whole before returning (exports rename into
    place), so nothing is cut short.
    """
    code = main(argv)
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach the reader
            pass
    os._exit(code)


def _quietly(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run without TensorFlow's native log lines and transformers' advice on stderr."""
    from tfgen._keras_env import native_stderr_silenced

    with _transformers_quiet(), native_stderr_silenced():
        return run(args)


@contextlib.contextmanager
def _transformers_quiet():
    """transformers at error verbosity while the block runs, without importing it (its ~2 s import
    is paid only by commands that use it): before its import, its environment variable does it."""
    if "transformers" in sys.modules:
        logging = sys.modules["transformers"].logging
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            yield
        finally:
            logging.set_verbosity(verbosity)
        return
    previous = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = previous
