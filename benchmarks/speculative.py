"""Speculative decoding against plain greedy on a real model: tokens/s, tokens per pass, same text.

    python benchmarks/speculative.py [--model smollm2-135m] [--max-new-tokens 96] [--k 4 8]
                                     [--batches 1 4] [--repeats 2]

Random weights say nothing here (their text matches nothing), so this runs a trained model, the
packaged SmolLM2-135M-Instruct by default (`--model gemma3-270m`-style specs work too), greedy,
through its chat template. Two prompt sets written for the benchmark: grounded ones (repeat,
extract from, rewrite or edit a passage given in the prompt, where the answer copies spans of
the prompt: prompt lookup's case) and open-ended ones (stories and explanations, where it finds
little). For each set and batch size it prints plain greedy's and speculative (prompt lookup, each
k) decoding's ms per generated token, tokens/s and speed-up end to end, the decode phase's tokens/s
and speed-up (the prompt's forward pass and first token, timed with max_new_tokens=1, taken off
both sides), generated tokens per model pass, the share of proposed tokens accepted, and whether
every row's tokens equal plain greedy's. A model without a chat template (Gemma 3 270M, a base
model) gets each instruction as plain text followed by a blank line.

Each program is compiled and run once before timing; the figures are the best of --repeats.
"""
import argparse
import time

import numpy as np

PASSAGE = (
    "The Great Barrier Reef is the world's largest coral reef system, composed of over 2,900 "
    "individual reefs and 900 islands stretching for over 2,300 kilometres over an area of "
    "approximately 344,400 square kilometres. The reef is located in the Coral Sea, off the coast "
    "of Queensland, Australia. It can be seen from outer space and is the world's biggest single "
    "structure made by living organisms. This reef structure is composed of and built by billions "
    "of tiny organisms, known as coral polyps."
)
CODE = (
    "def average(values):\n"
    "    total = 0\n"
    "    for value in values:\n"
    "        total = total + value\n"
    "    return total / len(values)\n"
)
GROUNDED = [
    f"Repeat the following passage exactly, word for word:\n\n{PASSAGE}",
    f"Rewrite this function so that it returns 0.0 for an empty list, keeping everything else the same:\n\n"
    f"{CODE}",
    f"Read the passage and list every number it mentions, each with the words around it:\n\n{PASSAGE}",
    f"Copy the passage below, replacing 'reef' with 'REEF' everywhere:\n\n{PASSAGE}",
]
OPEN_ENDED = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain why the sky is blue to a ten-year-old.",
    "Give me three ideas for a birthday party for a friend who loves astronomy.",
    "What are the pros and cons of working from home?",
]


def prompt_text(generator, prompt: str) -> str:
    """The prompt through the chat template; a base model (no template, e.g. Gemma 3 270M) gets
    the instruction as text with a blank line after it."""
    if getattr(generator.tokenizer, "chat_template", None):
        return generator.chat_prompt(prompt)
    return prompt + "\n\n"


def run(generator, prompts, max_new_tokens, repeats, **speculation):
    """(best seconds, per-row token ids, generated tokens, passes, proposed, accepted)."""
    texts = [prompt_text(generator, p) for p in prompts]
    ids_list = [generator.prompt_ids(t) for t in texts]
    from tfgen.decoding.params import left_pad

    ids, mask = left_pad(ids_list, generator.lm.pad_token_id)
    times, result = [], None
    for _ in range(repeats + 1):  # the first call compiles (or restores) the program
        start = time.perf_counter()
        result = generator.generate_ids(ids, mask, max_new_tokens=max_new_tokens, **speculation)
        times.append(time.perf_counter() - start)
    best = min(times[1:])
    rows = [result.sequences[r, ids.shape[1]:ids.shape[1] + n].tolist()
            for r, n in enumerate(result.num_generated)]
    stats = result.speculation
    generated = int(result.num_generated.sum())
    if stats is None:
        return best, rows, generated, generated, 0, 0
    return (best, rows, generated, int(stats.forward_passes.sum()), int(stats.proposed.sum()),
            int(stats.accepted.sum()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import tfgen

    generator = tfgen.load(args.model)
    print(f"{args.model}: greedy, {args.max_new_tokens} new tokens at most, best of {args.repeats}\n")
    header = f"{'set':<11}{'batch':>5}  {'decoding':<18}{'ms/token':>9}{'tokens/s':>9}{'speed-up':>9}" \
             f"{'decode t/s':>10}{'speed-up':>8}{'tok/pass':>9}{'accepted':>9}  same"
    print(header)
    print("-" * len(header))
    for name, prompts in (("grounded", GROUNDED), ("open-ended", OPEN_ENDED)):
        for batch in args.batches:
            chosen = prompts[:batch] if batch <= len(prompts) else (prompts * batch)[:batch]
            if batch == 1:  # each prompt on its own, summed
                cases = [[p] for p in chosen[:len(prompts)]]
            else:
                cases = [chosen]
            # The prompt's forward pass and first token (plain greedy, max_new_tokens=1): the same
            # work on both sides, taken off for the decode-phase figures.
            first = [run(generator, case, 1, args.repeats) for case in cases]
            first_seconds, first_tokens = sum(r[0] for r in first), sum(r[2] for r in first)
            plain = [run(generator, case, args.max_new_tokens, args.repeats) for case in cases]
            plain_seconds = sum(r[0] for r in plain)
            plain_tokens = sum(r[2] for r in plain)
            plain_decode = Rate(plain_seconds - first_seconds, plain_tokens - first_tokens)
            _row(name, batch, "plain greedy", plain_seconds, plain_tokens, plain_tokens, 0, 0, 1.0, True,
                 plain_decode, plain_decode)
            for k in args.k:
                spec = [run(generator, case, args.max_new_tokens, args.repeats, speculative="prompt_lookup",
                            num_speculative_tokens=k) for case in cases]
                same = all(a[1] == b[1] for a, b in zip(plain, spec))
                seconds = sum(r[0] for r in spec)
                tokens = sum(r[2] for r in spec)
                _row(name, batch, f"prompt lookup k={k}", seconds, tokens, sum(r[3] for r in spec),
                     sum(r[4] for r in spec), sum(r[5] for r in spec),
                     (tokens / seconds) / (plain_tokens / plain_seconds), same,
                     Rate(seconds - first_seconds, tokens - first_tokens), plain_decode)
        print()


class Rate:
    """Tokens over seconds of the decode phase (after the prompt's pass and first token)."""

    def __init__(self, seconds: float, tokens: int):
        self.seconds, self.tokens = max(seconds, 1e-9), max(tokens, 1)

    @property
    def per_second(self) -> float:
        return self.tokens / self.seconds


def _row(name, batch, label, seconds, tokens, passes, proposed, accepted, speedup, same, decode, plain_decode):
    """One line: end to end (prompt pass included) ms/token, tokens/s and speed-up; then the decode
    phase's tokens/s and speed-up (the prompt's pass and first token taken off both sides, as
    llama.cpp reports "eval" apart from "prompt eval"); tok/pass is generated tokens per model
    pass (prefill included), accepted the share of proposed tokens kept."""
    rate = f"{accepted / proposed:.0%}" if proposed else "-"
    print(f"{name:<11}{batch:>5}  {label:<18}{1000 * seconds / tokens:>9.2f}{tokens / seconds:>9.1f}"
          f"{speedup:>8.2f}x{decode.per_second:>10.1f}{decode.per_second / plain_decode.per_second:>8.2f}x"
          f"{tokens / passes:>9.2f}{rate:>9}  {'yes' if same else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
