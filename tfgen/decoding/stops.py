"""Stop strings inside the compiled loop: each row keeps the last bytes of its generated text.

A row's text is the UTF-8 of its tokens' bytes (byte-level BPE), so a stop string occurs in the
text exactly when its UTF-8 bytes occur in the byte stream. Each row carries a window of the last
`WIDTH` bytes it generated; a step shifts the chosen token's bytes in and the row finishes when a
stop string's bytes lie inside the window. Only the decoding ends here: the text is still cut at
the earliest stop string after decoding, so a stop string too long for the window (or a token
whose bytes are unknown) costs steps, never correctness.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

WIDTH = 32  # bytes of generated text each row keeps; longer stop strings only cut the text
MAX_STOPS = 8  # stop strings checked in the loop (a fixed shape: any number reuses the program)
UNKNOWN = -1  # a byte value no stop string has: the window's start, and tokens without known bytes
PARAM_KEYS = ("stop_bytes", "stop_lengths", "token_bytes", "token_lengths")


def encode(stops: Sequence[str]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Stop strings -> (bytes int32 [MAX_STOPS, WIDTH] left-aligned, lengths int32 [MAX_STOPS]).

    Strings longer than WIDTH bytes, or past the first MAX_STOPS, are left to the text cut; None
    when none is left.
    """
    fitting = [b for b in (s.encode("utf-8") for s in stops) if 0 < len(b) <= WIDTH][:MAX_STOPS]
    if not fitting:
        return None
    table = np.full([MAX_STOPS, WIDTH], UNKNOWN, np.int32)
    lengths = np.zeros([MAX_STOPS], np.int32)
    for row, stop in enumerate(fitting):
        table[row, :len(stop)] = list(stop)
        lengths[row] = len(stop)
    return table, lengths


def token_table(token_bytes: Sequence[Optional[bytes]]) -> Tuple[np.ndarray, np.ndarray]:
    """Per token id its last WIDTH bytes, right-aligned, and how many there are.

    `token_bytes[i]` is the bytes token i adds to the decoded text (b"" for special tokens, which
    decoding skips), or None when unknown: it then counts as one UNKNOWN byte, which no stop
    string matches.
    """
    table = np.full([len(token_bytes), WIDTH], UNKNOWN, np.int32)
    lengths = np.zeros([len(token_bytes)], np.int32)
    for token_id, data in enumerate(token_bytes):
        if data is None:
            lengths[token_id] = 1
            continue
        tail = data[-WIDTH:]
        if tail:
            table[token_id, WIDTH - len(tail):] = list(tail)
        lengths[token_id] = len(tail)
    return table, lengths


def append(window, tokens, token_bytes, token_lengths):
    """Shift each row's chosen token's bytes into its window: [B, WIDTH] -> [B, WIDTH]."""
    width = window.shape[1]
    incoming = tf.gather(token_bytes, tokens)  # [B, W], the token's bytes at the right end
    count = tf.gather(token_lengths, tokens)[:, None]  # [B, 1]
    column = tf.range(width)[None, :]
    kept = tf.gather(window, tf.minimum(column + count, width - 1), batch_dims=1)  # window[b, i + count]
    return tf.where(column < width - count, kept, incoming)


def matches(window, stop_bytes, stop_lengths):
    """bool [B]: whether any stop string's bytes occur inside the row's window.

    The stop strings are one table for every row (bytes [S, WIDTH], lengths [S]) or one per row
    (bytes [B, S, WIDTH], lengths [B, S]; the exported `generate_stop` signature).
    """
    width = window.shape[1]
    if stop_bytes.shape.rank == 2:
        stop_bytes, stop_lengths = stop_bytes[None], stop_lengths[None]
    start = tf.range(width)[:, None]
    offset = tf.range(width)[None, :]
    windows = tf.gather(window, tf.minimum(start + offset, width - 1), axis=1)  # [B, start, offset]
    equal = tf.equal(windows[:, None], stop_bytes[:, :, None, :])  # [B, S, start, offset]
    past_end = offset[None, None] >= stop_lengths[:, :, None, None]
    whole = tf.reduce_all(equal | past_end, axis=-1)  # [B, S, start]
    lengths = stop_lengths[:, :, None]
    fits = (start[None, None, :, 0] + lengths <= width) & (lengths > 0)
    return tf.reduce_any(whole & fits, axis=[1, 2])


def encode_graph(stop):
    """`encode` in the graph, one table per row: stop strings [B, S] -> (bytes int32 [B, MAX_STOPS,
    WIDTH], lengths int32 [B, MAX_STOPS]). Empty strings, strings over WIDTH bytes and columns
    past MAX_STOPS get length 0: the loop ignores them (`cut_graph` still applies every one)."""
    stop = tf.convert_to_tensor(stop, tf.string)
    columns = tf.shape(stop)[1]
    stop = tf.pad(stop[:, :MAX_STOPS], [[0, 0], [0, tf.maximum(MAX_STOPS - columns, 0)]])
    lengths = tf.strings.length(stop)  # bytes
    padded = tf.strings.substr(tf.strings.join([stop, tf.fill(tf.shape(stop), "\0" * WIDTH)]), 0, WIDTH)
    table = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int32)  # [B, MAX_STOPS, WIDTH]
    lengths = tf.where(lengths <= WIDTH, lengths, 0)
    return tf.reshape(table, [-1, MAX_STOPS, WIDTH]), tf.reshape(lengths, [-1, MAX_STOPS])


def cut_graph(text, stop):
    """Each text [B] cut at the earliest occurrence of any of its row's stop strings [B, S] (bytes,
    as `TextGenerator.generate` cuts; empty stop strings are ignored)."""
    text = tf.convert_to_tensor(text, tf.string)
    stop = tf.convert_to_tensor(stop, tf.string)
    pairs_text = tf.reshape(tf.repeat(text[:, None], tf.shape(stop)[1], axis=1), [-1])
    pairs_stop = tf.reshape(stop, [-1])

    def prefix_length(pair):
        row_text, row_stop = pair

        def before_stop():
            pieces = tf.strings.split(tf.reshape(row_text, [1]), sep=row_stop, maxsplit=1).flat_values
            return tf.strings.length(pieces[0])

        return tf.cond(tf.strings.length(row_stop) > 0, before_stop, lambda: tf.strings.length(row_text))

    lengths = tf.reshape(tf.map_fn(prefix_length, (pairs_text, pairs_stop), fn_output_signature=tf.int32),
                         tf.shape(stop))
    cut = tf.reduce_min(tf.concat([lengths, tf.strings.length(text)[:, None]], axis=1), axis=1)
    return tf.strings.substr(text, tf.zeros_like(cut), cut)
