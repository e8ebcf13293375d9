"""The floor under a GPT-2 124M decoding step on this machine: its matrix products alone.

    python benchmarks/floor.py [--steps 64] [--repeats 5] [--layouts 1 2 2,pad] [--no-decode]

A decoding step of GPT-2 124M is 48 block products (768x2304, 768x768, 768x3072, 3072x768 per
block, 12 blocks) and the 50257x768 output projection. This runs exactly those products, chained
(each product's output feeds the next one's input, so none can be skipped or reordered), for
`--steps` iterations inside one compiled XLA while loop, as the decoding loop runs them, at batch
1, 4 (beam 4 runs 4 rows) and 8; with nothing else of the step (attention, norms, processors).
It also prints the memory bandwidth: tfgen bench's sustained matrix-vector figure (the
roofline's) and a compiled sum streaming a large array.

Each floor is measured for every `--layouts` entry (`TFGEN_SPLIT_PRODUCTS` values: "1" the old
one-matrix layout, "2" two column blocks per matrix, "2,pad" also one-row products run as two rows),
built with the same `projection_weight`/`output_weight` and `dense`/`output_logits` the adapters use,
the layouts' runs interleaved round by round so that a noisy machine shifts them alike.

Then, unless --no-decode, it runs tfgen and Hugging Face's XLA `generate` in this same process
(greedy batch 1 and 8, beam 4) and prints what the issue's speed targets require next to the
floor: a step cannot take less than its products.
"""
import argparse
import os
import time

import numpy as np
import tensorflow as tf

from tfgen.models.base import ProductLayout, dense, output_logits, output_weight, projection_weight

LAYERS, WIDTH, VOCAB = 12, 768, 50257
BLOCK_SHAPES = [(WIDTH, 3 * WIDTH), (WIDTH, WIDTH), (WIDTH, 4 * WIDTH), (4 * WIDTH, WIDTH)]


def _weights(layout, seed=0):
    """The block projections [in, out] and the head [V, D], stored as `layout` stores them."""
    rng = np.random.default_rng(seed)
    blocks = [[projection_weight(rng.standard_normal(s, dtype=np.float32) * 0.02, f"w{i}", layout)
               for i, s in enumerate(BLOCK_SHAPES)] for _ in range(LAYERS)]
    head = output_weight(rng.standard_normal((VOCAB, WIDTH), dtype=np.float32) * 0.02, "head", layout)
    return blocks, head


