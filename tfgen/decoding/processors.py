"""Logits processors: pure TensorFlow functions over scores [batch, vocab], parameters per row.

They follow Hugging Face's logits processors in what they compute and in the order the decoding
loops apply them (`tfgen.decoding.steps.apply_processors`: logit bias, repetition penalty,
no-repeat n-gram, bad words, min new tokens, suppress tokens, suppress at begin; then for every
greedy/sampling row presence and frequency penalties (OpenAI's, which Hugging Face lacks); then for
sampling rows temperature, top-k, top-p, min-p, typical-p), but every numeric parameter is a tensor
with one value per row, so one compiled program serves any mix of parameters.

Top-k and top-p need no sort of the vocabulary: the threshold is found by bisection over the
bits of the float32 values (an order-preserving map to int32), 32 masked counts or sums over
the vocabulary, exact to the last bit.
"""
from __future__ import annotations

import tensorflow as tf

NEG_INF = float("-inf")


def repetition_penalty(scores, seen, penalty):
    """Penalise tokens already in the sequence: positive scores * (1/p), negative scores * p.

    Args:
        scores: float [B, V].
        seen: bool [B, V], tokens present in the sequence so far (prompt and its padding included,
            as in Hugging Face).
        penalty: float [B]; 1.0 leaves a row unchanged.
    """
    penalty = penalty[:, None]
    # The same float operations as Hugging Face: multiply by 1/p, not divide by p.
    factor = tf.where(scores > 0, 1.0 / penalty, tf.where(scores < 0, penalty, 0.0))
    return tf.where(seen, scores * factor, scores)


def logit_bias(scores, bias):
    """Add a bias [V] to every row's scores (OpenAI's `logit_bias`, Hugging Face's single-token
    `sequence_bias`): -100 or less effectively bans a token, +100 or more effectively forces it."""
    return scores + bias[None, :]


def presence_frequency_penalty(scores, counts, presence, frequency):
    """OpenAI's penalties over the tokens generated so far (not the prompt):
    scores[j] -= counts[j] * frequency + (counts[j] > 0) * presence.

    Args:
        scores: float [B, V]; counts: int32 [B, V], how often each token was generated;
        presence, frequency: float [B] (0 leaves a row unchanged; negative values encourage).
    """
    counts = tf.cast(counts, scores.dtype)
    penalty = counts * frequency[:, None] + tf.cast(counts > 0, scores.dtype) * presence[:, None]
    return scores - penalty


def bad_words(scores, tokens, cur_len, words, first_slot=0):
    """Hugging Face's `NoBadWordsLogitsProcessor`: ban the last token of every banned sequence whose
    other tokens are the last tokens of the row (a one-token sequence is always banned).

    Args:
        scores: float [B, V].
        tokens: int32 [B, L], the sequence buffer (prompt included, as Hugging Face's input_ids);
            slots >= cur_len are ignored, slots < first_slot are bucket padding.
        words: int32 [S, W], the banned sequences right-aligned and left-padded with -1.
    """
    batch, length = tf.shape(tokens)[0], tf.shape(tokens)[1]
    width = tf.shape(words)[1]
    slots = tf.range(length)
    cur_len = tf.reshape(tf.cast(cur_len, tf.int32), [-1, 1])  # [1, 1], or [B, 1] (one per row)
    # -2 matches no token and no padding marker: windows reaching into bucket padding never match.
    tokens = tf.where((slots >= first_slot)[None, :], tf.cast(tokens, tf.int32), -2)
    # The last width - 1 tokens before cur_len, [B, W - 1] (clipped reads are masked by -2 below).
    offsets = tf.broadcast_to(cur_len - (width - 1) + tf.range(width - 1)[None, :], [batch, width - 1])
    previous = tf.gather(tokens, tf.clip_by_value(offsets, 0, length - 1), axis=1, batch_dims=1)
    previous = tf.where(offsets >= 0, previous, -2)
    prefix = words[:, :-1]  # [S, W - 1]
    match = tf.reduce_all((prefix[None] == previous[:, None]) | (prefix[None] < 0), axis=-1)  # [B, S]
    # As Hugging Face: a sequence longer than the input so far (prompt included) never matches.
    lengths = tf.reduce_sum(tf.cast(words >= 0, tf.int32), axis=1)  # [S]
    match &= lengths[None, :] <= cur_len - first_slot
    last = tf.maximum(words[:, -1], 0)  # [S]
    banned = tf.reduce_any(match[:, :, None] & tf.equal(last[None, :, None], tf.range(tf.shape(scores)[1])),
                           axis=1)  # [B, V]
    return tf.where(banned, NEG_INF, scores)


def suppress(scores, mask):
    """Hugging Face's `SuppressTokensLogitsProcessor`: tokens where mask [V] is True get -inf."""
    return tf.where(mask[None, :], NEG_INF, scores)


