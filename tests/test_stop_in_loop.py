"""Stop strings end a row's decoding inside the compiled loop (not only its text afterwards)."""
import numpy as np
import pytest
import tensorflow as tf

from tfgen.decoding import stops
from tfgen.decoding.params import left_pad

PROMPT = "The theory of relativity is"


def test_window_and_match_equal_a_plain_bytes_search():
    """Random byte tokens shifted into the window; a match must equal `stop in text[-WIDTH:]`."""
    rng = np.random.default_rng(0)
    vocab = [bytes(rng.integers(97, 100, size=rng.integers(0, 5)).tolist()) for _ in range(40)]
    vocab[0] = None  # unknown bytes: one byte that matches nothing
    table, lengths = stops.token_table(vocab)
    stop_strings = ["ab", "cca", "b", "abcabca"]
    stop_bytes, stop_lengths = stops.encode(stop_strings)
    rows = 6
    window = tf.fill([rows, stops.WIDTH], stops.UNKNOWN)
    streams = [[] for _ in range(rows)]  # each row's bytes, an unknown token as -1
    for _ in range(30):
        tokens = rng.integers(0, len(vocab), size=rows)
        window = stops.append(window, tf.constant(tokens, tf.int32), tf.constant(table), tf.constant(lengths))
        for row, token in enumerate(tokens):
            streams[row] += [-1] if vocab[token] is None else list(vocab[token])
        expected_windows = [([stops.UNKNOWN] * stops.WIDTH + b)[-stops.WIDTH:] for b in streams]
        assert window.numpy().tolist() == expected_windows
        got = stops.matches(window, tf.constant(stop_bytes), tf.constant(stop_lengths)).numpy()
        texts = [bytes(b if b >= 0 else 0xFF for b in stream[-stops.WIDTH:]) for stream in streams]
        assert got.tolist() == [any(s.encode() in t for s in stop_strings) for t in texts]


def test_encode_leaves_long_and_empty_stops_to_the_text_cut():
    assert stops.encode(["", "x" * (stops.WIDTH + 1)]) is None
    table, lengths = stops.encode(["é", "x" * (stops.WIDTH + 1), "\n\n"])
    assert lengths[:2].tolist() == [2, 2] and table[0, :2].tolist() == list("é".encode())


def _first_hit(tiny, tokens, stop):
    """Independent count: how many tokens until the decoded text first contains `stop`."""
    for count in range(1, len(tokens) + 1):
        if stop in tiny.tokenizer.decode(tokens[:count], skip_special_tokens=True):
            return count
    return None


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])
def test_rows_stop_decoding_at_the_stop_string(tiny, sampling):
    params = dict(max_new_tokens=24, do_sample=sampling, seed=11)
    prompts = [PROMPT, "Hello, my name is"]
    ids, mask = left_pad([tiny.tokenize(p) for p in prompts], tiny.lm.pad_token_id)
    free = tiny.generate_ids(ids, mask, **params)
    row0 = free.sequences[0, ids.shape[1]:ids.shape[1] + free.num_generated[0]].tolist()
    text = tiny.tokenizer.decode(row0, skip_special_tokens=True)
    stop = text[len(text) // 3: len(text) // 3 + 2]
    assert stop.strip()
    expected = _first_hit(tiny, row0, stop)
    stopped = tiny.generate_ids(ids, mask, stop=[stop], **params)
    assert stopped.num_generated[0] == expected < free.num_generated[0]
    # The tokens up to the stop are the same; row 1 ends at its own first hit (or runs to the end).
    assert stopped.sequences[0, :ids.shape[1] + expected].tolist() == \
        free.sequences[0, :ids.shape[1] + expected].tolist()
    row1 = free.sequences[1, ids.shape[1]:ids.shape[1] + free.num_generated[1]].tolist()
    assert stopped.num_generated[1] == (_first_hit(tiny, row1, stop) or free.num_generated[1])
    # The text API cuts the stop string off as before.
    assert tiny.generate(PROMPT, stop=stop, return_full_text=False, **params) == text[:text.find(stop)]


def test_stop_strings_share_one_program_per_bucket(tiny):
    before = tiny.engine.trace_count
    for stop in (["xq"], ["a", "b", "c"], ["zz", "\n"]):
        tiny.generate(PROMPT, stop=stop, max_new_tokens=5)
    assert tiny.engine.trace_count - before <= 1
