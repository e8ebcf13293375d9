"""Greedy and beam search against Hugging Face, token for token.

The reference is always Hugging Face 4.57's `TFGPT2LMHeadModel.generate` run eagerly (its
no-repeat-n-gram processor only runs eagerly) on the same weights, or the model's own full
forward pass; nothing here compares tfgen with values taken from tfgen.

Shapes are chosen to share compiled programs: prompts of at most 8 tokens (prompt bucket 8), at
most 16 new tokens (step bucket 16), batches of 1, 2 or 4 rows, beam search with 3 beams.
"""
import numpy as np
import pytest
import tensorflow as tf

from tfgen.decoding import steps as loop_steps
from tfgen.decoding.params import left_pad
from tfgen.models.base import positions_from_mask

PAD = 50256  # GPT-2's EOS, used as the pad id of the `tiny` model's batches
SMALL_PAD = 0  # the small-vocabulary model pads with a token that is not its EOS

PROMPTS = {
    "relativity": [464, 4583, 286, 44449, 318],  # "The theory of relativity is"
    "hello": [15496],  # "Hello"
    "shocking": [818, 257, 14702, 4917, 11, 5519, 5071],  # "In a shocking finding, scientists discovered"
    "once": [7454, 2402, 257, 640],  # "Once upon a time"
}


def hf_generate(gen, ids, mask, max_new_tokens, min_new_tokens=0, **params):
    """Hugging Face's eager generate (greedy or beam), with scores."""
    if min_new_tokens:
        # Hugging Face's TF generate ignores min_new_tokens; min_length counts the padded prompt.
        params["min_length"] = ids.shape[1] + min_new_tokens
    return gen.model.generate(
        tf.constant(ids), attention_mask=tf.constant(mask), max_new_tokens=max_new_tokens,
        do_sample=False, return_dict_in_generate=True, output_scores=True, **params)


def hf_num_generated(new_tokens, eos):
    """New tokens per row of Hugging Face's output: up to and including the first EOS."""
    counts = []
    for row in new_tokens:
        hits = np.flatnonzero(np.isin(row, eos))
        counts.append(hits[0] + 1 if hits.size else len(row))
    return np.array(counts)


def assert_matches_hf(gen, ids, mask, max_new_tokens=12, **params):
    """Run tfgen and Hugging Face with the same parameters and require the same result.

    Compares on tfgen's width (prompt + the longest row) and checks that Hugging Face has only
    padding beyond it; checks num_generated, the padding after each row's end and, for beam
    search, the sequence scores. Returns (ours, Hugging Face's output).
    """
    params.setdefault("pad_token_id", PAD)
    pad = params["pad_token_id"]
    eos = params.get("eos_token_id", gen.lm.eos_token_id)
    ours = gen.generate_ids(ids, mask, max_new_tokens=max_new_tokens, **params)
    hf = hf_generate(gen, ids, mask, max_new_tokens, **params)
    expected = hf.sequences.numpy()
    prompt = ids.shape[1]
    width = ours.sequences.shape[1]
    assert prompt < width <= expected.shape[1]
    expected_counts = hf_num_generated(expected[:, prompt:], eos)
    if params.get("num_beams", 1) > 1:
        np.testing.assert_allclose(ours.scores, hf.sequences_scores.numpy(), rtol=1e-4)
        # Where a prompt finished fewer hypotheses than it returns, Hugging Face fills the other
        # slots with placeholders: score -1e9 and padding over the whole row, prompt included.
        # tfgen returns the same score, the prompt, padding, and num_generated 0.
        placeholder = hf.sequences_scores.numpy() <= -1e9
        assert (expected[placeholder] == pad).all()
        expected[placeholder, :prompt] = np.repeat(ids, len(expected) // len(ids), axis=0)[placeholder]
        expected_counts[placeholder] = 0
    np.testing.assert_array_equal(ours.sequences, expected[:, :width])
    assert (expected[:, width:] == pad).all()
    np.testing.assert_array_equal(ours.num_generated, expected_counts)
    for row, count in enumerate(ours.num_generated):
        assert (ours.sequences[row, prompt + count:] == pad).all()
    return ours, hf


def first_ending(new_tokens, min_step=2):
    """A token that one row produces first at step >= min_step and no other row produces.

    Used as the EOS id of a random model (which otherwise never ends a row): that row then
    stops at that step. Returns (row, step, token).
    """
    for row, tokens in enumerate(new_tokens):
        for step in range(min_step, len(tokens) - 2):
            token = int(tokens[step])
            others = np.delete(new_tokens, row, axis=0)
            if token not in tokens[:step] and token not in others:
                return row, step, token
    raise AssertionError(f"no usable EOS candidate in {new_tokens}")


@pytest.fixture(scope="module")
def batch():
    """Two prompts of different lengths, left-padded."""
    return left_pad([PROMPTS["relativity"], PROMPTS["once"][:3]], PAD)


@pytest.fixture(scope="module")
def mid_eos(tiny, batch):
    """(row, step, token): with eos_token_id=token, greedy ends that row of `batch` at that step.

    Found from Hugging Face's own greedy output, so it does not depend on tfgen.
    """
    ids, mask = batch
    plain = hf_generate(tiny, ids, mask, 12, pad_token_id=PAD).sequences.numpy()
    return first_ending(plain[:, ids.shape[1]:])


# -- greedy ---------------------------------------------------------------------------------


def test_greedy_single_prompt(tiny):
    ids = np.array([PROMPTS["relativity"]], np.int32)
    assert_matches_hf(tiny, ids, np.ones_like(ids), max_new_tokens=12)


def test_greedy_left_padded_batch(tiny, batch):
    ours, _ = assert_matches_hf(tiny, *batch, max_new_tokens=12)
    np.testing.assert_array_equal(ours.num_generated, [12, 12])


@pytest.mark.parametrize("params", [
    dict(repetition_penalty=1.3),
    dict(repetition_penalty=0.7),
    dict(no_repeat_ngram_size=1),
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=3),
    dict(repetition_penalty=1.2, no_repeat_ngram_size=2),
], ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_greedy_processors(tiny, batch, params):
    assert_matches_hf(tiny, *batch, max_new_tokens=14, **params)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 16])  # 16: the whole step bucket
