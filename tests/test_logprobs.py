"""Per-token log-probabilities with top alternatives, against a full forward pass of the same text.

The reference is independent of the decoding loop: the generated sequence is run through the
model in one eager forward pass (no cache), and the distributions are rebuilt in numpy from their
published definitions (temperature, then top-k, as Hugging Face's warpers; Hugging Face's own
repetition-penalty processor for greedy rows).
"""
import numpy as np
import pytest
import tensorflow as tf

from tfgen.decoding.params import left_pad
from tfgen.models.base import full_forward

PROMPTS = [[464, 4583, 286, 44449, 318], [7454, 2402, 257]]  # "The theory of relativity is", "Once upon a"
NEW = 6


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _forward_logits(gen, result, mask):
    """Raw logits [N, L, V] of the returned sequences, from one forward pass."""
    full_mask = np.concatenate([mask, np.ones([len(mask), result.sequences.shape[1] - mask.shape[1]],
                                              np.int32)], axis=1)
    hidden, _ = full_forward(gen.lm, result.sequences, full_mask)
    return gen.lm.logits(hidden).numpy()


@pytest.fixture(scope="module")
def batch():
    return left_pad(PROMPTS, 50256)


@pytest.fixture(scope="module")
def sampled(tiny, batch):
    ids, mask = batch
    result = tiny.generate_ids(ids, mask, max_new_tokens=NEW, do_sample=True, seed=[1, 2], top_k=10,
                               temperature=0.7, logprobs=3, raw_logprobs=True, ignore_eos=True)
    return result, _forward_logits(tiny, result, mask)


def test_sampled_tokens_logprobs_come_from_the_warped_distribution(sampled, batch):
    result, logits = sampled
    prompt = batch[0].shape[1]
    for row in range(2):
        for step in range(NEW):
            z = logits[row, prompt - 1 + step] / 0.7  # temperature, then top-k (Hugging Face's order)
            z = np.where(z >= np.sort(z)[-10], z, -np.inf)
            warped = _log_softmax(z)
            token = result.sequences[row, prompt + step]
            np.testing.assert_allclose(result.scores[row, step], warped[token], atol=1e-4)
            order = np.argsort(-warped, kind="stable")[:3]
            np.testing.assert_allclose(result.top_logprobs[row, step], warped[order], atol=1e-4)
            assert set(result.top_ids[row, step]) == set(order)  # ties may order differently


def test_raw_logprobs_are_the_model_distribution(sampled, batch):
    result, logits = sampled
    prompt = batch[0].shape[1]
    raw = _log_softmax(logits[:, prompt - 1:prompt - 1 + NEW])  # [N, T, V]
    tokens = result.sequences[:, prompt:]
    np.testing.assert_allclose(result.raw_logprobs, np.take_along_axis(raw, tokens[..., None], -1)[..., 0],
                               atol=1e-4)
    top = np.argsort(-raw, axis=-1)[..., :3]
    np.testing.assert_array_equal(result.raw_top_ids, top)
    np.testing.assert_allclose(result.raw_top_logprobs, np.take_along_axis(raw, top, -1), atol=1e-4)


def test_greedy_logprobs_follow_the_processed_distribution(tiny, batch):
    """Greedy with a repetition penalty: log-probabilities of Hugging Face's processed logits."""
    from transformers.generation.tf_logits_process import TFRepetitionPenaltyLogitsProcessor

    ids, mask = batch
    result = tiny.generate_ids(ids, mask, max_new_tokens=NEW, repetition_penalty=1.4, logprobs=2)
    logits = _forward_logits(tiny, result, mask)
    prompt = ids.shape[1]
    penalty = TFRepetitionPenaltyLogitsProcessor(1.4)
    for row in range(2):
        real = mask[row] > 0
        for step in range(int(result.num_generated[row])):
            seen = np.concatenate([ids[row][real], result.sequences[row, prompt:prompt + step]])
            step_logits = tf.constant(logits[row:row + 1, prompt - 1 + step])
            processed = penalty(tf.constant(seen[None, :]), step_logits, len(seen)).numpy()[0]
            expected = _log_softmax(processed)
            token = result.sequences[row, prompt + step]
            assert token == np.argmax(expected)
            np.testing.assert_allclose(result.scores[row, step], expected[token], atol=1e-4)
            np.testing.assert_array_equal(result.top_ids[row, step], np.argsort(-expected)[:2])
            np.testing.assert_allclose(result.top_logprobs[row, step], np.sort(expected)[::-1][:2], atol=1e-4)


