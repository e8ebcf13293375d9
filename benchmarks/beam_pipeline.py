"""Batch generation throughput: the Beam pipeline (1 and 2 local worker processes) against a loop.

    python benchmarks/beam_pipeline.py [--model random:gpt2] [--prompts 32] [--new-tokens 16] [--batch-size 8]

The loop is plain Python over `TextGenerator.generate` in batches of --batch-size. It is timed cold
(model load + compilation + generation, what a one-off script pays) and warm (generation only).
The pipeline runs `tfgen.beam.run_batch` on the DirectRunner in multi_processing mode with 1 and
then 2 worker processes, the same model handler batch size and greedy decoding, and is timed
end to end: worker start, model load and compilation in each worker, generation and writing.
Every run gets the same prompts and must return the same texts.
"""
import argparse
import json
import os
import tempfile
import time

import tfgen
from tfgen import beam as tfgen_beam

WORDS = ("The theory of relativity is", "Once upon a time", "The best way to learn a language",
         "In the beginning", "My favourite food", "Tomorrow the weather will be")


def prompts(count: int):
    return [f"{WORDS[i % len(WORDS)]} (prompt {i})" for i in range(count)]


def loop(spec: str, texts, new_tokens: int, batch_size: int):
    started = time.perf_counter()
    generator = tfgen.load(spec)
    loaded = time.perf_counter()
    outputs = []
    for first in range(0, len(texts), batch_size):
        outputs += generator.generate(texts[first:first + batch_size], max_new_tokens=new_tokens)
    cold = time.perf_counter() - started
    # Warm: every shape is compiled now; best of two passes.
    warm = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for first in range(0, len(texts), batch_size):
            generator.generate(texts[first:first + batch_size], max_new_tokens=new_tokens)
        warm = min(warm, time.perf_counter() - start)
    return outputs, {"cold_s": cold, "load_s": loaded - started, "warm_s": warm}


def pipeline(spec: str, texts, new_tokens: int, batch_size: int, workers: int, scratch: str):
    source = os.path.join(scratch, "prompts.jsonl")
    with open(source, "w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"id": i, "prompt": text}) + "\n")
    output = os.path.join(scratch, f"results-{workers}.jsonl")
    handler = tfgen_beam.TFGenModelHandler(spec, max_batch_size=batch_size)
    args = [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    start = time.perf_counter()
    counts = tfgen_beam.run_batch(source, output, handler, pipeline_args=args, progress=False,
                                  max_new_tokens=new_tokens)
    seconds = time.perf_counter() - start
    with open(output, encoding="utf-8") as handle:
        rows = sorted((json.loads(line) for line in handle), key=lambda row: row["id"])
    assert counts["ok"] == len(texts) and counts["dead_letter"] == 0, counts
    return [row["text"] for row in rows], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    args = parser.parse_args()
    texts = prompts(args.prompts)
    n = len(texts)
    print(f"{args.model}, {n} prompts, greedy, {args.new_tokens} new tokens, batch size {args.batch_size}, "
          f"{os.cpu_count()} CPU cores")
    expected, timing = loop(args.model, texts, args.new_tokens, args.batch_size)
    rows = [("python loop over generate, cold (load + compile + generate)", timing["cold_s"]),
            ("python loop over generate, warm (generate only)", timing["warm_s"])]
    with tempfile.TemporaryDirectory() as scratch:
        for workers in [int(w) for w in args.workers.split(",")]:
            texts_out, seconds = pipeline(args.model, texts, args.new_tokens, args.batch_size, workers,
                                          scratch)
            assert texts_out == expected, f"the pipeline with {workers} workers wrote other texts"
            plural = "es" if workers > 1 else ""
            rows.append((f"beam DirectRunner, {workers} worker process{plural}, end to end",
                         seconds))
    width = max(len(name) for name, _ in rows)
    print(f"{'run':<{width}}  {'seconds':>8}  {'prompts/s':>9}  vs warm loop")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.1f}  {n / seconds:9.2f}  {timing['warm_s'] / seconds:10.2f}x")
    print(f"(model load in the loop: {timing['load_s']:.1f} s)")


if __name__ == "__main__":
    main()