def test_greedy_lengths_at_the_edges(tiny, batch, max_new_tokens):
    ours, _ = assert_matches_hf(tiny, *batch, max_new_tokens=max_new_tokens)
    np.testing.assert_array_equal(ours.num_generated, [max_new_tokens] * 2)


def test_greedy_eos_mid_way(tiny, batch, mid_eos):
    row, step, token = mid_eos
    ours, _ = assert_matches_hf(tiny, *batch, max_new_tokens=12, eos_token_id=token, pad_token_id=PAD)
    assert ours.num_generated[row] == step + 1
    assert ours.num_generated[1 - row] == 12
    assert ours.sequences[row, batch[0].shape[1] + step] == token


def test_greedy_eos_row_alone(tiny, batch, mid_eos):
    # A batch of one that ends early: the returned width shrinks to its length.
    row, step, token = mid_eos
    ids, mask = batch
    real = mask[row] > 0
    single = ids[row][real][None, :]
    ours, _ = assert_matches_hf(tiny, single, np.ones_like(single), max_new_tokens=12,
                                eos_token_id=token, pad_token_id=PAD)
    assert ours.sequences.shape[1] == single.shape[1] + step + 1


@pytest.fixture(scope="module")
def two_eos(tiny, batch):
    """Two EOS ids, one taken from each row's plain greedy text (Hugging Face's), at different
    steps: with both as eos_token_id each row ends at the first of them it reaches."""
    ids, mask = batch
    plain = hf_generate(tiny, ids, mask, 12, pad_token_id=PAD).sequences.numpy()[:, ids.shape[1]:]
    return [int(plain[0, 3]), int(plain[1, 6])]


def test_greedy_eos_list(tiny, batch, two_eos):
    ours, _ = assert_matches_hf(tiny, *batch, max_new_tokens=12, eos_token_id=two_eos, pad_token_id=PAD)
    assert (ours.num_generated < 12).all()


def test_beam_eos_list(tiny, batch, two_eos):
    assert_matches_hf(tiny, *batch, max_new_tokens=12, eos_token_id=two_eos, pad_token_id=PAD, **BEAM)


@pytest.mark.parametrize("min_new_tokens", [2, 6])
def test_greedy_min_new_tokens(tiny, batch, mid_eos, min_new_tokens):
    _, step, token = mid_eos
    ours, _ = assert_matches_hf(tiny, *batch, max_new_tokens=12, min_new_tokens=min_new_tokens,
                                eos_token_id=token, pad_token_id=PAD)
    assert ours.num_generated.min() >= min_new_tokens
    if min_new_tokens > step:
        assert ours.num_generated.min() > step + 1  # EOS was held back


