"""Side-by-side decoding benchmark: tfgen against Hugging Face's XLA `generate`, in one process.

Reports ms per generated token for each case, the ratio HF / tfgen (above 1 means tfgen is
faster), the compile count and time for several prompt lengths, and the memory roofline: the
fp32 weight bytes divided by the bandwidth a large matrix-vector product reaches here (a
batch-1 decoding step has to read every weight once, so it cannot be faster than that).
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from tfgen import cache

PROMPT = "The theory of relativity is"


@dataclasses.dataclass
class Case:
    name: str
    batch: int
    params: Dict


CASES = [
    Case("greedy b1", 1, dict()),
    Case("sample top-k 50 + top-p 0.95 b1", 1, dict(do_sample=True, top_k=50, top_p=0.95)),
    Case("greedy b8", 8, dict()),
    Case("beam 4 b1", 1, dict(num_beams=4)),
]


def _large_matrix(megabytes: int):
    rows = int(megabytes * 2**20 / 4 / 4096)
    return tf.Variable(tf.random.normal([rows, 4096])), rows


def matvec_bandwidth(megabytes: int = 256, steps: int = 32, repeats: int = 3, parts: int = 1) -> float:
    """Bytes per second a compiled fp32 matrix-vector product streams from memory, sustained.

    `steps` products of a `megabytes` matrix run back to back in one XLA loop, as a decoding
    loop runs its steps, and the best of `repeats` runs counts: the same statistic the decoding
    figures use (best of a few runs of many steps). `parts` > 1: the matrix is that many row
    blocks, each its own variable, so one product is `parts` independent ones that XLA runs at
    the same time (the split layout, `tfgen.models.base.SplitWeight`): the split floor.
    """
    matrix, rows = _large_matrix(megabytes)
    blocks = [tf.Variable(block) for block in tf.split(matrix, parts)] if parts > 1 else [matrix]

    @tf.function(jit_compile=True)
    def products(vector):
        def body(i, vector, out):
            # carried out of the loop, so computed whole
            out = tf.concat([tf.matmul(block, vector) for block in blocks], axis=0)
            return i + 1, vector + tf.gather(out, [i % rows]) * 1e-6, out

        return tf.while_loop(lambda i, *_: i < steps, body, (0, vector, tf.zeros([rows, 1])))[1:]

    return rows * 4096 * 4 * steps / _fastest(products, tf.random.normal([4096, 1]), repeats)


def peak_matvec_bandwidth(megabytes: int = 256, repeats: int = 20) -> float:
    """The same product timed alone, fastest of `repeats`: the luckiest ~10 ms of the machine."""
    matrix, rows = _large_matrix(megabytes)
    matvec = tf.function(lambda v: tf.matmul(matrix, v), jit_compile=True)
    return rows * 4096 * 4 / _fastest(matvec, tf.random.normal([4096, 1]), repeats)


def _layout_of(generator) -> str:
    """How the adapter's weights are stored: "1 block" or "N blocks" (`TFGEN_SPLIT_PRODUCTS`)."""
    # SplitWeight names its blocks <name>_<i>of<N>, with a "p" when one-row products are padded.
    found = {re.search(r"_\d+of(\d+)(p?)(:\d+)?$", v.name) for v in generator.lm.variables()}
    layouts = sorted({(int(m.group(1)), bool(m.group(2))) for m in found if m})
    return ", ".join(f"{n} blocks{' (rows padded)' if pad else ''}" for n, pad in layouts) or "1 block"


