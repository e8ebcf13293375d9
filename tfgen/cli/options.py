"""What the `tfgen` subcommands share: options, the error type, loading and printing.

Nothing here imports TensorFlow at module level: `tfgen --help` builds every parser from these
functions, and it should answer at once. The heavy imports happen inside `load` and
`generation_params`, which only a command's run function calls.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Mapping, Optional

EXIT_USAGE = 2  # bad input: argument, value, file or model spec
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A bad command line; reported as one `error:` line like every other input error."""


def add_model_options(parser: argparse.ArgumentParser,
                      default: str = "smollm2-135m (SmolLM2-135M-Instruct, offline)") -> None:
    """--model, --json and --verbose: every command that loads a model takes them."""
    parser.add_argument("--model", metavar="SPEC", default=None,
                        help=f"the model (default: {default}): smollm2-135m, gguf:PATH "
                             "(a Llama-architecture GGUF file), a save_pretrained directory, a hub id "
                             "(gpt2, distilgpt2, ...) or random:NAME (gpt2, distilgpt2, gpt2-medium, "
                             "gpt2-large, gpt2-xl, tiny)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and transformers' own log messages")


# -- generation options ------------------------------------------------------------------------------
_EARLY_STOPPING = {"true": True, "false": False, "never": "never"}

# Destination -> argparse keywords; the flag is the name with dashes. The names are the keyword
# arguments of `TextGenerator.generate` (Hugging Face's), and the defaults in the help texts are
# the library's: every option defaults to None, "not given".
_GENERATION_ARGUMENTS = {
    "max_new_tokens": dict(type=int, metavar="N", help="tokens to generate at most (20)"),
    "min_new_tokens": dict(type=int, metavar="N", help="no EOS before N tokens (0)"),
    "num_beams": dict(type=int, metavar="N", help="beam search with N beams (1: off)"),
    "do_sample": dict(action="store_const", const=True, help="sample instead of greedy"),
    "temperature": dict(type=float, metavar="T", help="sampling temperature (1.0)"),
    "top_k": dict(type=int, metavar="K", help="sample among the K most likely (50; 0: off)"),
    "top_p": dict(type=float, metavar="P", help="nucleus sampling mass (1.0: off)"),
    "repetition_penalty": dict(type=float, metavar="R", help="1.0: off"),
    "no_repeat_ngram_size": dict(type=int, metavar="N", help="0: off"),
    "length_penalty": dict(type=float, metavar="X", help="beam score / length**X (1.0)"),
    "early_stopping": dict(choices=list(_EARLY_STOPPING), help="beam search stop rule"),
    "num_return_sequences": dict(type=int, metavar="N", help="outputs per prompt (1)"),
    "seed": dict(type=int, metavar="S", help="makes sampling reproducible"),
    "stop": dict(action="append", metavar="STR", help="end the text at STR (repeatable)"),
    "presence_penalty": dict(type=float, metavar="X", help="OpenAI's, over generated tokens, -2..2 (0: off)"),
    "frequency_penalty": dict(type=float, metavar="X", help="OpenAI's, per occurrence, -2..2 (0: off)"),
    "min_p": dict(type=float, metavar="P", help="keep tokens >= P x the most likely's probability (0: off)"),
    "typical_p": dict(type=float, metavar="P", help="locally typical sampling mass (1.0: off)"),
    "logit_bias": dict(action="append", type=lambda v: _bias_entry(v), metavar="ID:BIAS",
                       help="add BIAS to token ID's logit (repeatable; -100 bans, +100 forces)"),
    "suppress_tokens": dict(type=lambda v: _id_list(v), metavar="IDS",
                            help="token ids never generated (1,2,3)"),
    "ignore_eos": dict(action="store_const", const=True, help="generate max-new-tokens even past EOS"),
    "logprobs": dict(type=int, metavar="N", help="each token's log-probability and its N likeliest "
                     "alternatives, 0..20 (with --json: a logprobs list per output)"),
    "raw_logprobs": dict(action="store_const", const=True,
                         help="with --logprobs: also under the model's raw distribution"),
    "eos_token_id": dict(type=lambda v: _id_list(v), metavar="IDS",
                         help="token ids that end a row (1,2; default: the model's)"),
}
GENERATION_OPTIONS = tuple(_GENERATION_ARGUMENTS)