def test_greedy_small_vocab_eos(small_vocab):
    """A model that ends rows by itself, pad != EOS, per-row max_new_tokens."""
    rng = np.random.default_rng(0)
    rows = [rng.integers(4, 96, size=n).tolist() for n in (6, 3, 5, 6)]
    ids, mask = left_pad(rows, SMALL_PAD)
    ours, _ = assert_matches_hf(small_vocab, ids, mask, max_new_tokens=16, pad_token_id=SMALL_PAD)
    eos = small_vocab.lm.eos_token_id
    ended = [eos in seq[ids.shape[1]:] for seq in ours.sequences]
    assert any(ended) and not all(ended), "the fixture should end some rows and not others"


def test_greedy_no_repeat_ngram_1_with_bucket_padding(small_vocab):
    """Greedy picks token 0 at step 15 of the first row; the prompt bucket's padding slots
    (6 tokens in a bucket of 8) must not put token 0 among the banned 1-grams."""
    rows = [[21, 64, 73, 25, 29, 44], [28, 93, 20], [86, 77, 81, 14, 40], [61, 49, 65, 66, 64, 9]]
    ids, mask = left_pad(rows, SMALL_PAD)
    ours, _ = assert_matches_hf(small_vocab, ids, mask, max_new_tokens=16, pad_token_id=1,
                                no_repeat_ngram_size=1)
    assert ours.sequences[0, ids.shape[1] + 15] == 0


def test_greedy_scores_are_processed_log_probs(tiny, batch, mid_eos):
    """exp(score) is the softmax probability of the chosen token under Hugging Face's processed logits."""
    _, _, token = mid_eos
    params = dict(repetition_penalty=1.3, eos_token_id=token, pad_token_id=PAD)
    ours, hf = assert_matches_hf(tiny, *batch, max_new_tokens=12, **params)
    prompt = batch[0].shape[1]
    for step, logits in enumerate(hf.scores):
        logits = logits.numpy().astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        for row in range(len(probs)):
            if step < ours.num_generated[row]:
                chosen = ours.sequences[row, prompt + step]
                np.testing.assert_allclose(np.exp(ours.scores[row, step]), probs[row, chosen], rtol=1e-4)
            else:
                assert ours.scores[row, step] == 0.0


def test_greedy_text_equals_hf(tiny):
    prompt = "The theory of relativity is"
    ids = np.array([tiny.tokenize(prompt)], np.int32)
    hf = hf_generate(tiny, ids, np.ones_like(ids), 10, pad_token_id=PAD).sequences.numpy()[0]
    expected = tiny.tokenizer.decode(hf[ids.shape[1]:].tolist(), skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
    assert tiny.generate(prompt, max_new_tokens=10) == prompt + expected
    assert tiny.generate(prompt, max_new_tokens=10, return_full_text=False) == expected


# -- beam search ------------------------------------------------------------------------------

BEAM = dict(num_beams=3, num_return_sequences=2)


def test_beam_single_prompt(tiny):
    ids = np.array([PROMPTS["shocking"]], np.int32)
    assert_matches_hf(tiny, ids, np.ones_like(ids), max_new_tokens=12, **BEAM)


@pytest.mark.parametrize("params", [
    dict(),
    dict(repetition_penalty=1.3),
    dict(no_repeat_ngram_size=2),
    dict(length_penalty=0.0),
], ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "plain")
def test_beam_left_padded_batch(tiny, batch, params):
    assert_matches_hf(tiny, *batch, max_new_tokens=12, **BEAM, **params)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 16])
def test_beam_lengths_at_the_edges(tiny, batch, max_new_tokens):
    assert_matches_hf(tiny, *batch, max_new_tokens=max_new_tokens, **BEAM)


@pytest.fixture(scope="module")
def beam_eos(tiny, batch):
    """An EOS id that some beam hypotheses of `batch` reach, from Hugging Face's beam output."""
    ids, mask = batch
    plain = hf_generate(tiny, ids, mask, 12, pad_token_id=PAD, **BEAM).sequences.numpy()
    return first_ending(plain[:, ids.shape[1]:])[2]


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 2.0, -1.0])
def test_beam_eos_tiny(tiny, batch, beam_eos, early_stopping, length_penalty):
    assert_matches_hf(tiny, *batch, max_new_tokens=12, eos_token_id=beam_eos, pad_token_id=PAD,
                      early_stopping=early_stopping, length_penalty=length_penalty, **BEAM)


def test_beam_min_new_tokens(tiny, batch, beam_eos):
    assert_matches_hf(tiny, *batch, max_new_tokens=12, min_new_tokens=5, eos_token_id=beam_eos,
                      pad_token_id=PAD, **BEAM)


