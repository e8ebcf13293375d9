"""`tfgen batch`: JSON lines in, generated JSON lines out, as an Apache Beam pipeline.

Flags `tfgen batch` does not know are Beam pipeline options (`--project`, `--region`,
`--temp_location`, `--direct_num_workers`, ...) and go to `PipelineOptions` as they are.

Examples:
    tfgen batch --input prompts.jsonl --output results.jsonl --model random:tiny --max-new-tokens 16
    tfgen batch --input prompts.jsonl --output results.jsonl --workers 2
    tfgen batch --input gs://b/prompts.jsonl --output gs://b/results.jsonl --model gpt2 \\
        --runner DataflowRunner --project P --region us-central1 --temp_location gs://b/tmp \\
        --setup_file ./pyproject.toml
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import types

from tfgen.cli.options import add_generation_options, add_model_options, generation_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Input, output, runner and model; the generation options are the defaults of rows."""
    parser.epilog = ("Input lines are JSON objects with 'prompt' and optional per-row parameters "
                     "(temperature, top_k, top_p, max_new_tokens, seed, ...; the options below are their "
                     "defaults) and any "
                     "other fields, which the output keeps. Flags not listed here are Apache Beam pipeline "
                     "options (e.g. --project, --region, --temp_location, --direct_num_workers).")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="JSON lines, one object per line (or a glob)")
    parser.add_argument("--output", required=True, metavar="PATH", help="results as JSON lines")
    parser.add_argument("--dead-letter", metavar="PATH",
                        help="lines that could not be generated, with the reason (default OUTPUT.dead.jsonl)")
    parser.add_argument("--saved-model", metavar="PATH",
                        help="run an export's 'generate' signature (saved_models/NAME/VERSION) "
                             "instead of --model")
    parser.add_argument("--runner", default="DirectRunner",
                        help="Beam runner: DirectRunner (default), PrismRunner, DataflowRunner, "
                             "FlinkRunner, ...")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="DirectRunner only: N worker processes (multi_processing mode)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="rows per model call: 1, 2, 4, 8, 16, ... (default 8; for --saved-model the "
                             "export's largest batch bucket)")
    parser.add_argument("--num-shards", type=int, default=1, metavar="N",
                        help="output files: 1 (default) writes exactly OUTPUT; 0 lets the runner choose")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-xla", action="store_true", help="run decoding without XLA compilation")
    add_model_options(parser)  # --model, --json (summary as JSON), --verbose
    add_generation_options(
        parser, "generation defaults for rows that do not set them (Hugging Face names)",
        help_overrides={
            "num_return_sequences": "outputs per prompt (1); above 1, text/completion/num_tokens are lists",
            "seed": "seed for rows without one (default: a fresh one)",
        })
    _keep_unknown_flags(parser)


def _keep_unknown_flags(parser: argparse.ArgumentParser) -> None:
    """Collect the flags this subcommand does not know in `args.pipeline_args` instead of failing.

    The top-level parser calls each subparser's parse_known_args and rejects what is left over;
    returning nothing left over hands those flags to Beam.
    """
    known = parser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = known(args, namespace)
        namespace.pipeline_args = list(getattr(namespace, "pipeline_args", None) or []) + extras
        return namespace, []

    parser.parse_known_args = types.MethodType(parse_known_args, parser)
    parser.allow_abbrev = False  # --run must not stand for --runner, nor a Beam flag for one of ours


def run(args: argparse.Namespace) -> int:
    """Check the options, build the model handler, run the pipeline and print the counts."""
    params = generation_params(args)  # before any pipeline starts, so mistakes show at once
    _check_local_path(args.input, "--input")
    _check_model(args.model, args.saved_model)
    if args.num_shards < 0:
        raise ValueError(f"--num-shards must be >= 0, got {args.num_shards}")
    if args.workers is not None and (args.workers < 1 or args.runner != "DirectRunner"):
        raise ValueError("--workers takes N >= 1 and only applies to the DirectRunner")

    if not args.verbose:
        import logging

        logging.getLogger().setLevel(logging.ERROR)  # Beam's INFO/WARNING lines; counters come below
    try:
        from tfgen import beam as tfgen_beam
    except ImportError as error:
        raise ImportError(f"tfgen batch needs Apache Beam: pip install 'tfgen[beam]' ({error})") from None
    if args.saved_model is not None:
        handler = tfgen_beam.SavedModelHandler(args.saved_model, max_batch_size=args.batch_size)
    else:
        handler = tfgen_beam.TFGenModelHandler(args.model, xla=not args.no_xla,
                                               max_batch_size=args.batch_size or 8)
    pipeline_args = [f"--runner={args.runner}"] + list(args.pipeline_args)
    if args.workers is not None:
        pipeline_args += [f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
    model = args.saved_model or args.model or "random:gpt2"
    if args.saved_model is None and model.startswith("random:"):
        print(f"note: {model} has random (untrained) weights, so the generated text is gibberish; "
              "pass --model DIR or a hub id for a trained model", file=sys.stderr)
    dead_letter = args.dead_letter or tfgen_beam.default_dead_letter_path(args.output)
    try:
        counts = tfgen_beam.run_batch(args.input, args.output, handler, dead_letter=dead_letter,
                                      pipeline_args=pipeline_args, progress=not args.no_progress,
                                      num_shards=args.num_shards, **params)
    except (KeyboardInterrupt, ValueError, TypeError):
        raise
    except Exception as error:  # the runner's own failure: one line, not its traceback
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        print(f"error: the pipeline failed: {type(error).__name__}: {last}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"output": args.output, "dead_letter": dead_letter, **counts}))
    else:
        print(f"{counts['ok']} results -> {args.output}, "
              f"{counts['dead_letter']} dead letters -> {dead_letter}"
              + (f", blank lines skipped: {counts['blank']}" if counts["blank"] else ""))
    return 0


def _check_local_path(path: str, what: str) -> None:
    """A missing local input fails here, before the pipeline starts; remote paths and globs pass."""
    if "://" in path or any(c in path for c in "*?["):
        return  # remote or a glob: the runner checks it
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist or is not a file")


def _check_model(spec, saved_model) -> None:
    """Model mistakes the workers would otherwise each hit, reported once, before the pipeline."""
    from tfgen.loading import RANDOM_PRESETS

    if spec is not None and saved_model is not None:
        raise ValueError("give --model or --saved-model, not both")
    if saved_model is not None:
        if "://" not in saved_model and not os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
            raise ValueError(f"--saved-model {saved_model!r} is not a SavedModel directory "
                             "(no saved_model.pb); "
                             "give the version directory, e.g. saved_models/gpt2/1")
    elif spec is not None and spec.startswith("random:") and spec[len("random:"):] not in RANDOM_PRESETS:
        raise ValueError(f"unknown random model {spec[len('random:'):]!r}; choose one of: "
                         f"{', '.join('random:' + n for n in RANDOM_PRESETS)}")
    elif spec is not None and spec.startswith(("/", ".", "~")) and \
            not os.path.isfile(os.path.join(os.path.expanduser(spec), "config.json")):
        raise ValueError(f"model directory {spec!r} does not exist or has no config.json")