def add_generation_options(parser: argparse.ArgumentParser, title: str,
                           help_overrides: Optional[Mapping[str, str]] = None) -> argparse._ArgumentGroup:
    """Add the decoding options, one per `GENERATION_OPTIONS` name, as a group titled `title`.

    `generate` and `batch` both take them, so both spell and check them the same way.

    Args:
        help_overrides: option name -> help text, for a command whose option means a little
            more (`tfgen batch`'s --seed is a default for rows without one).

    Returns:
        The group, for options only one command has (`tfgen generate --chat`).
    """
    overrides = dict(help_overrides or {})
    unknown = sorted(set(overrides) - set(_GENERATION_ARGUMENTS))
    if unknown:  # a typo here would silently keep the general text
        raise KeyError(f"no generation option named {', '.join(unknown)}")
    group = parser.add_argument_group(title)
    for name, keywords in _GENERATION_ARGUMENTS.items():
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, **{**keywords, "help": overrides.get(name, keywords["help"])})
    return group


def _bias_entry(value: str):
    token, sep, bias = value.partition(":")
    try:
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID:BIAS such as 50256:-100, got {value!r}") from None


def _id_list(value: str):
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {value!r}") from None


def parse_early_stopping(value: str):
    """--early-stopping's word as `GenerationConfig.early_stopping` takes it: True, False or "never"."""
    return _EARLY_STOPPING[value]


def generation_params(args: argparse.Namespace) -> Dict[str, Any]:
    """The generation options the user gave, as `generate` keyword arguments, checked.

    The check runs before any model loads or pipeline starts, so a bad value is reported at once
    instead of after minutes of loading.
    """
    from tfgen.config import GenerationConfig

    params = {name: getattr(args, name) for name in GENERATION_OPTIONS if getattr(args, name) is not None}
    if "early_stopping" in params:
        params["early_stopping"] = parse_early_stopping(params["early_stopping"])
    if "logit_bias" in params:
        params["logit_bias"] = dict(params["logit_bias"])
    GenerationConfig(**params).validate()
    return params


# -- candidates and screening (tfgen generate) -------------------------------------------------------
SCREEN_KEEP_RULES = ("below", "flagged")  # tfgen.screening.KEEP_RULES, spelled here so --help loads no numpy

# Destination -> argparse keywords, as above, for what is not a GenerationConfig field: --best-of
# goes to `generate(best_of=...)`, the rest to `tfgen.screen` (--screen-threshold -> threshold).
# Defaults are None ("not given"); the library's defaults are in the help texts.
_CANDIDATE_ARGUMENTS = {
    "best_of": dict(type=int, metavar="N",
                    help="make N candidates per prompt, print the --num-return-sequences best by the model's "
                         "mean log-probability (sampling: with --do-sample)"),
    "screen": dict(action="store_true",
                   help="sample --num-samples continuations per prompt, score each with the offline "
                        "profanity classifier (pip install tfgen[screen]) and print those kept, with scores"),
    "num_samples": dict(type=int, metavar="N", help="--screen: continuations sampled per prompt (10)"),
    "screen_threshold": dict(type=float, metavar="T", help="--screen: the score that separates kept and "
                                                           "dropped samples (0.5)"),
    "screen_keep": dict(choices=list(SCREEN_KEEP_RULES),
                        help="--screen: keep the samples scoring below T (a safety filter; the default) or "
                             "those flagged, scoring >= T (red-teaming)"),
}


