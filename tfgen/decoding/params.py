"""The decoding loops' parameter contract: typed records, shape buckets, padding and seeds.

Everything a loop takes besides the model and the token ids is one of the records below, built by
one function each (`sampling_params`, `beam_params`) from numpy values (the Python API, through
`tfgen.decoding.engine`) or from tensors (the exported signatures, `tfgen.export.module`): the same
names, fillers and ranges (`tfgen.config.ROW_FIELDS`) in both. Batches are padded up to a batch
bucket, prompts left-padded up to a length bucket and the step count rounded up to a step bucket,
so a new length, batch size or parameter value inside a bucket reuses the compiled program.
"""
from __future__ import annotations

import bisect
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfgen.config import ROW_FIELD, ROW_FIELDS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PROMPT_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
STEP_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class StopTables(NamedTuple):
    """Stop strings for the in-loop check (`tfgen.decoding.stops`).

    stop_bytes int32 [S, WIDTH] (one table for all rows) or [B, S, WIDTH] (one per row),
    stop_lengths int32 [S] or [B, S]; token_bytes int32 [V, WIDTH], token_lengths int32 [V].
    """

    stop_bytes: tf.Tensor
    stop_lengths: tf.Tensor
    token_bytes: tf.Tensor
    token_lengths: tf.Tensor


class TokenRules(NamedTuple):
    """Per-call token controls, each None when not given (the loop then skips it entirely).

    logit_bias float32 [V]; bad_words int32 [S, W] (banned sequences right-aligned, left-padded
    with -1); suppress / begin_suppress bool [V] (tokens never generated / not as the first one).
    """

    logit_bias: Optional[tf.Tensor] = None
    bad_words: Optional[tf.Tensor] = None
    suppress: Optional[tf.Tensor] = None
    begin_suppress: Optional[tf.Tensor] = None


class SamplingParams(NamedTuple):
    """What greedy search and sampling take (`tfgen.decoding.sampling.loop`).

    The fields up to ignore_eos are per row [B] (`tfgen.config.ROW_FIELDS`); then scalars:
    first_slot is the slot of the longest prompt's first token (slots before it are bucket
    padding); eos_mask bool [V] marks every token that ends a row (`eos_mask`). `rules` holds the
    per-call token controls; `stops` None: no stop strings end rows
    inside the loop.
    """

    max_new_tokens: tf.Tensor
    top_k: tf.Tensor
    repetition_penalty: tf.Tensor
    top_p: tf.Tensor
    temperature: tf.Tensor
    seed: tf.Tensor
    min_new_tokens: tf.Tensor
    presence_penalty: tf.Tensor
    frequency_penalty: tf.Tensor
    min_p: tf.Tensor
    typical_p: tf.Tensor
    do_sample: tf.Tensor
    ignore_eos: tf.Tensor
    no_repeat_ngram_size: tf.Tensor
    eos_mask: tf.Tensor
    pad_token_id: tf.Tensor
    first_slot: tf.Tensor
    rules: TokenRules = TokenRules()
    stops: Optional[StopTables] = None


class BeamParams(NamedTuple):
    """What beam search takes (`tfgen.decoding.beam_search.loop`).

    repetition_penalty is per running beam [B * num_beams]; every other field is a scalar:
    max_new_tokens, length_penalty, early_stopping_true / early_stopping_never (Hugging Face's
    early_stopping True / "never"), and the processor settings as in `SamplingParams`.
    """

    repetition_penalty: tf.Tensor
    max_new_tokens: tf.Tensor
    length_penalty: tf.Tensor
    early_stopping_true: tf.Tensor
    early_stopping_never: tf.Tensor
    min_new_tokens: tf.Tensor
    no_repeat_ngram_size: tf.Tensor
    eos_mask: tf.Tensor
    pad_token_id: tf.Tensor
    first_slot: tf.Tensor
    rules: TokenRules = TokenRules()


