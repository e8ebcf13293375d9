"""Shared fixtures: small random GPT-2 models with the real GPT-2 tokenizer."""
import pytest

import tfgen


@pytest.fixture(scope="session")
def tiny():
    """random:tiny (2 layers, 64 wide, real 50257-token vocabulary), XLA decoding."""
    return tfgen.load("random:tiny", seed=0)
