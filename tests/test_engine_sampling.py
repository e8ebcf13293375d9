"""Sampling: seeds, per-row parameters, the processors, and the sampled distribution.

References are independent of tfgen: numpy implementations of Hugging Face's processors, the
logits of the model's own forward pass (`gen.model`), and greedy search (itself checked against
Hugging Face in test_engine_exact.py).
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from tfgen.decoding import noise, processors
from tfgen.decoding import params as loop_params
from tfgen.models.base import positions_from_mask

PAD = 50256
RELATIVITY = [464, 4583, 286, 44449, 318]  # "The theory of relativity is"
ONCE = [7454, 2402, 257, 640]  # "Once upon a time"
HELLO = [15496]  # "Hello"


def left_pad(rows, pad=PAD):
    return loop_params.left_pad(rows, pad)


# -- numpy references: Hugging Face's processors, per row -------------------------------------


def softmax(scores):
    scores = np.asarray(scores, np.float64)
    top = np.max(scores, axis=-1, keepdims=True)
    exp = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    return exp / exp.sum(axis=-1, keepdims=True)


def np_top_k(scores, k):
    """Hugging Face's top-k: drop scores below the k-th largest (ties kept); k <= 0 is off."""
    out = np.array(scores, np.float64)
    for row, value in enumerate(k):
        if value > 0:
            kth = np.sort(scores[row])[::-1][min(value, scores.shape[1]) - 1]
            out[row, scores[row] < kth] = -np.inf
    return out


def np_top_p_keep(scores, p):
    """Hugging Face's top-p: keep tokens whose exclusive cumulative probability (most likely
    first) is < p, at least one; p >= 1 keeps everything. Returns bool [B, V]."""
    probs = softmax(scores)
    keep = np.ones(probs.shape, bool)
    for row, value in enumerate(p):
        if value >= 1.0:
            continue
        order = np.argsort(-probs[row], kind="stable")
        sorted_probs = probs[row, order]
        kept = np.cumsum(sorted_probs) - sorted_probs < value
        kept[0] = True
        keep[row, order] = kept
    return keep


def np_repetition_penalty(scores, seen_ids, penalty):
    out = np.array(scores, np.float32)
    for row, ids in enumerate(seen_ids):
        ids = np.unique(ids)
        values = out[row, ids]
        out[row, ids] = np.where(values > 0, values * np.float32(1.0 / penalty[row]), values * penalty[row])
    return out


def np_banned_ngrams(prev, n):
    """Hugging Face's no-repeat-ngram: tokens that would complete an n-gram already in prev."""
    cur_len = len(prev)
    if cur_len + 1 < n:
        return set()
    seen = {}
    for i in range(cur_len - n + 1):
        seen.setdefault(tuple(prev[i:i + n - 1]), set()).add(prev[i + n - 1])
    return seen.get(tuple(prev[cur_len + 1 - n:cur_len]), set())


def chi2_sf(statistic, dof):
    """P(X >= statistic) for a chi-square variable with dof degrees of freedom (series of the
    regularized lower incomplete gamma function; scipy is not a dependency)."""
    a, x = dof / 2.0, statistic / 2.0
    if x <= 0:
        return 1.0
    term = total = 1.0 / a
    n = 1
    while term > total * 1e-16:
        term *= x / (a + n)
        total += term
        n += 1
    return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - math.lgamma(a)))


def chi2_pvalue(counts, probs):
    """Pearson's test of counts against probabilities, bins merged so expected counts are >= 5."""
    draws = counts.sum()
    order = np.argsort(-probs)
    observed, expected = [], []
    bin_count = bin_expected = 0.0
    for token in order:
        bin_count += counts[token]
        bin_expected += probs[token] * draws
        if bin_expected >= 5:
            observed.append(bin_count)
            expected.append(bin_expected)
            bin_count = bin_expected = 0.0
    observed[-1] += bin_count
    expected[-1] += bin_expected
    observed, expected = np.array(observed), np.array(expected)
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return chi2_sf(statistic, len(observed) - 1), len(observed)


def test_chi2_sf_known_values():
    assert chi2_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-5)
    assert chi2_sf(18.307038, 10) == pytest.approx(0.05, abs=1e-5)
    assert chi2_sf(124.342113, 100) == pytest.approx(0.05, abs=1e-5)


