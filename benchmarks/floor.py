"""The floor under a GPT-2 124M decoding step on this machine: its matrix products alone.

    python benchmarks/floor.py [--steps 64] [--repeats 5] [--no-decode]

A decoding step of GPT-2 124M is 48 block products (768x2304, 768x768, 768x3072, 3072x768 per
block, 12 blocks) and the 50257x768 output projection. This runs exactly those products, chained
(each product's output feeds the next one's input, so none can be skipped or reordered), for
`--steps` iterations inside one compiled XLA while loop, as the decoding loop runs them, at batch
1, 4 (beam 4 runs 4 rows) and 8; with nothing else of the step (attention, norms, processors).
It also prints the memory bandwidth: tfgen bench's sustained matrix-vector figure (the
roofline's) and a compiled sum streaming a large array.

Then, unless --no-decode, it runs tfgen and Hugging Face's XLA `generate` in this same process
(greedy batch 1 and 8, beam 4) and prints what the issue's speed targets require next to the
floor: a step cannot take less than its products.
"""
import argparse
import time

import numpy as np
import tensorflow as tf

LAYERS, WIDTH, VOCAB = 12, 768, 50257
BLOCK_SHAPES = [(WIDTH, 3 * WIDTH), (WIDTH, WIDTH), (WIDTH, 4 * WIDTH), (4 * WIDTH, WIDTH)]


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    blocks = [[tf.Variable(rng.standard_normal(s, dtype=np.float32) * 0.02) for s in BLOCK_SHAPES]
              for _ in range(LAYERS)]
    head = tf.Variable(rng.standard_normal((VOCAB, WIDTH), dtype=np.float32) * 0.02)
    return blocks, head


def products_program(blocks, head, steps):
    """One XLA program: `steps` iterations of every product of a step, each fed by the last."""

    def step(i, x, logits):
        h = x
        for block in blocks:
            for weight in block:
                y = tf.matmul(h[:, :weight.shape[0]], weight)
                # Widen to 3072 columns for whichever product comes next (a few KB of copying).
                h = tf.tile(y, [1, 4 * WIDTH // y.shape[1]]) * 0.5
        logits = tf.matmul(h[:, :WIDTH], head, transpose_b=True)
        # The whole [batch, vocab] result is carried out of the iteration (as the decoding loop
        # hands it to the processors); the next input reads one column chosen at run time.
        return i + 1, x + tf.gather(logits, [i % VOCAB], axis=1) * 1e-3, logits

    @tf.function(jit_compile=True)
    def program(x):
        logits = tf.zeros([tf.shape(x)[0], VOCAB])
        return tf.while_loop(lambda i, x, logits: i < steps, step, (0, x, logits))[1:]

    return program


def time_products(batch, steps, repeats, weights):
    program = products_program(*weights, steps)
    x = tf.constant(np.random.default_rng(1).standard_normal((batch, 4 * WIDTH), dtype=np.float32))
    [t.numpy() for t in program(x)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [t.numpy() for t in program(x)]
        times.append((time.perf_counter() - start) * 1000 / steps)
    return min(times), float(np.median(times))


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
    parser.add_argument("--no-decode", action="store_true", help="only the floor, no tfgen/HF runs")
    args = parser.parse_args()

    from tfgen import bench

    weights = _weights()
    weight_mb = (sum(int(np.prod(s)) for s in BLOCK_SHAPES) * LAYERS + VOCAB * WIDTH) * 4 / 1e6
    peak, median = streaming_bandwidth()
    matvec = bench.matvec_bandwidth()
    print(f"bandwidth: matrix-vector product, sustained (tfgen bench's roofline) {matvec / 1e9:.1f} GB/s; "
          f"streaming sum best {peak / 1e9:.1f}, median {median / 1e9:.1f} GB/s")
    print(f"products of one step read {weight_mb:.0f} MB: {weight_mb * 1e9 / matvec:.1f} ms at the "
          f"roofline bandwidth, {weight_mb * 1e9 / median:.1f} ms at the median streaming bandwidth")
    floors = {}
    for batch in (1, 4, 8):
        best, med = time_products(batch, args.steps, args.repeats, weights)
        floors[batch] = best
        print(f"products alone, batch {batch}: {best:.1f} ms/step (median {med:.1f}) "
              f"= {weight_mb / best:.1f} GB/s, {2 * weight_mb / 4 * batch / best:.1f} GFLOP/s")
    if args.no_decode:
        return

    import tfgen

    generator = tfgen.load("random:gpt2")
    results = bench.run(generator, new_tokens=args.steps, repeats=3, prompt_lengths=0,
                        cases=[c for c in bench.CASES if not c.params.get("do_sample")], log=lambda *_: None)
    roofline = results["roofline_ms"]
    print(f"{'case':12s} {'tfgen':>7s} {'HF':>7s} {'target':>22s} {'products alone':>15s}")
    for row in results["cases"]:
        if row["case"] == "greedy b1":
            target, floor = f"<= {1.10 * roofline:.1f} (1.10x roofline)", floors[1]
        else:
            target = f"<= {row['hf_ms'] / 1.3:.1f} (HF / 1.3)"
            floor = floors[8] if "b8" in row["case"] else floors[4]
        print(f"{row['case']:12s} {row['tfgen_ms']:7.1f} {row['hf_ms']:7.1f} {target:>22s} {floor:15.1f}")


if __name__ == "__main__":
    main()