# -- buckets ------------------------------------------------------------------------------------
def bucket(value: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= value (values past the last bucket round up to a multiple of it)."""
    index = bisect.bisect_left(buckets, value)
    if index < len(buckets):
        return buckets[index]
    step = buckets[-1]
    return -(-value // step) * step


def bucket_graph(value, buckets: Sequence[int]):
    """`bucket` as graph ops on an int32 scalar tensor."""
    table = tf.constant(list(buckets), tf.int32)
    index = tf.searchsorted(table, tf.reshape(value, [1]), side="left")[0]
    last = table[-1]
    over = (value + last - 1) // last * last
    return tf.where(index < tf.size(table), tf.gather(table, tf.minimum(index, tf.size(table) - 1)), over)


# -- padding ------------------------------------------------------------------------------------
def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids, mask) int32 [len(rows), longest], each row right-aligned."""
    longest = max(len(ids) for ids in rows)
    ids = np.full([len(rows), longest], pad_id, np.int32)
    mask = np.zeros([len(rows), longest], np.int32)
    for row, tokens in enumerate(rows):
        ids[row, longest - len(tokens):] = tokens
        mask[row, longest - len(tokens):] = 1
    return ids, mask


def pad_to_buckets(ids: np.ndarray, mask: np.ndarray, pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """Left-padded [B, P] arrays widened to [batch bucket, prompt bucket].

    Filler rows copy the first row: beam search's stop test looks at every row, so a filler row
    unlike the real ones could keep the loop running where Hugging Face stops; a copy never does.
    """
    batch, length = ids.shape
    padded_batch, padded_length = bucket(batch, BATCH_BUCKETS), bucket(length, PROMPT_BUCKETS)
    out_ids = np.full([padded_batch, padded_length], pad_id, np.int32)
    out_mask = np.zeros([padded_batch, padded_length], np.int32)
    out_ids[:batch, padded_length - length:] = ids
    out_mask[:batch, padded_length - length:] = mask
    out_ids[batch:], out_mask[batch:] = out_ids[0], out_mask[0]
    return out_ids, out_mask


def left_pad_graph(ragged, length, batch, pad_id):
    """`left_pad` + `pad_to_buckets` in the graph: ragged int32 [n, None] -> (ids, mask) [batch, length].

    Rows n..batch-1 (filler up to the batch bucket) copy row 0, as in `pad_to_buckets`.
    """
    n = ragged.nrows(out_type=tf.int32)
    ragged = tf.gather(ragged, tf.concat([tf.range(n), tf.zeros([batch - n], tf.int32)], 0))
    lengths = tf.cast(ragged.row_lengths(), tf.int32)
    flat = ragged.flat_values
    starts = tf.concat([[0], tf.cumsum(lengths)[:-1]], 0)
    column = tf.range(length)[None, :]
    offset = column - (length - lengths[:, None])  # index inside the row; < 0 is padding
    mask = offset >= 0
    ids = tf.where(mask, tf.gather(flat, tf.maximum(starts[:, None] + offset, 0)), pad_id)
    return ids, tf.cast(mask, tf.int32)


# -- seeds --------------------------------------------------------------------------------------
def fresh_seeds(count: int) -> np.ndarray:
    """`count` new random seeds (for rows that give none), int64."""
    return np.random.default_rng().integers(0, 2**62, size=count)


def row_seeds(seed, batch: int) -> np.ndarray:
    """The seed of each row: `seed` is None (fresh seeds), one seed, or one per row (None entries
    get fresh ones). int64 [batch]."""
    if seed is None:
        return fresh_seeds(batch)
    values = np.asarray(seed, dtype=object)
    if values.ndim == 0:
        return np.full([batch], int(seed), np.int64)
    fresh = fresh_seeds(len(values))
    return np.array([fresh[i] if value is None else int(value) for i, value in enumerate(values)], np.int64)


def derive_seed(seed: int, copy: int) -> int:
    """The seed of the copy-th returned sequence of a prompt (copy 0 keeps the seed itself)."""
    if copy == 0:
        return int(seed)
    mixed = (int(seed) + copy * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    mixed = ((mixed ^ (mixed >> 31)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return (mixed ^ (mixed >> 29)) & 0x7FFFFFFFFFFFFFFF


def copy_seeds(seeds: Sequence[int], copies: int) -> np.ndarray:
    """Each row's seed for each of its `copies` returned sequences, rows of one prompt together."""
    return np.array([derive_seed(seed, copy) for seed in seeds for copy in range(copies)], np.int64)


# -- the records --------------------------------------------------------------------------------
def column(name: str, values, padded_batch):
    """One per-row field as a [padded_batch] tensor: the real rows, then the field's filler."""
    field = ROW_FIELD[name]
    values = tf.cast(tf.convert_to_tensor(values), tf.as_dtype(field.dtype))
    extra = padded_batch - tf.size(values)
    if field.filler is None:
        filler = tf.gather(values, tf.zeros([extra], tf.int32))
    else:
        filler = tf.fill([extra], tf.constant(field.filler, values.dtype))
    return tf.concat([values, filler], 0)


def sampling_params(rows: dict, padded_batch, *, first_slot, eos_token_ids, pad_token_id: int,
                    vocab_size: int, no_repeat_ngram_size=0, rules: TokenRules = TokenRules(),
                    stops: Optional[StopTables] = None) -> SamplingParams:
    """Build the loop's `SamplingParams`, eagerly (numpy values) or inside a graph (tensors).

    Args:
        rows: every `ROW_FIELDS` name -> one value per real row ([n] array or tensor).
        padded_batch: the batch bucket; rows past n get each field's filler.
        first_slot, pad_token_id, no_repeat_ngram_size: scalars.
        eos_token_ids: the id or ids that end a row (an int, a list, or an int32 tensor).
        rules: the per-call token controls (`token_rules`); stops: the in-loop stop tables, or None.
    """
    columns = {field.name: column(field.name, rows[field.name], padded_batch) for field in ROW_FIELDS}
    scalars = _processor_scalars(no_repeat_ngram_size, eos_token_ids, pad_token_id, first_slot, vocab_size)
    return SamplingParams(**columns, **scalars, rules=rules, stops=stops)


def beam_params(repetition_penalty, num_beams: int, *, max_new_tokens, first_slot, eos_token_ids,
                pad_token_id: int, vocab_size: int, length_penalty=1.0, early_stopping=False,
                min_new_tokens=0,
                no_repeat_ngram_size=0, rules: TokenRules = TokenRules()) -> BeamParams:
    """Build the loop's `BeamParams` (eagerly or in a graph).

    Args:
        repetition_penalty: one value per padded batch row [Bb]; each beam of a row gets its row's.
        num_beams: beams per row.
        early_stopping: True, False or "never" (Hugging Face's values).
        The rest: scalars as in `BeamParams`.
    """
    penalty = tf.cast(tf.convert_to_tensor(repetition_penalty), tf.float32)
    return BeamParams(
        repetition_penalty=tf.repeat(penalty, num_beams),
        max_new_tokens=tf.constant(max_new_tokens, tf.int32),
        length_penalty=tf.constant(length_penalty, tf.float32),
        early_stopping_true=tf.constant(early_stopping is True),
        early_stopping_never=tf.constant(early_stopping == "never"),
        min_new_tokens=tf.constant(min_new_tokens, tf.int32),
        **_processor_scalars(no_repeat_ngram_size, eos_token_ids, pad_token_id, first_slot, vocab_size),
        rules=rules,
    )


def per_row(loop_params):
    """The record's structure (`tf.nest`) with True at each field that has one entry per padded
    batch row, per beam in a `BeamParams` (its repetition_penalty), and False at the others:
    `SamplingParams`' `ROW_FIELDS` and per-row stop tables ([B, S, WIDTH], [B, S]) are per row;
    the scalars, the vocabulary masks, the token rules and shared stop tables are not."""
    def flags(record, rows):
        return tf.nest.map_structure(lambda _: rows, record)

    if isinstance(loop_params, BeamParams):
        return loop_params._replace(**{name: flags(value, name == "repetition_penalty")
                                       for name, value in loop_params._asdict().items()})
    rows = {field.name for field in ROW_FIELDS}
    fields = {name: flags(value, name in rows) for name, value in loop_params._asdict().items()
              if name != "stops"}
    stops = loop_params.stops
    if stops is not None:
        shared = stops.stop_bytes.shape.rank == 2  # one [S, WIDTH] table for every row
        stops = StopTables(stop_bytes=not shared, stop_lengths=not shared, token_bytes=False,
                           token_lengths=False)
    return loop_params._replace(**fields, stops=stops)


def token_rules(vocab_size: int, logit_bias=None, bad_words_ids=None, suppress_tokens=None,
                begin_suppress_tokens=None, eos_token_ids: Sequence[int] = ()) -> TokenRules:
    """The per-call token controls as tensors (validated values: `GenerationConfig.validate`).

    As Hugging Face's `NoBadWordsLogitsProcessor`, a banned sequence that is just one EOS id is
    dropped (EOS ends rows; banning it is min_new_tokens' or suppress_tokens' job).
    """
    bias = None
    if logit_bias:
        dense = np.zeros([vocab_size], np.float32)
        for token, value in logit_bias.items():
            dense[int(token)] += float(value)
        bias = tf.constant(dense)
    words = None
    ends = {int(i) for i in eos_token_ids}
    sequences = [list(s) for s in (bad_words_ids or []) if not (len(s) == 1 and int(s[0]) in ends)]
    if sequences:
        width = bucket(max(len(s) for s in sequences), (2, 4, 8, 16, 32))
        table = np.full([bucket(len(sequences), (4, 16, 64, 256)), width], -1, np.int32)
        for row, sequence in enumerate(sequences):
            table[row, width - len(sequence):] = sequence
        table[len(sequences):] = table[0]  # filler rows repeat a real one (a row of -1s bans token 0)
        words = tf.constant(table)

    def mask(tokens):
        if not tokens:
            return None
        dense = np.zeros([vocab_size], bool)
        dense[list(tokens)] = True
        return tf.constant(dense)

    return TokenRules(bias, words, mask(suppress_tokens), mask(begin_suppress_tokens))


def eos_mask(eos_token_ids, vocab_size: int):
    """bool [V]: the tokens that end a row, from one id or several (Hugging Face's eos_token_id
    list: any of them ends it). A mask rather than a list, so another set of ids, of any length,
    reuses the compiled program."""
    ids = tf.reshape(tf.cast(eos_token_ids, tf.int32), [-1])
    return tf.reduce_any(tf.equal(tf.range(vocab_size)[:, None], ids[None, :]), axis=1)


def _processor_scalars(no_repeat_ngram_size, eos_token_ids, pad_token_id, first_slot, vocab_size) -> dict:
    return dict(
        no_repeat_ngram_size=tf.cast(no_repeat_ngram_size, tf.int32),
        eos_mask=eos_mask(eos_token_ids, vocab_size),
        pad_token_id=tf.cast(pad_token_id, tf.int32),
        first_slot=tf.cast(first_slot, tf.int32),
    )


# -- in-graph checks ----------------------------------------------------------------------------
def check_rows_graph(rows: dict, batch, max_new_tokens_limit: int) -> List[tf.Operation]:
    """Assertions for per-row tensors that reach a served model: one value per prompt, each in its
    `ROW_FIELDS` range (temperature > 0 only where do_sample; seeds are any int64), max_new_tokens
    up to the export's limit. Only the fields in `rows` (a signature's inputs) are checked. The
    messages name the parameter, as the Python checks do."""
    checks = []
    for field in ROW_FIELDS:
        if field.name not in rows:
            continue
        values = rows[field.name]
        checks.append(tf.debugging.assert_equal(tf.size(values), batch,
                                                message=f"{field.name}: one value per prompt"))
        high = max_new_tokens_limit if field.name == "max_new_tokens" else field.high
        if field.name == "seed" or field.low is None and high is None:
            continue
        ok = tf.ones_like(values, tf.bool)
        if field.low is not None:
            low = tf.cast(field.low, values.dtype)
            ok &= (values > low) if field.low_open else (values >= low)
        if high is not None:
            ok &= values <= tf.cast(high, values.dtype)
        if field.name == "temperature":
            ok |= ~tf.cast(rows["do_sample"], tf.bool)
        checks.append(tf.debugging.Assert(tf.reduce_all(ok), [_range_message(field, high)]))
    return checks


def _range_message(field, high) -> str:
    bounds = [] if field.low is None else [f"{'>' if field.low_open else '>='} {field.low:g}"]
    if high is not None:
        bounds.append(f"<= {high:g}")
    limit = " (the export's limit)" if field.name == "max_new_tokens" else ""
    where = " when do_sample is true" if field.name == "temperature" else ""
    return f"{field.name} must be {' and '.join(bounds)}{limit}{where}"