# -- the processors on random [batch, vocab] arrays -------------------------------------------


def test_top_k_keeps_ties_per_row():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=[6, 300]), 1).astype(np.float32)  # many ties
    scores[5, :] = 0.5  # all tied
    k = np.array([0, 1, 3, 10, 400, 2], np.int32)
    ours = processors.top_k(tf.constant(scores), tf.constant(k)).numpy()
    np.testing.assert_array_equal(ours, np_top_k(scores, k).astype(np.float32))
    assert np.isfinite(ours[0]).all() and np.isfinite(ours[4]).all() and np.isfinite(ours[5]).all()


def test_top_p_per_row():
    rng = np.random.default_rng(1)
    scale = np.array([0.5, 2.0, 4.0, 8.0, 3.0, 3.0, 1.0])[:, None]
    scores = (rng.normal(size=[7, 2000]) * scale).astype(np.float32)
    scores[6, :1500] = -np.inf  # already filtered, as after top-k
    p = np.array([0.9, 0.5, 0.95, 0.3, 1.0, 0.999, 0.8], np.float32)
    ours = np.isfinite(processors.top_p(tf.constant(scores), tf.constant(p)).numpy())
    # Float rounding may move the boundary token: ours lies between the sets for p -/+ 1e-4.
    assert (ours >= np_top_p_keep(scores, p - 1e-4)).all()
    assert (ours <= np_top_p_keep(scores, p + 1e-4)).all()
    assert ours[4].all()
    assert (ours.sum(axis=1) >= 1).all()