def add_candidate_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--best-of and the --screen options, one per `_CANDIDATE_ARGUMENTS` name, in their own group."""
    group = parser.add_argument_group("best of n and screening")
    for name, keywords in _CANDIDATE_ARGUMENTS.items():
        group.add_argument("--" + name.replace("_", "-"), **keywords)
    return group


_SCREEN_KEYWORDS = {"num_samples": "num_samples", "screen_threshold": "threshold", "screen_keep": "keep"}


def screen_params(args: argparse.Namespace) -> Dict[str, Any]:
    """The --screen options the user gave, as `tfgen.screen` keyword arguments, checked before any
    model loads ({} without --screen, where giving one of them is a mistake)."""
    given = {name: getattr(args, name) for name in _SCREEN_KEYWORDS if getattr(args, name) is not None}
    if not args.screen:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"{flags}: only with --screen")
        return {}
    for other in ("best_of", "num_return_sequences", "num_beams", "stream"):
        if getattr(args, other, None):
            raise UsageError(f"--screen samples --num-samples continuations; it does not combine with "
                             f"--{other.replace('_', '-')}")
    if given.get("num_samples", 1) < 1:
        raise ValueError(f"--num-samples must be >= 1, got {given['num_samples']}")
    if not 0.0 <= given.get("screen_threshold", 0.5) <= 1.0:
        raise ValueError(f"--screen-threshold must be in [0, 1], got {given['screen_threshold']}")
    return {_SCREEN_KEYWORDS[name]: value for name, value in given.items()}


# -- speculative decoding ----------------------------------------------------------------------------
def add_speculative_options(parser: argparse.ArgumentParser) -> None:
    """--speculative, --draft-model and --num-speculative-tokens, in their own group."""
    group = parser.add_argument_group("speculative decoding (the same tokens, fewer model passes)")
    group.add_argument("--speculative", choices=["prompt_lookup"],
                       help="propose continuations of n-grams found in the prompt and the output so far")
    group.add_argument("--draft-model", metavar="SPEC",
                       help="a smaller model with the same tokenizer proposes the tokens (a --model SPEC)")
    group.add_argument("--num-speculative-tokens", type=int, metavar="K",
                       help="tokens proposed per model pass at most, 1..16 (8)")


def speculative_params(args: argparse.Namespace, xla: bool = True) -> Dict[str, Any]:
    """The speculative options as `generate` keyword arguments ({} without them); loads the draft
    model of --draft-model."""
    if args.speculative and args.draft_model:
        raise UsageError("give --speculative prompt_lookup or --draft-model, not both")
    if not (args.speculative or args.draft_model):
        if args.num_speculative_tokens is not None:
            raise UsageError("--num-speculative-tokens: only with --speculative or --draft-model")
        return {}
    if getattr(args, "num_beams", None) and args.num_beams > 1:
        raise UsageError("speculative decoding does not combine with --num-beams > 1")
    params: Dict[str, Any] = {"speculative": args.speculative}
    if args.draft_model:
        import tfgen

        params["speculative"] = tfgen.load(args.draft_model, xla=xla)
    if args.num_speculative_tokens is not None:
        params["num_speculative_tokens"] = args.num_speculative_tokens
    return params


# -- loading and printing ----------------------------------------------------------------------------
def load(args: argparse.Namespace, xla: bool = True):
    """The generator `--model` names; through `tfgen.load`, so tests can replace it there."""
    import tfgen

    return tfgen.load(args.model, xla=xla)


def warn_if_random(generator, consequence: str) -> None:
    """Say on stderr that a random: model's output means nothing, and what to pass instead."""
    if getattr(generator, "random_weights", False):
        print(f"note: {generator.name} has random (untrained) weights, so {consequence}; "
              "pass --model DIR or a hub id for a trained model", file=sys.stderr)


def print_json(value) -> None:
    """One JSON object per line, text as it is (no \\u escapes), flushed for readers of a pipe."""
    print(json.dumps(value, ensure_ascii=False), flush=True)


def quoted(token: str) -> str:
    """A token in quotes, its spaces visible; unlike repr(), byte escapes are not doubled."""
    return "'" + token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + "'"
