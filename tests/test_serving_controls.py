"""The serving controls of issue 16: bad words, suppress tokens, logit bias, presence/frequency
penalties, min-p, typical-p, ignore_eos, per-row min_new_tokens.

Each processor is checked against Hugging Face's TF processor where transformers 4.57 has one, or
against numpy written here from the published definition (OpenAI's penalties, Hugging Face's
PyTorch MinP/Typical warpers); then end to end through generate, and for retracing.
"""
import numpy as np
import pytest
import tensorflow as tf
from transformers.generation import tf_logits_process as hf

from tfgen.decoding import params as loop_params
from tfgen.decoding import processors, steps

VOCAB = 40
rng = np.random.default_rng(0)


def _scores(batch=3):
    return rng.normal(size=[batch, VOCAB]).astype(np.float32) * 3


def _neutral_rows(batch):
    """Per-row values that leave every processor but the one under test off."""
    neutral = dict(max_new_tokens=4, top_k=0, repetition_penalty=1.0, top_p=1.0, temperature=1.0, seed=0,
                   min_new_tokens=0, presence_penalty=0.0, frequency_penalty=0.0, min_p=0.0, typical_p=1.0,
                   do_sample=False, ignore_eos=False)
    return {field.name: np.full([batch], neutral[field.name]) for field in loop_params.ROW_FIELDS}



# -- processors against their references ----------------------------------------------------------
@pytest.mark.parametrize("first_slot", [0, 2])
def test_bad_words_equal_hugging_face(first_slot):
    words = [[7], [3, 4], [1, 2, 5], [9, 9, 9, 9, 9]]
    input_ids = rng.integers(0, 10, size=[3, 9]).astype(np.int32)
    input_ids[0, -2:] = [3, 4]  # row 0 ends in 3, 4: nothing of [3, 4] to ban next (it bans 4 after 3)
    input_ids[1, -1] = 3  # row 1 ends in 3: token 4 is banned
    input_ids[2, -2:] = [1, 2]  # row 2 ends in 1, 2: token 5 is banned
    scores = _scores()
    expected = hf.TFNoBadWordsLogitsProcessor(words, eos_token_id=0)(
        tf.constant(input_ids), tf.constant(scores), cur_len=input_ids.shape[1]).numpy()
    # tfgen's buffer: `first_slot` slots of bucket padding before the same ids, and free slots after.
    buffer = np.concatenate([np.full([3, first_slot], 6, np.int32), input_ids, np.zeros([3, 4], np.int32)], 1)
    rules = loop_params.token_rules(VOCAB, bad_words_ids=words)
    got = processors.bad_words(tf.constant(scores), tf.constant(buffer), first_slot + input_ids.shape[1],
                               rules.bad_words, first_slot).numpy()
    np.testing.assert_array_equal(got, expected)
    assert np.isneginf(got[1, 4]) and np.isneginf(got[2, 5]) and np.isneginf(got[:, 7]).all()


def test_bad_words_longer_than_the_input_never_match():
    words = [[2, 3, 4]]
    input_ids = np.array([[2, 3]], np.int32)  # HF: a 3-token sequence cannot match a 2-token input
    scores = _scores(1)
    expected = hf.TFNoBadWordsLogitsProcessor(words, eos_token_id=0)(
        tf.constant(input_ids), tf.constant(scores), cur_len=2).numpy()
    rules = loop_params.token_rules(VOCAB, bad_words_ids=words)
    got = processors.bad_words(tf.constant(scores), tf.constant(np.pad(input_ids, [[0, 0], [0, 3]])), 2,
                               rules.bad_words, 0).numpy()
    np.testing.assert_array_equal(got, expected)


