"""What a forward pass over B rows x T positions costs against a one-position pass: the figures
behind speculative decoding's cost model (`tfgen.decoding.speculative.PASS_EXPONENT`).

    python benchmarks/pass_cost.py [--model smollm2-135m] [--slots 256] [--steps 16]

Each shape runs `--steps` forward passes chained in one jit-compiled XLA loop (each pass's argmax
feeds the next, every position's logits computed, as a speculative pass does, writing the cache
at its next slots; attention reads every slot), after a compiling run; the figure is the best of
5, in ms per pass, and the ratio to the 1 x 1 pass. Prints one line per shape and the ratios as JSON.
"""
import argparse
import json
import time

import numpy as np

SHAPES = [(1, 1), (1, 2), (1, 3), (1, 5), (1, 9), (4, 1), (4, 2), (4, 3), (4, 5), (4, 9), (8, 1), (8, 2)]


def measure(lm, batch, positions, slots, steps):
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def run(ids):
        cache = lm.init_cache(batch, slots)
        key_mask = tf.ones([batch, slots], tf.bool)

        def body(i, ids, cache):
            start = i * positions
            where = start + tf.range(positions)[None, :] + tf.zeros([batch, 1], tf.int32)
            logits, cache = lm.forward(ids, where, start, key_mask, cache, all_logits=True)
            return i + 1, tf.argmax(logits, -1, output_type=tf.int32), cache

        return tf.while_loop(lambda i, *rest: i < steps, body, (0, ids, cache))[1]

    ids = tf.constant(np.full((batch, positions), 42, np.int32))
    run(ids).numpy()  # compiles
    times = []
    for _ in range(5):
        began = time.perf_counter()
        run(ids).numpy()
        times.append((time.perf_counter() - began) / steps * 1e3)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--slots", type=int, default=256, help="cache slots (attention length)")
    parser.add_argument("--steps", type=int, default=16, help="passes chained per timed call")
    args = parser.parse_args()
    if args.slots < args.steps * max(t for _, t in SHAPES):
        parser.error("--slots must hold --steps passes of 9 positions")
    import tfgen

    lm = tfgen.load(args.model).lm
    figures = {}
    for batch, positions in SHAPES:
        figures[f"{batch}x{positions}"] = ms = measure(lm, batch, positions, args.slots, args.steps)
        print(f"{batch} rows x {positions} positions: {ms:.2f} ms per pass", flush=True)
    print(json.dumps({shape: round(ms / figures["1x1"], 2) for shape, ms in figures.items()}))


if __name__ == "__main__":
    main()