def no_repeat_ngram(scores, tokens, cur_len, ngram_size, first_slot=0):
    """Forbid tokens that would repeat an n-gram already in tokens[:, first_slot:cur_len].

    Args:
        scores: float [B, V].
        tokens: int32 [B, L], the sequence buffer (slots >= cur_len are ignored).
        cur_len: int32 scalar, how many slots hold tokens, or [B], one count per row.
        ngram_size: int32 scalar n; 0 turns the processor off.
        first_slot: int32 scalar, slots before it (bucket padding) belong to no n-gram.
    """
    length = tf.shape(tokens)[1]
    n = tf.cast(ngram_size, tf.int32)
    cur_len = tf.reshape(tf.cast(cur_len, tf.int32), [-1, 1])  # [1, 1], or [B, 1] (one per row)
    # -1 matches no real token, so windows reaching into the padding never match.
    tokens = tf.where(tf.range(length)[None, :] >= first_slot, tf.cast(tokens, tf.int32), -1)

    def banned():
        # A window starting at j matches when tokens[j + i] == tokens[cur_len - n + 1 + i] for
        # i < n - 1; its next token tokens[j + n - 1] is then banned.
        starts = tf.range(length)
        prefix_start = tf.broadcast_to(cur_len - n + 1, [tf.shape(tokens)[0], 1])

        def compare(i, match):
            window = tf.gather(tokens, tf.minimum(starts + i, length - 1), axis=1)  # [B, L]
            current = tf.gather(tokens, tf.clip_by_value(prefix_start + i, 0, length - 1), axis=1,
                                batch_dims=1)  # [B, 1]
            return i + 1, match & tf.equal(window, current)

        match = tf.ones_like(tokens, tf.bool)
        _, match = tf.while_loop(
            lambda i, _: i < n - 1, compare, (tf.constant(0), match),
            maximum_iterations=length,
        )
        # A window must lie inside [first_slot, cur_len): with n = 1 there is nothing to compare,
        # so a padding slot would otherwise ban token 0.
        inside = (starts >= first_slot)[None, :] & (starts[None, :] + n - 1 < cur_len)  # [1 or B, L]
        valid = inside & (cur_len - first_slot + 1 >= n)
        match = match & valid  # [B, L]
        next_tokens = tf.gather(tokens, tf.minimum(starts + n - 1, length - 1), axis=1)  # [B, L]
        next_tokens = tf.maximum(next_tokens, 0)  # padding slots never match; keep indices valid
        batch = tf.shape(tokens)[0]
        rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(tokens))
        indices = tf.stack([tf.reshape(rows, [-1]), tf.reshape(next_tokens, [-1])], axis=-1)
        mask = tf.scatter_nd(indices, tf.reshape(tf.cast(match, tf.int32), [-1]), tf.shape(scores))
        return tf.where(mask > 0, NEG_INF, scores)

    return tf.cond(n > 0, banned, lambda: scores)


def min_new_tokens(scores, step, minimum, eos_mask):
    """Forbid every EOS id (`eos_mask` bool [V]) while fewer than `minimum` (scalar or [B]) tokens
    were generated (`step`), as Hugging Face's MinNewTokensLengthLogitsProcessor does."""
    is_eos = eos_mask[None, :]
    block = tf.reshape(tf.cast(step, tf.int32) < tf.cast(minimum, tf.int32), [-1, 1])
    return tf.where(is_eos & block, NEG_INF, scores)


def min_p(scores, value):
    """Hugging Face's `MinPLogitsWarper`: keep tokens whose probability is at least value [B] times
    the most likely token's (0 = off; the most likely token always stays)."""
    value = tf.cast(value, tf.float32)

    def filtered():
        probs = tf.nn.softmax(scores, axis=-1)
        threshold = value[:, None] * tf.reduce_max(probs, axis=-1, keepdims=True)
        return tf.where((probs >= threshold) | (value <= 0.0)[:, None], scores, NEG_INF)

    return tf.cond(tf.reduce_any(value > 0.0), filtered, lambda: scores)


def typical_p(scores, mass):
    """Hugging Face's `TypicalLogitsWarper` (locally typical sampling): keep the tokens whose
    surprisal is closest to the distribution's entropy, fewest first, until their probability
    reaches mass [B] (1.0 = off). The cut is found by bisection instead of a vocabulary sort.
    """
    mass = tf.cast(mass, tf.float32)

    def filtered():
        log_probs = tf.nn.log_softmax(scores, axis=-1)
        probs = tf.exp(log_probs)
        entropy = -tf.reduce_sum(tf.where(probs > 0, log_probs * probs, 0.0), axis=-1, keepdims=True)
        shifted = tf.abs(-log_probs - entropy)  # NaN-free: -inf scores give +inf
        keys = _sortable_bits(-shifted)  # the most typical token has the largest key
        threshold = _bisect_threshold(
            keys, lambda mask: tf.reduce_sum(tf.where(mask, probs, 0.0), axis=1) >= mass)
        keep = keys >= threshold[:, None]
        return tf.where(keep | (mass >= 1.0)[:, None], scores, NEG_INF)

    return tf.cond(tf.reduce_any(mass < 1.0), filtered, lambda: scores)