def test_suppress_tokens_equal_hugging_face():
    scores = _scores()
    ids = tf.zeros([3, 5], tf.int32)
    expected = hf.TFSuppressTokensLogitsProcessor([1, 5, 39])(ids, tf.constant(scores), 5).numpy()
    rules = loop_params.token_rules(VOCAB, suppress_tokens=[1, 5, 39])
    np.testing.assert_array_equal(processors.suppress(tf.constant(scores), rules.suppress).numpy(), expected)


@pytest.mark.parametrize("step", [0, 1])
def test_begin_suppress_through_the_processor_chain_equals_hugging_face(step):
    scores = _scores()
    prompt = 6
    ids = tf.zeros([3, prompt + step], tf.int32)
    expected = hf.TFSuppressTokensAtBeginLogitsProcessor([2, 3], begin_index=prompt)(
        ids, tf.constant(scores), prompt + step).numpy()
    record = loop_params.sampling_params(
        _neutral_rows(3), 3, first_slot=0, eos_token_ids=0, pad_token_id=0, vocab_size=VOCAB,
        rules=loop_params.token_rules(VOCAB, begin_suppress_tokens=[2, 3]))
    got = steps.apply_processors(tf.constant(scores), tf.zeros([3, 16], tf.int32), prompt + step, step,
                                 record, VOCAB).numpy()
    np.testing.assert_array_equal(got, expected)


def test_logit_bias_adds_to_each_row():
    scores = _scores()
    rules = loop_params.token_rules(VOCAB, logit_bias={3: 2.5, 10: -100.0})
    expected = scores.copy()
    expected[:, 3] += 2.5
    expected[:, 10] -= 100.0
    np.testing.assert_allclose(processors.logit_bias(tf.constant(scores), rules.logit_bias).numpy(), expected)


