"""`tfgen inspect tokens|next|hidden|similarity|params`: look inside a model.

Each subcommand is two functions here, the one that declares its arguments and the one that
runs it (`next_tokens` for `next`, which is a builtin); the table in tfgen/cli/app.py names them.

Examples:
    tfgen inspect tokens "The theory of relativity is"
    tfgen inspect next "The theory of relativity is" -k 5 --model DIR
    tfgen inspect hidden "Hello world" --layer all --json
"""
from __future__ import annotations

import argparse

from tfgen.cli.options import add_model_options, load, print_json, quoted, warn_if_random


# -- tokens ----------------------------------------------------------------------------------------
def tokens_arguments(parser: argparse.ArgumentParser) -> None:
    """TEXT and the model options; `next` and `hidden` start from these too."""
    parser.add_argument("text", metavar="TEXT")
    add_model_options(parser)


def tokens(args: argparse.Namespace) -> int:
    """Token ids and their strings, one per line."""
    generator = load(args)
    ids, strings = generator.tokenize(args.text), generator.tokens(args.text)
    if args.json:
        print_json({"text": args.text, "ids": ids, "tokens": strings})
        return 0
    print(f"{len(ids)} tokens")
    for token_id, token in zip(ids, strings):
        print(f"{token_id:>7}  {quoted(token)}")
    return 0


# -- next ------------------------------------------------------------------------------------------
def next_arguments(parser: argparse.ArgumentParser) -> None:
    tokens_arguments(parser)
    parser.add_argument("-k", type=int, default=10, help="how many tokens (10)")


def next_tokens(args: argparse.Namespace) -> int:
    """The k most likely next tokens as a ranked table."""
    generator = load(args)
    ranked = generator.next_tokens(args.text, k=args.k)
    warn_if_random(generator, "these probabilities are meaningless")
    if args.json:
        print_json({"text": args.text, "next": [
            {"token": token, "id": token_id, "probability": probability}
            for token, token_id, probability in ranked]})
        return 0
    width = max(len(quoted(token)) for token, _, _ in ranked)
    print(f"{'rank':>4}  {'token':<{width}}  {'id':>6}  probability")
    for rank, (token, token_id, probability) in enumerate(ranked, 1):
        print(f"{rank:>4}  {quoted(token):<{width}}  {token_id:>6}  {probability:.6f}")
    return 0


# -- hidden ----------------------------------------------------------------------------------------
def _layer(value: str):
    """--layer's value: an index or 'all'; a word is an argparse error, not a traceback."""
    if value == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {value!r}") from None


def hidden_arguments(parser: argparse.ArgumentParser) -> None:
    tokens_arguments(parser)
    parser.add_argument("--layer", type=_layer, default=-1,
                        help="layer index (0: embeddings, -1: the last, the default) or 'all'")


def hidden(args: argparse.Namespace) -> int:
    """The hidden states' shape and each token's L2 norm: the states themselves are too long to print."""
    import numpy as np

    generator = load(args)
    states = generator.hidden_states(args.text, layer=args.layer)  # [T, H] or [layers, T, H]
    norms = np.linalg.norm(states, axis=-1)
    if args.json:
        print_json({"text": args.text, "layer": args.layer, "shape": list(states.shape),
                    "tokens": generator.tokens(args.text) or [generator.decode([generator.lm.bos_token_id])],
                    "l2_norms": norms.astype(float).round(6).tolist()})
        return 0
    print(f"hidden states of layer {args.layer}: shape {list(states.shape)}"
          f" ({'layers, ' if states.ndim == 3 else ''}tokens, hidden)")
    print("L2 norm per token:")
    for layer, row in (enumerate(norms) if states.ndim == 3 else [(args.layer, norms)]):
        print(f"  layer {layer:>3}: " + " ".join(f"{value:.3f}" for value in row))
    return 0


# -- similarity ------------------------------------------------------------------------------------
def similarity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("word_a", metavar="WORD_A")
    parser.add_argument("word_b", metavar="WORD_B")
    add_model_options(parser)


def similarity(args: argparse.Namespace) -> int:
    """The cosine similarity of two words' input embeddings."""
    generator = load(args)
    value = generator.similarity(args.word_a, args.word_b)
    warn_if_random(generator, "the similarity is meaningless")
    if args.json:
        print_json({"a": args.word_a, "b": args.word_b, "similarity": value})
    else:
        print(f"{value:.6f}")
    return 0


# -- params ----------------------------------------------------------------------------------------
params_arguments = add_model_options


def params(args: argparse.Namespace) -> int:
    """The number of parameters, with the model's name."""
    generator = load(args)
    count = generator.num_parameters
    if args.json:
        print_json({"model": generator.name, "num_parameters": count})
    else:
        print(f"{count:,} parameters ({generator.name})")
    return 0