def products_program(blocks, head, steps):
    """One XLA program: `steps` iterations of every product of a step, each fed by the last."""

    def step(i, x, logits):
        h = x
        for block in blocks:
            for weight in block:
                y = dense(h[:, None, :weight.shape[0]], weight)[:, 0, :]
                # Widen to 3072 columns for whichever product comes next (a few KB of copying).
                h = tf.tile(y, [1, 4 * WIDTH // y.shape[1]]) * 0.5
        logits = output_logits(h[:, :WIDTH], head)
        # The whole [batch, vocab] result is carried out of the iteration (as the decoding loop
        # hands it to the processors); the next input reads one column chosen at run time.
        return i + 1, x + tf.gather(logits, [i % VOCAB], axis=1) * 1e-3, logits

    @tf.function(jit_compile=True)
    def program(x):
        logits = tf.zeros([tf.shape(x)[0], VOCAB])
        return tf.while_loop(lambda i, x, logits: i < steps, step, (0, x, logits))[1:]

    return program


def time_products(batch, steps, repeats, weights_by_layout):
    """{layout: (best, median, spread = slowest / best) ms per step}, the layouts' runs interleaved."""
    programs = {name: products_program(*weights, steps) for name, weights in weights_by_layout.items()}
    x = tf.constant(np.random.default_rng(1).standard_normal((batch, 4 * WIDTH), dtype=np.float32))
    for program in programs.values():
        [t.numpy() for t in program(x)]
    times = {name: [] for name in programs}
    for _ in range(repeats):
        for name, program in programs.items():
            start = time.perf_counter()
            [t.numpy() for t in program(x)]
            times[name].append((time.perf_counter() - start) * 1000 / steps)
    return {name: (min(t), float(np.median(t)), max(t) / min(t)) for name, t in times.items()}


def streaming_bandwidth(megabytes=256, repeats=20):
    """Bytes per second a compiled sum over a large array reads (both cores), best and median."""
    data = tf.Variable(tf.random.normal([megabytes * 2**20 // 4 // 4096, 4096]))
    total = tf.function(lambda: tf.reduce_sum(data), jit_compile=True)
    total().numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total().numpy()
        times.append(time.perf_counter() - start)
    size = megabytes * 2**20
    return size / min(times), size / float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layouts", nargs="+", default=["1", "2", "2,pad"],
                        help="TFGEN_SPLIT_PRODUCTS values to compare (the first is the baseline)")
    parser.add_argument("--no-decode", action="store_true", help="only the floor, no tfgen/HF runs")
    args = parser.parse_args()

    from tfgen import bench

    layouts = {name: _layout(name) for name in args.layouts}
    weights = {name: _weights(layout) for name, layout in layouts.items()}
    print(f"load before: {os.getloadavg()[0]:.1f} (1-minute; on 2 cores above ~0.5 the figures are noisy)")
    weight_mb = (sum(int(np.prod(s)) for s in BLOCK_SHAPES) * LAYERS + VOCAB * WIDTH) * 4 / 1e6
    peak, median = streaming_bandwidth()
    matvec = bench.matvec_bandwidth()
    print(f"bandwidth: matrix-vector product, sustained (tfgen bench's roofline) {matvec / 1e9:.1f} GB/s; "
          f"streaming sum best {peak / 1e9:.1f}, median {median / 1e9:.1f} GB/s")
    print(f"products of one step read {weight_mb:.0f} MB: {weight_mb * 1e9 / matvec:.1f} ms at the "
          f"roofline bandwidth, {weight_mb * 1e9 / median:.1f} ms at the median streaming bandwidth")
    floors = {}  # batch -> layout -> best ms
    baseline = args.layouts[0]
    for batch in (1, 4, 8):
        figures = time_products(batch, args.steps, args.repeats, weights)
        floors[batch] = {name: best for name, (best, _, _) in figures.items()}
        for name, (best, med, spread) in figures.items():
            print(f"products alone, batch {batch}, layout {name:6s}: {best:5.1f} ms/step (median {med:.1f}, "
                  f"spread {spread:.2f}) = {weight_mb / best:5.1f} GB/s; "
                  f"{figures[baseline][0] / best:.2f}x layout {baseline}")
    if args.no_decode:
        return

    import tfgen

    # tfgen for each layout (read at load time) and Hugging Face's XLA generate, in this process.
    cases = [c for c in bench.CASES if not c.params.get("do_sample")]
    print(f"load before decoding: {os.getloadavg()[0]:.1f}")
    print(f"{'case':12s} {'layout':>6s} {'tfgen':>7s} {'HF':>7s} {'HF/tfgen':>9s} {'target':>8s} "
          f"{'products alone':>15s}")
    for name in args.layouts:
        os.environ["TFGEN_SPLIT_PRODUCTS"] = name
        generator = tfgen.load("random:gpt2")
        results = bench.run(generator, new_tokens=args.steps, repeats=3, prompt_lengths=0, cases=cases,
                            log=lambda *_: None)
        for row in results["cases"]:
            batch = 1 if row["case"] == "greedy b1" else 8 if "b8" in row["case"] else 4
            met = "met" if row["ratio"] >= 1.2 else "missed"
            print(f"{row['case']:12s} {name:>6s} {row['tfgen_ms']:7.1f} {row['hf_ms']:7.1f} "
                  f"{row['ratio']:8.2f}x {'>=1.2x ' + met:>8s} {floors[batch][name]:15.1f}")
        del generator
    print(f"load after: {os.getloadavg()[0]:.1f}")


def _layout(name):
    """The `ProductLayout` a `TFGEN_SPLIT_PRODUCTS` value means (the variable left as it was)."""
    previous = os.environ.get("TFGEN_SPLIT_PRODUCTS")
    os.environ["TFGEN_SPLIT_PRODUCTS"] = name
    try:
        return ProductLayout.from_environment()
    finally:
        if previous is None:
            del os.environ["TFGEN_SPLIT_PRODUCTS"]
        else:
            os.environ["TFGEN_SPLIT_PRODUCTS"] = previous


if __name__ == "__main__":
    main()