def test_presence_and_frequency_penalties_follow_openai():
    scores = _scores()
    generated = [[1, 1, 2], [5, 5, 5], [7, 8, 9]]
    counts = np.zeros([3, VOCAB], np.int32)
    for row, tokens in enumerate(generated):
        for token in tokens:
            counts[row, token] += 1
    presence = np.array([0.5, 0.0, -1.0], np.float32)
    frequency = np.array([0.25, 1.0, 0.0], np.float32)
    # OpenAI: mu[j] -> mu[j] - c[j] * alpha_frequency - float(c[j] > 0) * alpha_presence
    expected = scores - counts * frequency[:, None] - (counts > 0) * presence[:, None]
    got = processors.presence_frequency_penalty(tf.constant(scores), tf.constant(counts),
                                                tf.constant(presence), tf.constant(frequency)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_min_p_equals_the_published_warper():
    scores = _scores()
    value = np.array([0.0, 0.1, 0.5], np.float32)
    got = processors.min_p(tf.constant(scores), tf.constant(value)).numpy()
    for row in range(3):  # transformers' MinPLogitsWarper
        probs = _softmax(scores[row])
        remove = probs < value[row] * probs.max()
        expected = np.where(remove, -np.inf, scores[row]) if value[row] > 0 else scores[row]
        np.testing.assert_array_equal(got[row], expected)


def test_typical_p_equals_the_published_warper():
    scores = _scores(4)
    scores[3, 5:] = -np.inf  # a row already filtered (top-k before it)
    mass = np.array([1.0, 0.2, 0.9, 0.5], np.float32)
    got = processors.typical_p(tf.constant(scores), tf.constant(mass)).numpy()
    for row in range(4):  # transformers' TypicalLogitsWarper (sort, cumulative mass, cut)
        if mass[row] >= 1.0:
            np.testing.assert_array_equal(got[row], scores[row])
            continue
        logp = scores[row].astype(np.float64) - np.log(np.exp(scores[row] - scores[row].max()).sum()) - \
            scores[row].max()
        p = np.exp(logp)
        entropy = -np.nansum(np.where(p > 0, logp * p, 0.0))
        shifted = np.abs(-logp - entropy)
        order = np.argsort(shifted, kind="stable")
        cumulative = np.cumsum(p[order])
        last = min(int((cumulative < mass[row]).sum()), VOCAB - 1)
        remove = shifted > shifted[order][last]
        np.testing.assert_array_equal(np.isneginf(got[row]), remove | np.isneginf(scores[row]), err_msg=row)


# -- end to end ----------------------------------------------------------------------------------
def test_bad_words_and_suppress_change_greedy_as_asked(tiny):
    prompt = "The theory of relativity is"
    plain = tiny.generate_ids([tiny.tokenize(prompt)], max_new_tokens=6).sequences[0, -6:].tolist()
    # Ban the pair greedy produces at steps 2-3: it must not appear, and the text before it stays.
    banned = tiny.generate_ids([tiny.tokenize(prompt)], max_new_tokens=6,
                               bad_words_ids=[plain[1:3]]).sequences[0, -6:].tolist()
    assert banned[:2] == plain[:2] and banned[2] != plain[2]
    assert all(banned[i:i + 2] != plain[1:3] for i in range(5))
    first = tiny.generate_ids([tiny.tokenize(prompt)], max_new_tokens=3,
                              begin_suppress_tokens=[plain[0]]).sequences[0, -3:].tolist()
    assert first[0] != plain[0]
    never = tiny.generate_ids([tiny.tokenize(prompt)], max_new_tokens=6,
                              suppress_tokens=sorted(set(plain))).sequences[0, -6:].tolist()
    assert not set(never) & set(plain)
    forced = tiny.generate_ids([tiny.tokenize(prompt)], max_new_tokens=3,
                               logit_bias={42: 100.0}).sequences[0, -3:].tolist()
    assert forced == [42, 42, 42]


def test_presence_penalty_greedy_equals_a_numpy_loop(tiny):
    """Greedy with penalties against a loop that runs the model's own forward pass per step and
    applies OpenAI's definition in numpy."""
    ids = tiny.tokenize("Hello, my name is")
    presence, frequency, count = 2.0, 1.5, 8
    result = tiny.generate_ids([ids], max_new_tokens=count, presence_penalty=presence,
                               frequency_penalty=frequency)
    sequence = list(ids)
    generated = np.zeros([tiny.vocab_size])
    for _ in range(count):
        logits = tiny.model(tf.constant([sequence])).logits.numpy()[0, -1]
        logits = logits - generated * frequency - (generated > 0) * presence
        token = int(np.argmax(logits))
        sequence.append(token)
        generated[token] += 1
    assert result.sequences[0, len(ids):].tolist() == sequence[len(ids):]


def test_ignore_eos_and_per_row_min_new_tokens(small_vocab):
    from conftest import SMALL_VOCAB_EOS

    ids = np.array([[5, 6, 7], [8, 9, 10], [11, 12, 13]], np.int32)
    sampled = dict(max_new_tokens=12, do_sample=True, top_k=0, seed=[1, 2, 3])
    plain = small_vocab.generate_ids(ids, **sampled)
    assert (plain.num_generated < 12).any(), "the fixture should end some rows with EOS"
    kept = small_vocab.generate_ids(ids, ignore_eos=True, **sampled)
    assert kept.num_generated.tolist() == [12, 12, 12]
    minimum = [0, 6, 11]
    assert any(plain.num_generated[row] <= minimum[row] for row in range(3)), "min_new_tokens has no effect"
    held = small_vocab.generate_ids(ids, min_new_tokens=minimum, **sampled)
    for row in range(3):
        new = held.sequences[row, 3:3 + held.num_generated[row]].tolist()
        assert SMALL_VOCAB_EOS not in new[:minimum[row]]
        assert held.num_generated[row] > minimum[row] or held.num_generated[row] == 12


def test_new_values_do_not_retrace(tiny):
    ids = [tiny.tokenize("Hello")]
    common = dict(max_new_tokens=4, do_sample=True, bad_words_ids=[[11, 12]], logit_bias={5: 1.0},
                  suppress_tokens=[3], begin_suppress_tokens=[4])
    tiny.generate_ids(ids, seed=1, presence_penalty=0.5, frequency_penalty=0.1, min_p=0.05, typical_p=0.9,
                      **common)
    before = tiny.engine.trace_count
    tiny.generate_ids(ids, seed=2, presence_penalty=-0.5, frequency_penalty=1.0, min_p=0.3, typical_p=0.4,
                      min_new_tokens=2, ignore_eos=True, **dict(common, bad_words_ids=[[7, 8], [9]],
                                                               logit_bias={6: -2.0, 7: 3.0}))
    assert tiny.engine.trace_count == before


@pytest.mark.parametrize("params, match", [
    (dict(logit_bias={10**6: 1.0}), "logit_bias token id must be <="),
    (dict(logit_bias={1: float("nan")}), "logit_bias\\[1\\] must be finite"),
    (dict(bad_words_ids=[[]]), "each banned sequence must be a non-empty list"),
    (dict(bad_words_ids=[[-1]]), "bad_words_ids token id must be >= 0"),
    (dict(suppress_tokens=[10**6]), "suppress_tokens token id must be <="),
    (dict(presence_penalty=3.0), "presence_penalty must be <= 2.0"),
    (dict(min_p=1.5), "min_p must be <= 1.0"),
    (dict(typical_p=0.0), "typical_p must be > 0.0"),
    (dict(ignore_eos="yes"), "ignore_eos must be True or False"),
    (dict(num_beams=2, min_p=0.1), "min_p applies to greedy search and sampling"),
    (dict(num_beams=2, min_new_tokens=[1, 2]), "beam search takes one min_new_tokens"),
])
def test_bad_controls_are_refused(tiny, params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny.generate(["a", "b"], **params)


def test_beam_handler_takes_structured_controls_from_json(tiny):
    """Apache Beam rows carry logit_bias as JSON ({"42": 100}) and token lists; rows that differ in
    them run as separate calls, each equal to generate with the same controls."""
    pytest.importorskip("apache_beam")
    from tfgen.beam import TFGenModelHandler, parse_row

    lines = ['{"prompt": "Hi", "max_new_tokens": 3, "logit_bias": {"42": 100}}',
             '{"prompt": "Hi", "max_new_tokens": 3, "suppress_tokens": [42]}',
             '{"prompt": "Hi", "max_new_tokens": 3, "logit_bias": {"42": "x"}}']
    rows = [parse_row(line) for line in lines]
    assert rows[0]["params"]["logit_bias"] == {42: 100}
    assert "logit_bias[42] must be a number" in rows[2]["error"]
    outputs = TFGenModelHandler("random:tiny").run_inference(rows[:2], tiny)
    assert outputs[0]["completion"] == tiny.generate("Hi", max_new_tokens=3, logit_bias={42: 100},
                                                     return_full_text=False)
    assert outputs[1]["completion"] == tiny.generate("Hi", max_new_tokens=3, suppress_tokens=[42],
                                                     return_full_text=False)


def test_score_on_a_batch_equals_one_text_at_a_time(tiny):
    """Prompt log-probabilities of several texts in one left-padded pass equal each text alone, and
    equal a log-softmax of the model's own forward pass (the reference)."""
    texts = ["The cat sat on the mat.", "Hi", "Once upon a time there was"]
    batch = tiny.score(texts)
    for text, scores in zip(texts, batch):
        ids = [tiny.lm.bos_token_id] + tiny.tokenize(text)
        logits = tiny.model(tf.constant([ids])).logits.numpy()[0, :-1].astype(np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        expected = log_probs[np.arange(len(ids) - 1), ids[1:]]
        np.testing.assert_allclose(scores, expected, atol=1e-4)
        np.testing.assert_allclose(tiny.score(text), scores, atol=1e-4)
    with pytest.raises(ValueError, match=r"at least one token to score \(text 1\)"):
        tiny.score(["fine", ""])
