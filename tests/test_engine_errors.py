"""Bad input: ValueError/TypeError naming the parameter, raised before any TensorFlow work."""
import numpy as np
import pytest

import tfgen


@pytest.fixture()
def gen(tiny, monkeypatch):
    """A generator whose engine fails the test if decoding is reached."""
    gen = tfgen.TextGenerator(tiny.model, tiny.tokenizer)

    def no_tf_work(*args, **kwargs):
        raise AssertionError("TensorFlow work started before the input was rejected")

    monkeypatch.setattr(gen.engine, "prepare", no_tf_work)
    monkeypatch.setattr(gen.engine, "generate", no_tf_work)
    return gen


TWO_ROWS = np.array([[464, 4583, 286], [7454, 2402, 257]], np.int32)

BAD_PARAMS = [
    # (params, exception, text the message must contain)
    (dict(do_sample=True, temperature=0.0), ValueError, "temperature"),
    (dict(do_sample=True, temperature=-0.5), ValueError, "temperature"),
    (dict(do_sample=True, temperature=float("nan")), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_p=-0.2), ValueError, "top_p"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(num_beams=0), ValueError, "num_beams"),
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences"),
    (dict(num_return_sequences=2), ValueError, "num_return_sequences"),  # greedy would repeat itself
    (dict(num_beams=2, do_sample=True), ValueError, "do_sample"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=-3), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=2000), ValueError, "max_new_tokens"),  # beyond the 1024-token context
    (dict(min_new_tokens=-1), ValueError, "min_new_tokens"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(no_repeat_ngram_size=-1), ValueError, "no_repeat_ngram_size"),
    (dict(early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(length_penalty="long"), TypeError, "length_penalty"),
    (dict(eos_token_id=-1), ValueError, "eos_token_id"),
    (dict(pad_token_id=2.5), TypeError, "pad_token_id"),
    (dict(eos_token_id=50257), ValueError, "eos_token_id"),  # outside the vocabulary
    (dict(pad_token_id=60000), ValueError, "pad_token_id"),
    (dict(do_sample="yes"), TypeError, "do_sample"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(stop=""), TypeError, "stop"),
    (dict(stop=[1]), TypeError, "stop"),
    (dict(num_beams=[1, 2]), TypeError, "num_beams"),  # not a per-row parameter
    (dict(temprature=0.5), TypeError, "temprature"),  # unknown
    (dict(generation_config={"max_new_tokens": 3}), TypeError, "generation_config"),
]


def _id(case):
    params, error, _ = case
    return f"{error.__name__}:" + ",".join(f"{k}={v!r}" for k, v in params.items())


@pytest.mark.parametrize("case", BAD_PARAMS, ids=_id)
def test_bad_parameters(gen, case):
    params, error, name = case
    with pytest.raises(error, match=name):
        gen.generate("Hello", **params)
    with pytest.raises(error, match=name):
        gen.generate_ids(TWO_ROWS, **params)


@pytest.mark.parametrize("case", [c for c in BAD_PARAMS if "num_beams" not in c[0]
                                  and "num_return_sequences" not in c[0]], ids=_id)
def test_bad_parameters_stream(gen, case):
    params, error, name = case
    with pytest.raises(error, match=name):
        gen.stream("Hello", **params)  # raised at the call, not at the first next()


@pytest.mark.parametrize("params, name", [
    (dict(do_sample=True, temperature=[1.0, 0.5, 0.7]), "temperature"),
    (dict(top_k=[1]), "top_k"),
    (dict(top_p=[0.5, 0.6, 0.7]), "top_p"),
    (dict(repetition_penalty=[1.1, 1.2, 1.3]), "repetition_penalty"),
    (dict(max_new_tokens=[3]), "max_new_tokens"),
    (dict(do_sample=True, seed=[1, 2, 3]), "seed"),
    (dict(top_k=[[1, 2]]), "top_k"),
    (dict(top_p=[0.5, 0.0]), "top_p"),  # one bad value among the rows
    (dict(num_beams=2, max_new_tokens=[3, 4]), "max_new_tokens"),  # beam search: one value per call
])
def test_bad_per_row_arrays(gen, params, name):
    with pytest.raises(ValueError, match=name):
        gen.generate_ids(TWO_ROWS, **params)
    with pytest.raises(ValueError, match=name):
        gen.generate(["Hello", "Once upon a time"], **params)


def test_prompt_beyond_the_context(gen):
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate("hello " * 1020, max_new_tokens=10)
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate_ids(np.zeros([1, 1000], np.int32), max_new_tokens=25)
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.stream("hello " * 1020, max_new_tokens=10)


@pytest.mark.parametrize("prompts", [5, None, b"bytes", ["Hello", 3], [], ("a", None), [["nested"]]],
                         ids=repr)
def test_non_string_prompts(gen, prompts):
    with pytest.raises(TypeError, match="prompt"):
        gen.generate(prompts, max_new_tokens=3)


@pytest.mark.parametrize("prompt", [5, None, ["Hello"]], ids=repr)
def test_non_string_stream_prompt(gen, prompt):
    with pytest.raises(TypeError, match="prompt"):
        gen.stream(prompt, max_new_tokens=3)


@pytest.mark.parametrize("ids, mask, error, name", [
    (np.array([[1, 2, 50257]]), None, ValueError, "input_ids"),
    (np.array([[1, -2]]), None, ValueError, "input_ids"),
    (np.array([[1.0, 2.0]]), None, TypeError, "input_ids"),
    (np.zeros([0, 3], np.int32), None, TypeError, "input_ids"),
    (np.zeros([2, 2, 2], np.int32), None, TypeError, "input_ids"),
    (TWO_ROWS, np.ones([2, 2], np.int32), ValueError, "attention_mask"),
    (TWO_ROWS, np.array([[1, 1, 1], [0, 0, 0]]), ValueError, "attention_mask"),
], ids=["too-large", "negative", "float", "empty", "3-d", "mask-shape", "empty-row"])
def test_bad_input_ids(gen, ids, mask, error, name):
    with pytest.raises(error, match=name):
        gen.generate_ids(ids, mask, max_new_tokens=3)


def test_empty_prompt_starts_from_bos(tiny):
    bos = tiny.lm.bos_token_id
    assert bos == 50256
    expected = tiny.generate_ids(np.array([[bos]]), max_new_tokens=6)
    text = tiny.tokenizer.decode(expected.sequences[0, 1:].tolist(), skip_special_tokens=True,
                                 clean_up_tokenization_spaces=False)
    assert tiny.generate("", max_new_tokens=6) == text
    assert tiny.generate("", max_new_tokens=6, return_full_text=False) == text
    assert tiny.generate(["", "Hello"], max_new_tokens=6)[0] == text
    assert "".join(tiny.stream("", max_new_tokens=6)) == text
