"""Compilation: one trace per (strategy, bucket), whatever the prompt lengths, batch sizes and
parameter values inside the bucket."""
import numpy as np

import tfgen
from tfgen.decoding.params import PROMPT_BUCKETS, bucket

PAD = 50256


def random_batch(rng, lengths):
    """Left-padded random prompts of the given lengths: (ids, mask)."""
    width = max(lengths)
    ids = np.full([len(lengths), width], PAD, np.int32)
    mask = np.zeros([len(lengths), width], np.int32)
    for row, length in enumerate(lengths):
        ids[row, width - length:] = rng.integers(0, 50256, size=length)
        mask[row, width - length:] = 1
    return ids, mask


def sampling_params(rng, index, batch):
    """Greedy or sampling, scalars or per-row arrays, different values on every call."""
    params = dict(max_new_tokens=int(rng.integers(1, 17)), seed=int(rng.integers(0, 2**31)))
    if index % 3 == 0:
        params.update(repetition_penalty=float(rng.uniform(1.0, 1.5)), no_repeat_ngram_size=int(index % 4))
        return params  # greedy
    params.update(do_sample=True, temperature=float(rng.uniform(0.3, 1.5)), top_k=int(rng.integers(0, 100)),
                  top_p=float(rng.uniform(0.5, 1.0)))
    if index % 3 == 2:  # per-row values
        params.update(temperature=rng.uniform(0.3, 1.5, size=batch).tolist(),
                      top_k=rng.integers(0, 100, size=batch).tolist(),
                      top_p=rng.uniform(0.5, 1.0, size=batch).tolist(),
                      max_new_tokens=rng.integers(1, 17, size=batch).tolist(),
                      seed=rng.integers(0, 2**31, size=batch).tolist())
    return params


def test_one_trace_per_strategy_and_bucket(tiny, tmp_path, monkeypatch):
    """20 prompt groups of lengths 3..40 (3 or 4 rows: batch bucket 4, prompt buckets 8-64), greedy
    and sampling with mixed parameters, beam search in two prompt buckets, and generate() on text:
    each (strategy, bucket) traces once, and a second round with new lengths and values traces
    nothing."""
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))  # an empty program cache: nothing to restore
    gen = tfgen.TextGenerator(tiny.model, tiny.tokenizer)
    engine = gen.engine
    assert engine.trace_count == 0
    rng = np.random.default_rng(0)
    lengths = np.linspace(3, 40, 20).round().astype(int)
    expected = set()
    for rounds in range(2):
        for index, length in enumerate(lengths):
            length = int(length) - rounds  # the second round: other lengths, same buckets
            batch = 3 + (index + rounds) % 2
            rows = [max(3, length - 2 * row) for row in range(batch)]
            ids, mask = random_batch(rng, rows)
            result = gen.generate_ids(ids, mask, **sampling_params(rng, index + rounds, batch))
            assert result.sequences.shape[0] == batch
            expected.add(("sample", 4, bucket(length, PROMPT_BUCKETS), 16))
        for index, length in enumerate([3, 7, 9, 16]):
            batch = 3 + (index + rounds) % 2
            ids, mask = random_batch(rng, [max(1, length - row) for row in range(batch)])
            result = gen.generate_ids(ids, mask, num_beams=3, num_return_sequences=2,
                                      max_new_tokens=int(rng.integers(2, 17)),
                                      length_penalty=float(rng.uniform(-1, 2)),
                                      early_stopping=[True, False, "never"][index % 3],
                                      repetition_penalty=float(rng.uniform(1.0, 1.5)))
            assert result.sequences.shape[0] == 2 * batch
            expected.add(("beam", 4, bucket(length, PROMPT_BUCKETS), 16, 3, 2))
        # The text API goes through the same programs.
        prompts = ["Hello", "The theory of relativity is", "Once upon a time there", "I like"]
        gen.generate(prompts[rounds:], max_new_tokens=5 + rounds)
        gen.generate(prompts[:3 + rounds], max_new_tokens=9, do_sample=True, top_p=0.8, seed=rounds)
        if rounds == 0:
            first_round = dict(engine.traces)
    assert set(engine.traces) == expected
    assert engine.traces == first_round
    assert all(count == 1 for count in engine.traces.values()), engine.traces
    assert engine.trace_count == len(expected) == 6