@pytest.fixture(scope="module")
def small_batch():
    rng = np.random.default_rng(0)
    return left_pad([rng.integers(4, 96, size=n).tolist() for n in (6, 3, 6, 5)], SMALL_PAD)


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 2.0, -0.5])
def test_beam_small_vocab(small_vocab, small_batch, early_stopping, length_penalty):
    """Hypotheses end at many different steps: finalisation, length penalty and stop rules."""
    ours, _ = assert_matches_hf(small_vocab, *small_batch, max_new_tokens=16, pad_token_id=SMALL_PAD,
                                num_beams=3, num_return_sequences=3, early_stopping=early_stopping,
                                length_penalty=length_penalty)
    if early_stopping is True and length_penalty == 1.0:
        eos = small_vocab.lm.eos_token_id
        assert (ours.sequences == eos).any(), "the fixture should finish some hypotheses"


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.parametrize("length_penalty", [1.0, 2.0])
def test_beam_batch_not_filling_its_bucket(small_vocab, early_stopping, length_penalty):
    """3 prompts run in the 4-row program, and Hugging Face stops before max_new_tokens.

    Beam search's stop test looks at every row: the bucket's padding row must not keep the
    loop going after the real rows are done (with early_stopping=False the extra steps found
    better hypotheses than Hugging Face's for the second prompt).
    """
    ids, mask = left_pad([[82, 91], [82, 26, 9], [82, 13, 49, 34]], SMALL_PAD)
    _, hf = assert_matches_hf(small_vocab, ids, mask, max_new_tokens=16, pad_token_id=SMALL_PAD,
                              num_beams=3, num_return_sequences=3, early_stopping=early_stopping,
                              length_penalty=length_penalty)
    if early_stopping is True:
        assert hf.sequences.shape[1] - ids.shape[1] < 16, "the prompts should stop Hugging Face early"


def test_beam_with_processors_small_vocab(small_vocab, small_batch):
    assert_matches_hf(small_vocab, *small_batch, max_new_tokens=16, pad_token_id=SMALL_PAD,
                      num_beams=3, num_return_sequences=3, repetition_penalty=1.5,
                      no_repeat_ngram_size=2, min_new_tokens=3)


# -- the cached forward pass ----------------------------------------------------------------


def _reference_logits(gen, ids, mask):
    """The model's own full forward pass: last-position logits [B, V]."""
    positions = positions_from_mask(mask)
    out = gen.model(tf.constant(ids), attention_mask=tf.constant(mask), position_ids=positions)
    return out.logits.numpy()[:, -1]


def _cached_logits(lm, ids, mask, steps, num_steps):
    """Prefill + one feed per step, as the decoding loops run them: logits [1 + steps, B, V]."""
    logits, cache, key_mask, positions = loop_steps.prefill(lm, ids, mask, ids.shape[1] + num_steps)
    outputs = [logits]
    for step in range(steps.shape[1]):
        slot = ids.shape[1] + step
        logits, cache, key_mask = loop_steps.feed(lm, steps[:, step], slot, positions, key_mask, cache)
        positions = positions + 1
        outputs.append(logits)
    return tf.stack(outputs)


@pytest.mark.parametrize("xla", [False, True], ids=["eager", "xla"])
def test_cached_forward_equals_full_forward(tiny, xla):
    """Logits of prefill + cached steps equal the full forward pass at every step (atol 1e-4).

    The cached path also runs with 3 extra columns of padding on the left (as a prompt bucket
    adds), which must not change anything.
    """
    rows = [PROMPTS["shocking"], PROMPTS["hello"]]
    ids, mask = left_pad(rows, PAD)
    bucket_ids = np.pad(ids, [[0, 0], [3, 0]], constant_values=PAD)
    bucket_mask = np.pad(mask, [[0, 0], [3, 0]])
    steps = np.random.default_rng(0).integers(0, 50257, size=[2, 5]).astype(np.int32)

    lm = tiny.lm.with_in_place_writes(xla)

    def run(ids, mask, steps):
        return _cached_logits(lm, ids, mask, steps, num_steps=8)

    if xla:
        compiled = tf.function(run, jit_compile=True)
        cached = compiled(tf.constant(bucket_ids), tf.constant(bucket_mask), tf.constant(steps)).numpy()
    else:
        cached = run(tf.constant(bucket_ids), tf.constant(bucket_mask), tf.constant(steps)).numpy()

    for step in range(steps.shape[1] + 1):
        full_ids = np.concatenate([ids, steps[:, :step]], axis=1)
        full_mask = np.concatenate([mask, np.ones_like(steps[:, :step])], axis=1)
        expected = _reference_logits(tiny, full_ids, full_mask)
        np.testing.assert_allclose(cached[step], expected, atol=1e-4, rtol=0)
