"""Shared fixtures: small random GPT-2 models with the real GPT-2 tokenizer."""
import pytest

import tfgen


@pytest.fixture(scope="session")
def tiny():
    """random:tiny (2 layers, 64 wide, real 50257-token vocabulary), XLA decoding."""
    return tfgen.load("random:tiny", seed=0)


SMALL_VOCAB_EOS = 3


@pytest.fixture(scope="session")
def small_vocab():
    """A random GPT-2 with a 96-token vocabulary (EOS = 3, often likely), XLA decoding.

    With so few tokens EOS comes up often (beam hypotheses finish, rows stop mid-way) and whole
    next-token distributions are cheap to sample many times. Text-level tests need `tiny`: the
    GPT-2 tokenizer's ids do not fit this vocabulary.
    """
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfgen.tokenizer import default_gpt2_tokenizer

    tf.keras.utils.set_random_seed(1)
    config = GPT2Config(vocab_size=96, n_positions=128, n_layer=2, n_embd=32, n_head=4,
                        bos_token_id=SMALL_VOCAB_EOS, eos_token_id=SMALL_VOCAB_EOS,
                        pad_token_id=SMALL_VOCAB_EOS, initializer_range=0.1)
    model = TFGPT2LMHeadModel(config)
    model(model.dummy_inputs)
    # A longer EOS embedding (tied to the output layer) spreads its logit: in some contexts EOS
    # wins, in others it is far down, so rows and beam hypotheses end at different steps.
    embeddings = model.transformer.wte.embeddings
    embeddings[SMALL_VOCAB_EOS].assign(embeddings[SMALL_VOCAB_EOS] * 4.0)
    return tfgen.TextGenerator(model, default_gpt2_tokenizer())