def test_top_p_keeps_at_least_one_token():
    scores = np.array([[10.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    ours = np.isfinite(processors.top_p(tf.constant(scores), tf.constant([0.01, 0.2])).numpy())
    np.testing.assert_array_equal(ours[0], [True, False, False, False])
    assert ours[1].all()  # four tied tokens: ties at the threshold are kept


def test_top_k_and_top_p_candidate_paths_equal_bisection():
    """Small k and compact nuclei take the tf.math.top_k path; a large k or a flat row forces the
    bisection for the whole batch. Both must keep the same tokens, and both match numpy."""
    rng = np.random.default_rng(3)
    scores = (rng.normal(size=[4, 3000]) * np.array([[1.0], [3.0], [6.0], [9.0]])).astype(np.float32)
    k = np.array([1, 5, 50, 64], np.int32)
    fast = processors.top_k(tf.constant(scores), tf.constant(k)).numpy()
    slow = processors.top_k(tf.constant(np.vstack([scores, scores[:1]])),
                            tf.constant(np.append(k, 500).astype(np.int32))).numpy()[:4]
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast, np_top_k(scores, k).astype(np.float32))

    peaked = scores[1:] * 3.0  # nuclei of a few tokens: within the 256 candidates
    p = np.array([0.5, 0.9, 0.99], np.float32)
    fast = np.isfinite(processors.top_p(tf.constant(peaked), tf.constant(p)).numpy())
    flat = np.vstack([peaked, scores[:1] * 0.1])  # a flat row whose nucleus needs thousands of tokens
    slow = np.isfinite(processors.top_p(tf.constant(flat), tf.constant(np.append(p, 0.9))).numpy())
    np.testing.assert_array_equal(fast, slow[:3])
    assert slow[3].sum() > 256
    assert (fast >= np_top_p_keep(peaked, p - 1e-4)).all() and (fast <= np_top_p_keep(peaked, p + 1e-4)).all()


def test_repetition_penalty_per_row():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=[3, 50]).astype(np.float32)
    scores[:, 7] = 0.0
    seen_ids = [rng.integers(0, 50, size=10) for _ in range(3)]
    for ids in seen_ids:
        ids[0] = 7
    seen = np.zeros([3, 50], bool)
    for row, ids in enumerate(seen_ids):
        seen[row, ids] = True
    penalty = np.array([1.0, 1.5, 0.6], np.float32)
    ours = processors.repetition_penalty(tf.constant(scores), tf.constant(seen), tf.constant(penalty))
    np.testing.assert_allclose(ours.numpy(), np_repetition_penalty(scores, seen_ids, penalty), rtol=1e-6)
    np.testing.assert_array_equal(ours.numpy()[0], scores[0])


@pytest.mark.parametrize("first_slot", [0, 3])
@pytest.mark.parametrize("ngram_size", [1, 2, 3, 4])
def test_no_repeat_ngram(ngram_size, first_slot):
    rng = np.random.default_rng(ngram_size)
    vocab = 8
    tokens = rng.integers(0, 4, size=[4, 14]).astype(np.int32)  # 4 distinct tokens: many repeats
    tokens[:, :first_slot] = 0  # bucket padding: part of no n-gram
    scores = rng.normal(size=[4, vocab]).astype(np.float32)
    for cur_len in range(first_slot, 14):
        ours = processors.no_repeat_ngram(tf.constant(scores), tf.constant(tokens), cur_len, ngram_size,
                                          first_slot).numpy()
        for row in range(4):
            banned = np_banned_ngrams(tokens[row, first_slot:cur_len].tolist(), ngram_size)
            expected = scores[row].copy()
            expected[list(banned)] = -np.inf
            np.testing.assert_array_equal(ours[row], expected, err_msg=f"cur_len={cur_len} row={row}")


def test_no_repeat_ngram_off():
    scores = np.zeros([2, 5], np.float32)
    tokens = np.array([[1, 1, 1, 1], [2, 2, 2, 2]], np.int32)
    ours = processors.no_repeat_ngram(tf.constant(scores), tf.constant(tokens), 4, 0).numpy()
    np.testing.assert_array_equal(ours, scores)


def test_min_new_tokens_per_row():
    scores = np.zeros([3, 6], np.float32)
    minimum = tf.constant([0, 2, 5])
    for step in range(6):
        eos = np.isin(np.arange(6), [1, 4])  # two EOS ids: both held back
        ours = processors.min_new_tokens(tf.constant(scores), step, minimum, tf.constant(eos)).numpy()
        for row, value in enumerate([0, 2, 5]):
            expected = scores[row].copy()
            if step < value:
                expected[[1, 4]] = -np.inf
            np.testing.assert_array_equal(ours[row], expected)


def test_temperature_per_row():
    scores = np.random.default_rng(3).normal(size=[2, 10]).astype(np.float32)
    ours = processors.temperature(tf.constant(scores), tf.constant([0.5, 2.0])).numpy()
    np.testing.assert_allclose(ours, scores / np.array([[0.5], [2.0]], np.float32), rtol=1e-6)


def test_gumbel_noise_is_finite():
    """The largest uniform draw stays below 1, so its Gumbel noise is finite.

    (seed 1, step 7, token 45139) hashes to the largest value; it used to round to 1.0 and give
    +inf noise, which won the argmax over any token, or NaN on a token top-k had removed.
    """
    uniform = noise.uniform(tf.constant([1, 2], tf.int64), tf.constant(7), 50257).numpy()
    assert uniform[0, 45139] == uniform.max() >= 1.0 - 2.0 ** -23
    assert 0.0 < uniform.min() and uniform.max() < 1.0
    assert np.isfinite(noise.gumbel(tf.constant([1, 2], tf.int64), tf.constant(7), 50257).numpy()).all()


def test_noise_depends_on_every_seed_bit_and_the_step():
    seeds = tf.constant([5, 5 + 2**40, 2**63 - 1, 6], tf.int64)
    draws = noise.uniform(seeds, tf.constant(0), 1000).numpy()
    assert len({row.tobytes() for row in draws}) == 4
    assert not np.array_equal(draws[0], noise.uniform(seeds[:1], tf.constant(1), 1000).numpy()[0])
    # A row's numbers do not depend on the other rows.
    np.testing.assert_array_equal(draws[1], noise.uniform(seeds[1:2], tf.constant(0), 1000).numpy()[0])


# -- seeds --------------------------------------------------------------------------------------


def test_same_seed_same_text(tiny):
    params = dict(max_new_tokens=12, do_sample=True, top_k=0, seed=11)
    first = tiny.generate("The theory of relativity is", **params)
    assert tiny.generate("The theory of relativity is", **params) == first
    assert tiny.generate("The theory of relativity is", **dict(params, seed=12)) != first


def test_top_k_1_equals_greedy(tiny):
    ids, mask = left_pad([RELATIVITY, ONCE[:3]])
    greedy = tiny.generate_ids(ids, mask, max_new_tokens=12, repetition_penalty=1.2)
    sampled = tiny.generate_ids(ids, mask, max_new_tokens=12, repetition_penalty=1.2, do_sample=True,
                                top_k=1, temperature=[0.7, 1.5], seed=[1, 2])
    np.testing.assert_array_equal(sampled.sequences, greedy.sequences)
    np.testing.assert_allclose(sampled.scores, 0.0, atol=1e-6)  # one token left: probability 1


def test_row_seed_independent_of_batch(tiny):
    """A row with its seed gives the same tokens alone and next to other prompts and parameters."""
    ids, mask = left_pad([RELATIVITY, HELLO])
    batch = tiny.generate_ids(ids, mask, max_new_tokens=12, do_sample=True, seed=[5, 9],
                              temperature=[1.0, 0.3], top_k=[50, 0], top_p=[1.0, 0.9])
    for row, params in enumerate([dict(seed=5, temperature=1.0, top_k=50, top_p=1.0),
                                  dict(seed=9, temperature=0.3, top_k=0, top_p=0.9)]):
        alone_ids = ids[row][mask[row] > 0][None, :]
        alone = tiny.generate_ids(alone_ids, max_new_tokens=12, do_sample=True, **params)
        np.testing.assert_array_equal(alone.sequences[0, alone_ids.shape[1]:],
                                      batch.sequences[row, ids.shape[1]:])


def test_first_return_sequence_keeps_the_seed(tiny):
    params = dict(max_new_tokens=8, do_sample=True, seed=21)
    two = tiny.generate("Once upon a time", num_return_sequences=2, **params)
    assert len(two) == 2 and two[0] != two[1]
    assert two[0] == tiny.generate("Once upon a time", **params)


# -- per-row parameters -----------------------------------------------------------------------


def test_per_row_parameters_equal_rows_alone(tiny):
    ids = np.array([RELATIVITY, [818, 257, 14702, 4917, 11]], np.int32)  # same length: no padding
    rows = dict(temperature=[0.8, 1.3], top_k=[20, 0], top_p=[1.0, 0.7], repetition_penalty=[1.0, 1.4],
                max_new_tokens=[5, 12], seed=[3, 4])
    batch = tiny.generate_ids(ids, do_sample=True, **rows)
    np.testing.assert_array_equal(batch.num_generated, [5, 12])
    assert (batch.sequences[0, 5 + 5:] == PAD).all()
    for row in range(2):
        alone = tiny.generate_ids(ids[row:row + 1], do_sample=True, **{k: v[row] for k, v in rows.items()})
        n = rows["max_new_tokens"][row]
        np.testing.assert_array_equal(alone.sequences[0], batch.sequences[row, :5 + n])
        np.testing.assert_allclose(alone.scores[0], batch.scores[row, :n], rtol=1e-4, atol=1e-5)


def test_per_row_max_new_tokens_greedy(tiny):
    ids, mask = left_pad([RELATIVITY, ONCE])
    result = tiny.generate_ids(ids, mask, max_new_tokens=[3, 9])
    np.testing.assert_array_equal(result.num_generated, [3, 9])
    full = tiny.generate_ids(ids, mask, max_new_tokens=9)
    np.testing.assert_array_equal(result.sequences[1], full.sequences[1])
    prompt = ids.shape[1]
    np.testing.assert_array_equal(result.sequences[0, :prompt + 3], full.sequences[0, :prompt + 3])
    assert (result.sequences[0, prompt + 3:] == PAD).all()


# -- sampled tokens against the model's own distribution -----------------------------------------


def model_logits(gen, sequences, mask):
    """The model's full forward pass over prompt + generated tokens: logits [B, L, V] (float64)."""
    positions = positions_from_mask(mask)
    out = gen.model(tf.constant(sequences), attention_mask=tf.constant(mask), position_ids=positions)
    return out.logits.numpy().astype(np.float64)


@pytest.mark.parametrize("params", [
    dict(temperature=[0.03, 0.05], top_k=[5, 40], top_p=[1.0, 1.0]),
    dict(temperature=[0.05, 0.04], top_k=[0, 0], top_p=[0.9, 0.6]),
    dict(temperature=[0.05, 0.2], top_k=[30, 400], top_p=[0.8, 0.5]),
], ids=["top_k", "top_p", "both"])
def test_sampled_tokens_lie_in_top_k_and_top_p_sets(tiny, params):
    """Every sampled token is in the top-k / top-p set of the model's logits after temperature,
    and exp(score) is its probability under that processed distribution."""
    ids, mask = left_pad([RELATIVITY, ONCE[:3]])
    result = tiny.generate_ids(ids, mask, max_new_tokens=16, do_sample=True, seed=[7, 8], **params)
    prompt = ids.shape[1]
    full_mask = np.concatenate([mask, np.ones([2, result.sequences.shape[1] - prompt], np.int32)], axis=1)
    logits = model_logits(tiny, result.sequences, full_mask)
    temperature = np.array(params["temperature"])[:, None]
    for step in range(result.sequences.shape[1] - prompt):
        scores = logits[:, prompt + step - 1] / temperature
        after_k = np_top_k(scores, params["top_k"])
        for row in range(2):
            if step >= result.num_generated[row]:
                continue
            token = result.sequences[row, prompt + step]
            k = params["top_k"][row]
            if k > 0:
                # The cached and the full forward pass differ by ~1e-6 in the logits.
                kth = np.sort(scores[row])[::-1][k - 1]
                assert scores[row, token] >= kth - 1e-5 / temperature[row, 0], (row, step)
            keep = np_top_p_keep(after_k[row:row + 1], [params["top_p"][row] + 1e-4])[0]
            assert keep[token], (row, step)
            processed = np.where(np_top_p_keep(after_k[row:row + 1], [params["top_p"][row]])[0],
                                 after_k[row], -np.inf)
            probability = softmax(processed)[token]
            np.testing.assert_allclose(np.exp(result.scores[row, step]), probability, rtol=2e-3,
                                       err_msg=f"row {row} step {step}")


def test_sampling_distribution_chi_square(small_vocab):
    """8192 draws at one step (one program run) follow the processed softmax.

    Two parameter sets share the batch, 4096 rows each: temperature 0.4 + top-k 30 + top-p 0.95,
    and temperature 0.5 alone. Tokens outside the processed support never appear; the counts
    pass Pearson's chi-square test (p > 1e-3) and fail it against a temperature 1.3 times larger
    (so the test has the power to see a wrong distribution).
    """
    prompt = np.array([[11, 42, 17, 90, 5, 66]], np.int32)
    draws = 4096
    parts = [(0.4, 30, 0.95), (0.5, 0, 1.0)]
    temperature, top_k, top_p = (np.repeat(values, draws) for values in zip(*parts))
    result = small_vocab.generate_ids(
        np.repeat(prompt, len(parts) * draws, axis=0), max_new_tokens=1, do_sample=True,
        temperature=temperature, top_k=top_k, top_p=top_p, seed=np.arange(len(parts) * draws) + 1000)
    tokens = result.sequences[:, -1]
    logits = small_vocab.model(tf.constant(prompt)).logits.numpy()[0, -1].astype(np.float64)

    def processed(t, k, p):
        scores = np_top_k(logits[None, :] / t, [k])
        return softmax(np.where(np_top_p_keep(scores, [p]), scores, -np.inf))[0]

    for part, (t, k, p) in enumerate(parts):
        counts = np.bincount(tokens[part * draws:(part + 1) * draws], minlength=logits.shape[0])
        probs = processed(t, k, p)
        assert counts[probs == 0].sum() == 0, "a token outside the top-k/top-p set was sampled"
        pvalue, bins = chi2_pvalue(counts, probs)
        assert bins >= 20
        assert pvalue > 1e-3, f"part {part}: chi-square p = {pvalue:.2e} over {bins} bins"
        wrong = chi2_pvalue(counts, processed(t * 1.3, k, p))[0]
        assert wrong < 1e-3, f"part {part}: a wrong temperature passes (p = {wrong:.2e})"