def _fastest(fn, arg, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of fn(arg), after one warm-up call."""
    tf.nest.map_structure(lambda t: t.numpy(), fn(arg))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(arg))
        best = min(best, time.perf_counter() - start)
    return best


def _quiet_transformers(fn: Callable[[], int]) -> Callable[[], int]:
    """fn with transformers' warnings off: tracing `generate` under XLA logs a spurious
    "right-padding was detected" (its check runs on symbolic tensors; the prompts are not padded)."""
    def quiet():
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return fn()
        finally:
            hf_logging.set_verbosity(level)
    return quiet


def _best_of(fn: Callable[[], int], repeats: int):
    """Run fn (returns tokens generated) `repeats` times; the fastest ms per token."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        best = min(best, (time.perf_counter() - start) * 1000 / max(tokens, 1))
    return best


def run(generator, new_tokens: int = 64, repeats: int = 3, prompt_lengths: int = 10,
        cases: Optional[List[Case]] = None, with_hf: bool = True, log=print) -> dict:
    """Benchmark `generator` (a TextGenerator); returns the figures and logs a table."""
    cases = CASES if cases is None else cases
    model = generator.model
    ids = np.asarray([generator.tokenize(PROMPT)], np.int32)
    results = {"cases": [], "new_tokens": new_tokens}
    bandwidth, peak = matvec_bandwidth(), peak_matvec_bandwidth()
    split_bandwidth = matvec_bandwidth(parts=2)
    weight_bytes = generator.num_parameters * 4
    roofline_ms = weight_bytes / bandwidth * 1000
    results.update(bandwidth_gbs=bandwidth / 1e9, peak_bandwidth_gbs=peak / 1e9,
                   split_bandwidth_gbs=split_bandwidth / 1e9, weight_mb=weight_bytes / 1e6,
                   roofline_ms=roofline_ms, split_roofline_ms=weight_bytes / split_bandwidth * 1000,
                   product_layout=_layout_of(generator))
    log(f"model {generator.name}: {generator.num_parameters:,} parameters, {weight_bytes / 1e6:.0f} MB fp32, "
        f"products stored as {results['product_layout']}")
    log(f"matrix-vector bandwidth {bandwidth / 1e9:.1f} GB/s sustained over 32 products "
        f"(one product alone, fastest of 20: {peak / 1e9:.1f} GB/s); split into 2 independent "
        f"products: {split_bandwidth / 1e9:.1f} GB/s")
    log(f"roofline {roofline_ms:.1f} ms/token at batch 1 (at the one-product figure: "
        f"{weight_bytes / peak * 1000:.1f} ms; the split floor: {results['split_roofline_ms']:.1f} ms)")
    if with_hf and not hasattr(model, "generate"):
        log(f"{generator.name} is not a transformers model: no Hugging Face side (see benchmarks/llama.py)")
        with_hf = False
    hf_generate = tf.function(model.generate, jit_compile=True) if with_hf else None
    log(f"{'case':34s} {'tfgen ms/tok':>12s} {'HF ms/tok':>10s} {'HF/tfgen':>9s}")
    for case in cases:
        batch_ids = np.repeat(ids, case.batch, axis=0)
        mask = np.ones_like(batch_ids)
        params = dict(case.params, max_new_tokens=new_tokens)
        if params.get("do_sample"):
            params["seed"] = 0

        def ours():
            result = generator.generate_ids(batch_ids, mask, **params)
            return int(result.num_generated.max())

        ours()  # compile
        ours_ms = _best_of(ours, repeats)
        row = {"case": case.name, "tfgen_ms": ours_ms}
        if hf_generate is not None:
            hf_params = dict(case.params, max_new_tokens=new_tokens, pad_token_id=generator.lm.pad_token_id)
            if hf_params.get("do_sample"):
                hf_params["seed"] = [0, 0]

            @_quiet_transformers
            def hf():
                out = hf_generate(tf.constant(batch_ids), attention_mask=tf.constant(mask), **hf_params)
                return int(out.shape[1] - batch_ids.shape[1])

            hf()
            row["hf_ms"] = _best_of(hf, repeats)
            row["ratio"] = row["hf_ms"] / ours_ms
        if case.batch == 1 and not case.params:
            row["vs_roofline"] = ours_ms / roofline_ms
        results["cases"].append(row)
        hf_text = f"{row['hf_ms']:10.1f} {row['ratio']:8.2f}x" if "hf_ms" in row else ""
        log(f"{case.name:34s} {ours_ms:12.1f} {hf_text}")
    greedy = next((r for r in results["cases"] if r["case"] == "greedy b1"), None)
    sample = next((r for r in results["cases"] if r["case"].startswith("sample")), None)
    if greedy:
        log(f"greedy b1 vs roofline: {greedy['tfgen_ms'] / roofline_ms:.2f}x")
    if greedy and sample:
        log(f"sampling / greedy (tfgen): {sample['tfgen_ms'] / greedy['tfgen_ms']:.2f}x")
    if prompt_lengths:
        results["compile"] = compile_costs(generator, hf_generate, prompt_lengths, log)
    return results


def compile_costs(generator, hf_generate, count: int, log=print) -> dict:
    """Time greedy generation of 8 tokens for `count` new prompt lengths, from cold, on both sides."""
    from tfgen.generator import TextGenerator

    fresh = TextGenerator(generator.model, generator.tokenizer, xla=generator.engine.xla)
    lengths = [3 + 4 * i for i in range(count)]
    out = {"prompt_lengths": lengths}
    start = time.perf_counter()
    with cache.redirected(cache.OFF):  # from cold: a warm cache's programs would be restored, not traced
        for length in lengths:
            fresh.generate_ids(np.full([1, length], 318, np.int32), max_new_tokens=8)
    out["tfgen_s"] = time.perf_counter() - start
    out["tfgen_traces"] = fresh.engine.trace_count
    log(f"{count} prompt lengths {lengths[0]}..{lengths[-1]}: tfgen {out['tfgen_s']:.1f} s, "
        f"{out['tfgen_traces']} compilations")
    if hf_generate is not None:
        hf_cold = tf.function(generator.model.generate, jit_compile=True)

        @_quiet_transformers
        def every_length():
            for length in lengths:
                hf_cold(tf.fill([1, length], 318), max_new_tokens=8, pad_token_id=generator.lm.pad_token_id)
            return 0

        start = time.perf_counter()
        every_length()
        out["hf_s"] = time.perf_counter() - start
        out["hf_traces"] = hf_cold.experimental_get_tracing_count()
        log(f"{count} prompt lengths: HF {out['hf_s']:.1f} s, {out['hf_traces']} compilations")
    return out
