"""`tfgen export` and `tfgen validate`: SavedModels for TensorFlow Serving.

Examples:
    tfgen export gpt2 --name gpt2 --out saved_models
    tfgen validate saved_models/gpt2/1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

from tfgen.cli.options import add_model_options


# -- export --------------------------------------------------------------------------------------
def _int_list(value: str) -> List[int]:
    """A comma-separated list of integers, e.g. --batch-buckets 1,8."""
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not items:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return items


def export_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the export goes, which signatures it has, and the shapes they are compiled for."""
    parser.add_argument("spec", nargs="?", default=None, metavar="SPEC",
                        help="model to export (as --model); default: the built-in model")
    parser.add_argument("--name", required=True,
                        help="model name: the directory under --out and TF Serving's name")
    parser.add_argument("--out", default="saved_models", help="export root (default: saved_models)")
    parser.add_argument("--version", type=int, default=None, help="version number (default: the next one)")
    parser.add_argument("--strategies", default="greedy,sample,beam",
                        help="signatures to export besides serving_default/generate_ids: "
                             "sample -> generate, beam -> beam, stop -> generate_stop (per-row stop "
                             "strings), logprobs -> generate_logprobs (per-token log-probabilities and "
                             "top alternatives), speculative -> greedy_speculative (prompt lookup) "
                             "(default: greedy,sample,beam)")
    parser.add_argument("--max-prompt-tokens", type=int, default=128,
                        help="longer prompts keep their last N tokens (default 128)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="the most new tokens per request (default 64)")
    parser.add_argument("--num-beams", type=int, default=4, help="beams of the beam signature (default 4)")
    parser.add_argument("--num-return-sequences", type=int, default=1,
                        help="texts the beam signature returns per prompt (default 1)")
    parser.add_argument("--batch-buckets", type=_int_list, default=[1, 8],
                        help="batch sizes compiled for, TF Serving's allowed_batch_sizes (default 1,8)")
    parser.add_argument("--prompt-buckets", type=_int_list, default=None,
                        help="prompt lengths compiled for (default: 32,64 below --max-prompt-tokens, and it)")
    parser.add_argument("--no-xla", action="store_true", help="do not jit-compile the decoding loop")
    parser.add_argument("--no-validate", action="store_true", help="skip the fresh-process validation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    parser.add_argument("--no-progress", action="store_true",
                        help="no step lines or progress bar on stderr (errors are still printed)")
    add_model_options(parser)


def export(args: argparse.Namespace) -> int:
    """Export, then print the version directory and the command that serves it."""
    import tfgen
    from tfgen.export import ExportError, serving_files

    if args.spec is not None and args.model is not None and args.spec != args.model:
        raise ValueError(f"give the model once: SPEC {args.spec!r} or --model {args.model!r}")
    generator = tfgen.load(args.spec or args.model, xla=not args.no_xla)
    model_dir = os.path.join(args.out, args.name)
    try:
        path = tfgen.export_saved_model(
            generator, model_dir, version=args.version, strategies=args.strategies,
            max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams, num_return_sequences=args.num_return_sequences,
            batch_buckets=args.batch_buckets, prompt_buckets=args.prompt_buckets, xla=not args.no_xla,
            overwrite=args.overwrite, validate=not args.no_validate, progress=not args.no_progress)
    except ExportError as error:  # the export's own failure (exit 1), not a usage error (2)
        print(f"error: {error}", file=sys.stderr)
        return 1
    command = " ".join(serving_files.server_command(os.path.abspath(model_dir)))
    if args.json:
        print(json.dumps({"path": path, "model_dir": model_dir, "serve": command}))
    else:
        print(f"exported {path}")
        print(f"serve it with: {command}")
        from tfgen.export.validation import XLA_CACHE

        if os.path.isdir(os.path.join(path, XLA_CACHE)):
            print(f"start warm (same TensorFlow and CPU as here): TFGEN_WARM_START=1 {model_dir}/serve.sh")
    return 0


# -- validate ------------------------------------------------------------------------------------
def validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="a version directory, e.g. saved_models/NAME/1")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def validate(args: argparse.Namespace) -> int:
    """Run the fresh-process checks; exit 1 when any fails."""
    from tfgen.export import run_validation

    quiet = args.json
    report = run_validation(args.path, log=(lambda line: None) if quiet else print)
    if quiet:
        print(json.dumps(report))
    else:
        print("validation " + ("passed" if report["ok"] else "FAILED"))
    return 0 if report["ok"] else 1
