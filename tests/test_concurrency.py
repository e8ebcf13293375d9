"""One TextGenerator shared by many threads: every call's output equals the same call made alone.

The engine's compiled programs, the program cache and the tokenizer are shared by all callers of a
generator. Eight threads issue mixed requests (greedy, seeded sampling with per-row parameters,
beam search, stop strings, batches of different sizes) at once, first while the programs are still
being traced and compiled (the threads race for the first compile), then warm; the reference is the
same requests run one after another on one thread. Streams from several threads at once must equal
the serial streams piece for piece.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

THREADS = 8
# Prompts under 8 tokens and max_new_tokens <= 8 keep every request in one prompt bucket and one
# step bucket, so the whole file compiles a handful of programs.
REQUESTS = [
    (["The theory of relativity is"], dict(max_new_tokens=6)),
    (["Hello", "Once upon a time", ""], dict(max_new_tokens=5)),
    (["The sky is"], dict(max_new_tokens=6, do_sample=True, seed=7, temperature=0.7)),
    (["The sky is", "My name is"], dict(max_new_tokens=[6, 3], do_sample=True, seed=[8, 9], top_k=[5, 0],
                                        top_p=[1.0, 0.5])),
    (["In the beginning"], dict(max_new_tokens=6, num_beams=2, num_return_sequences=2)),
    (["Hello, my name is"], dict(max_new_tokens=6, repetition_penalty=1.3)),
    (["The sky is"], dict(max_new_tokens=8, do_sample=True, seed=7, stop=[" the", "."])),
    (["A", "B", "C", "D"], dict(max_new_tokens=4, do_sample=True, seed=[1, 2, 3, 4], temperature=1.5)),
]
STREAMS = [
    ("The theory of relativity is", dict(max_new_tokens=8)),
    ("Hello", dict(max_new_tokens=8, do_sample=True, seed=3)),
    ("Once upon a time", dict(max_new_tokens=8, do_sample=True, seed=4, top_k=10, temperature=0.8)),
    ("My name is", dict(max_new_tokens=8, stop=["."])),
]


def _generate(generator, request):
    prompts, params = request
    return generator.generate(list(prompts), **params)


def _in_threads(function, items, rounds=1):
    """function(item) for every item, `rounds` times over, from THREADS threads released together."""
    work = [item for _ in range(rounds) for item in items]
    barrier = threading.Barrier(min(THREADS, len(work)))

    def call(item):
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass  # fewer items left than threads: start anyway
        return function(item)

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(call, work))


@pytest.fixture(scope="module")
def generator():
    """A fresh random:tiny (nothing compiled yet, so the first threaded round races to compile)."""
    import tfgen

    return tfgen.load("random:tiny", seed=0)


def test_generate_from_eight_threads_equals_serial(generator):
    cold = _in_threads(lambda request: _generate(generator, request), REQUESTS)
    serial = [_generate(generator, request) for request in REQUESTS]
    warm = _in_threads(lambda request: _generate(generator, request), REQUESTS, rounds=2)
    assert cold == serial
    assert warm == serial * 2
    assert all(isinstance(text, str) for texts in serial for text in texts)


def test_streams_from_several_threads_equal_serial_streams(generator):
    def stream(item):
        prompt, params = item
        return list(generator.stream(prompt, **params))

    threaded = _in_threads(stream, STREAMS, rounds=2)
    serial = [stream(item) for item in STREAMS]
    assert threaded == serial * 2
    # A stream is the generate call's continuation, piece by piece.
    for (prompt, params), pieces in zip(STREAMS, serial):
        assert prompt + "".join(pieces) == generator.generate(prompt, **params)


def test_generate_and_stream_interleaved(generator):
    """Streams and batch calls at once share the engine: neither disturbs the other."""
    items = [("generate", request) for request in REQUESTS[:4]] + [("stream", item) for item in STREAMS]

    def run(item):
        kind, payload = item
        if kind == "generate":
            return _generate(generator, payload)
        return list(generator.stream(payload[0], **payload[1]))

    expected = [run(item) for item in items]
    assert _in_threads(run, items, rounds=2) == expected * 2