def test_another_count_reuses_the_program(tiny, batch):
    ids, mask = batch
    tiny.generate_ids(ids, mask, max_new_tokens=NEW, logprobs=1)
    traces = tiny.engine.trace_count + tiny.engine.restore_count
    for count in (4, 20):
        result = tiny.generate_ids(ids, mask, max_new_tokens=NEW, logprobs=count)
        assert result.top_ids.shape == (2, result.scores.shape[1], count)
    assert tiny.engine.trace_count + tiny.engine.restore_count == traces
    only_chosen = tiny.generate_ids(ids, mask, max_new_tokens=NEW, logprobs=0)  # the plain program's
    assert only_chosen.top_ids.shape == (2, only_chosen.scores.shape[1], 0)
    plain = tiny.generate_ids(ids, mask, max_new_tokens=NEW)
    assert plain.top_ids is None and plain.raw_logprobs is None


def test_completions_carry_token_logprobs(tiny):
    """The text API: one entry per generated token, with its text and the alternatives."""
    completion, = tiny.complete(["The theory of relativity is"], max_new_tokens=NEW, logprobs=2)
    assert len(completion.logprobs) == completion.num_tokens
    ids = tiny.tokenize("The theory of relativity is")
    result = tiny.generate_ids([ids], max_new_tokens=NEW, logprobs=2)
    for step, entry in enumerate(completion.logprobs):
        assert entry.id == result.sequences[0, len(ids) + step]
        assert entry.text == tiny.decode([entry.id])
        assert entry.logprob == pytest.approx(float(result.scores[0, step]), abs=1e-6)
        assert [a.id for a in entry.top] == result.top_ids[0, step].tolist()
        assert [a.text for a in entry.top] == [tiny.decode([i]) for i in result.top_ids[0, step]]
    if 50256 not in [entry.id for entry in completion.logprobs]:  # EOS has text but is not shown
        assert "".join(entry.text for entry in completion.logprobs) == completion.completion
    assert tiny.generate("Hi", max_new_tokens=2, logprobs=1).logprobs[0].top[0].logprob <= 0.0


@pytest.mark.parametrize("params, message", [
    (dict(logprobs=-1), "logprobs"),
    (dict(logprobs=21), "logprobs"),
    (dict(logprobs=1.5), "logprobs"),
    (dict(logprobs=2, num_beams=2), "beam search"),
    (dict(raw_logprobs=True), "raw_logprobs"),
    (dict(logprobs=1, raw_logprobs="yes"), "raw_logprobs"),
])
def test_bad_logprobs_arguments(tiny, params, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny.generate_ids([[464, 4583]], max_new_tokens=2, **params)


def test_cli_logprobs_json(tiny, capsys, monkeypatch):
    """`tfgen generate --logprobs N --json`: each output's logprobs list equals the Python API's."""
    import json

    import tfgen
    from tfgen import cli

    monkeypatch.setattr(tfgen, "load", lambda spec=None, **options: tiny)
    status = cli.main(["generate", "Hello there", "--model", "random:tiny", "--json", "--max-new-tokens", "4",
                       "--logprobs", "2", "--raw-logprobs"])
    out, _ = capsys.readouterr()
    assert status == 0
    row = json.loads(out.splitlines()[0])
    expected = tiny.complete(["Hello there"], max_new_tokens=4, logprobs=2, raw_logprobs=True)[0]
    assert row["completion"] == expected.completion and len(row["logprobs"]) == expected.num_tokens
    for got, entry in zip(row["logprobs"], expected.logprobs):
        assert (got["id"], got["text"]) == (entry.id, entry.text)
        assert got["logprob"] == pytest.approx(entry.logprob)
        assert got["raw_logprob"] == pytest.approx(entry.raw_logprob)
        assert [a["id"] for a in got["top"]] == [a.id for a in entry.top]
        assert [a["id"] for a in got["raw_top"]] == [a.id for a in entry.raw_top]
    assert cli.main(["generate", "Hi", "--model", "random:tiny", "--stream", "--logprobs", "1"]) == 2
    assert "--stream and --logprobs" in capsys.readouterr().err


def test_beam_rows_carry_eos_lists_and_logprobs(tiny):
    """An Apache Beam row with an EOS list and logprobs gets what `complete` gives for it."""
    import json

    from tfgen.beam import TFGenModelHandler, parse_row

    common = {"max_new_tokens": 6, "eos_token_id": [50256, 13], "logprobs": 2}
    rows = [dict(common, prompt="The theory of relativity is"), dict(common, prompt="Hello")]
    out = list(TFGenModelHandler("random:tiny", max_batch_size=2).run_inference(
        [parse_row(json.dumps(row)) for row in rows], tiny))
    expected = tiny.complete([row["prompt"] for row in rows], max_new_tokens=6, eos_token_id=[50256, 13],
                             logprobs=2)
    for got, completion in zip(out, expected):
        assert got["completion"] == completion.completion and got["num_tokens"] == completion.num_tokens
        assert [t["id"] for t in got["logprobs"]] == [t.id for t in completion.logprobs]
        assert [[a["id"] for a in t["top"]] for t in got["logprobs"]] == [[a.id for a in t.top]
                                                                          for t in completion.logprobs]