def temperature(scores, value):
    """Divide each row by its temperature [B]."""
    return scores / value[:, None]


def _sortable_bits(values):
    """Map float32 to int64 keys with the same order (-inf < ... < -0 <= 0 < ... < inf)."""
    bits = tf.cast(tf.bitcast(tf.cast(values, tf.float32), tf.int32), tf.int64)
    return tf.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _bisect_threshold(keys, enough):
    """The largest key t with enough(keys >= t) True, per row, by bisection on int64 keys [B, V].

    `enough(mask [B, V]) -> bool [B]` must be monotone: True for t = min key of the row.
    """
    low = tf.reduce_min(keys, axis=1)
    high = tf.reduce_max(keys, axis=1) + 1  # enough(keys >= high) is False: nothing selected

    def body(low, high):
        mid = low + (high - low) // 2
        ok = enough(keys >= mid[:, None])
        return tf.where(ok, mid, low), tf.where(ok, high, mid)

    # 34 halvings cover the 2**33 range of the keys.
    low, _ = tf.while_loop(lambda low, high: tf.reduce_any(high - low > 1), body, (low, high),
                           maximum_iterations=34)
    return low


# Candidates that tf.math.top_k gathers before falling back to bisection: a partial top-k of a
# few hundred entries costs a fraction of a millisecond, the bisection ~34 passes over the vocabulary.
_TOP_K_CANDIDATES = 64
_TOP_P_CANDIDATES = 256


def top_k(scores, k):
    """Keep scores >= the k-th largest of the row (ties kept, as Hugging Face does); k [B], 0 = off.

    k up to 64 reads the k-th largest value off `tf.math.top_k`; larger k bisects.
    """
    vocab = tf.shape(scores)[1]
    k = tf.minimum(tf.cast(k, tf.int32), vocab)
    candidates = min(_TOP_K_CANDIDATES, scores.shape[1]) if scores.shape[1] else _TOP_K_CANDIDATES

    def from_candidates():
        values = tf.math.top_k(scores, k=candidates).values  # [B, C], sorted
        kth = tf.gather(values, tf.clip_by_value(k - 1, 0, candidates - 1), axis=1, batch_dims=1)
        return scores >= kth[:, None]

    def by_bisection():
        keys = _sortable_bits(scores)
        threshold = _bisect_threshold(
            keys, lambda mask: tf.reduce_sum(tf.cast(mask, tf.int32), axis=1) >= k
        )
        return keys >= threshold[:, None]

    def filtered():
        keep = tf.cond(tf.reduce_max(k) <= candidates, from_candidates, by_bisection)
        return tf.where(keep | (k <= 0)[:, None], scores, NEG_INF)

    return tf.cond(tf.reduce_any(k > 0), filtered, lambda: scores)


def top_p(scores, p):
    """Keep the smallest set of most likely tokens whose probability reaches p [B] (1.0 = off).

    As Hugging Face: a token stays when the probability of the more likely ones adds up to less
    than p. When the nucleus lies within the 256 most likely tokens of every row (always after a
    top-k of <= 256), the cut is read off `tf.math.top_k`; otherwise it is found by bisection.
    """
    p = tf.cast(p, tf.float32)
    candidates = min(_TOP_P_CANDIDATES, scores.shape[1]) if scores.shape[1] else _TOP_P_CANDIDATES

    def filtered():
        probs = tf.nn.softmax(scores, axis=-1)
        values = tf.math.top_k(probs, k=candidates).values  # [B, C], sorted
        cumulative = tf.cumsum(values, axis=1)
        covered = (cumulative[:, -1] >= p) | (p >= 1.0)

        def from_candidates():
            kept = tf.reduce_sum(tf.cast(cumulative - values < p[:, None], tf.int32), axis=1)
            cut = tf.gather(values, tf.clip_by_value(kept - 1, 0, candidates - 1), axis=1, batch_dims=1)
            return probs >= cut[:, None]

        def by_bisection():
            keys = _sortable_bits(probs)
            threshold = _bisect_threshold(
                keys, lambda mask: tf.reduce_sum(tf.where(mask, probs, 0.0), axis=1) >= p
            )
            return keys >= threshold[:, None]

        keep = tf.cond(tf.reduce_all(covered), from_candidates, by_bisection)
        return tf.where(keep | (p >= 1.0)[:, None], scores, NEG_INF)

    return tf.cond(tf.reduce_any(p < 1.0), filtered, lambda: scores)
