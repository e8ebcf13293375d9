"""The text surface: `stream`, `generate` on strings, stop strings, transformers' GenerationConfig."""
import transformers

import pytest

PROMPT = "The theory of relativity is"


def continuation(gen, prompt=PROMPT, **params):
    return gen.generate(prompt, return_full_text=False, **params)


# -- stream ---------------------------------------------------------------------------------------


def test_stream_greedy_equals_generate(tiny):
    pieces = list(tiny.stream(PROMPT, max_new_tokens=12))
    assert len(pieces) > 1, "text should come piece by piece"
    assert all(isinstance(piece, str) and piece for piece in pieces)
    assert "".join(pieces) == continuation(tiny, max_new_tokens=12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_sampling_equals_generate(tiny, seed):
    # The whole vocabulary at temperature 1: random byte-level tokens, split multi-byte
    # characters included.
    params = dict(max_new_tokens=16, do_sample=True, top_k=0, seed=seed)
    assert "".join(tiny.stream(PROMPT, **params)) == continuation(tiny, **params)


def test_stream_with_processors_equals_generate(tiny):
    params = dict(max_new_tokens=14, do_sample=True, temperature=0.5, top_k=40, top_p=0.9,
                  repetition_penalty=1.3, no_repeat_ngram_size=2, seed=5)
    assert "".join(tiny.stream("Once upon a time", **params)) == continuation(tiny, "Once upon a time", **params)


def test_stream_is_lazy(tiny):
    stream = tiny.stream(PROMPT, max_new_tokens=12)
    assert iter(stream) is stream
    first = next(stream)
    assert continuation(tiny, max_new_tokens=12).startswith(first)


def _stop_inside(text):
    """A stop string taken from the middle of text, and the text it should leave."""
    middle = len(text) // 2
    stop = text[middle:middle + 3]
    assert stop.strip(), f"pick another prompt: {text!r}"
    return stop, text[:text.find(stop)]


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])
def test_stop_strings(tiny, sampling):
    params = dict(max_new_tokens=16, do_sample=sampling, seed=4)
    text = continuation(tiny, **params)
    stop, expected = _stop_inside(text)
    assert continuation(tiny, stop=stop, **params) == expected
    assert continuation(tiny, stop=[stop], **params) == expected
    assert tiny.generate(PROMPT, stop=stop, **params) == PROMPT + expected
    assert "".join(tiny.stream(PROMPT, stop=stop, **params)) == expected
    # The earliest of several stop strings wins; one that never occurs changes nothing.
    late = text[-2:]
    earliest = min(text.find(late), text.find(stop))
    assert continuation(tiny, stop=[late, stop, "\x00never"], **params) == text[:earliest]
    assert "".join(tiny.stream(PROMPT, stop=[late, stop], **params)) == text[:earliest]
    assert continuation(tiny, stop="\x00never", **params) == text
    assert "".join(tiny.stream(PROMPT, stop="\x00never", **params)) == text


# -- generate on text ---------------------------------------------------------------------------


def test_generate_return_types(tiny):
    single = tiny.generate(PROMPT, max_new_tokens=5)
    assert isinstance(single, str) and single.startswith(PROMPT) and len(single) > len(PROMPT)
    batch = tiny.generate([PROMPT, "Hello"], max_new_tokens=5)
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0] == single and batch[1].startswith("Hello")
    assert tiny.generate((PROMPT, "Hello"), max_new_tokens=5) == batch
    assert tiny.generate([PROMPT], max_new_tokens=5) == [single]


def test_return_full_text(tiny):
    full = tiny.generate([PROMPT, "Hello"], max_new_tokens=6)
    new = tiny.generate([PROMPT, "Hello"], max_new_tokens=6, return_full_text=False)
    assert full == [PROMPT + new[0], "Hello" + new[1]]


def test_num_return_sequences(tiny):
    sampled = tiny.generate(PROMPT, max_new_tokens=6, do_sample=True, num_return_sequences=2, seed=3)
    assert isinstance(sampled, list) and len(sampled) == 2 and sampled[0] != sampled[1]
    assert all(text.startswith(PROMPT) for text in sampled)
    beams = tiny.generate([PROMPT, "Hello"], max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert len(beams) == 4  # flat, prompt by prompt
    assert [text.startswith(PROMPT) for text in beams] == [True, True, False, False]
    assert beams[2].startswith("Hello") and beams[3].startswith("Hello")
    assert tiny.generate(PROMPT, max_new_tokens=6, num_beams=3, num_return_sequences=2) == beams[:2]


# -- transformers.GenerationConfig ------------------------------------------------------------------


def test_transformers_generation_config(tiny):
    config = transformers.GenerationConfig(max_new_tokens=7, repetition_penalty=1.3, no_repeat_ngram_size=2)
    expected = tiny.generate(PROMPT, max_new_tokens=7, repetition_penalty=1.3, no_repeat_ngram_size=2)
    assert tiny.generate(PROMPT, generation_config=config) == expected
    assert tiny.generate(PROMPT, config) == expected
    # Keyword arguments override the config.
    assert tiny.generate(PROMPT, generation_config=config, max_new_tokens=4) == tiny.generate(
        PROMPT, max_new_tokens=4, repetition_penalty=1.3, no_repeat_ngram_size=2)
    assert "".join(tiny.stream(PROMPT, generation_config=config)) == expected[len(PROMPT):]


def test_transformers_generation_config_sampling_and_beams(tiny):
    sampling = transformers.GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.7, top_k=20,
                                             top_p=0.9)
    assert tiny.generate(PROMPT, sampling, seed=8) == tiny.generate(
        PROMPT, max_new_tokens=6, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, seed=8)
    beams = transformers.GenerationConfig(max_new_tokens=6, num_beams=3, num_return_sequences=2,
                                          length_penalty=0.5, early_stopping=True)
    assert tiny.generate(PROMPT, beams) == tiny.generate(
        PROMPT, max_new_tokens=6, num_beams=3, num_return_sequences=2, length_penalty=0.5, early_stopping=True)


def test_transformers_generation_config_prompt_counting_lengths_are_refused(tiny):
    for config, name in ((transformers.GenerationConfig(max_length=40), "max_length"),
                         (transformers.GenerationConfig(min_length=10, max_new_tokens=4), "min_length")):
        with pytest.raises(ValueError, match=f"{name}=.*min_new_tokens|{name}=.*max_new_tokens"):
            tiny.generate(PROMPT, config)
    # transformers' default max_length (20) is its placeholder, not a request: tfgen's default applies.
    assert tiny.generate(PROMPT, transformers.GenerationConfig(max_new_tokens=3)) == tiny.generate(
        PROMPT, max_new_tokens=3)


def test_transformers_generation_config_stop_strings(tiny):
    text = continuation(tiny, max_new_tokens=16)
    stop, expected = _stop_inside(text)
    config = transformers.GenerationConfig(max_new_tokens=16, stop_strings=[stop])
    assert tiny.generate(PROMPT, config, return_full_text=False) == expected
