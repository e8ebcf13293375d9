"""Split products (`TFGEN_SPLIT_PRODUCTS`, `tfgen.models.base.SplitWeight`): the weights stored as
column blocks (row blocks for the output matrix) give the unsplit model's logits and tokens.

Every architecture family reads its projections through `dense` and its output matrix through
`output_logits`, so each is checked once: a transformers GPT-2 (split copies of the model's own
variables) against transformers' own TF forward and `generate`, the independent reference; and
tiny random Hugging Face checkpoints (GPT-2, Llama with a separate lm_head, Qwen2 with q/k/v
biases, Gemma 3) split against the same checkpoint unsplit, logits within 1e-4 on a left-padded
batch, greedy tokens equal.
"""
import numpy as np
import pytest
import tensorflow as tf

import tfgen
from test_hf_checkpoints import CONFIGS, PROMPTS, hf_weights, save
from tfgen.decoding.params import left_pad
from tfgen.models.base import ProductLayout, SplitWeight, full_forward

LAYOUTS = ["2", "3,pad"]  # two column blocks; three (uneven widths) with one-row products padded


def load(spec, layout, monkeypatch):
    monkeypatch.setenv("TFGEN_SPLIT_PRODUCTS", layout)
    return tfgen.load(spec)


def logits_of(gen, ids, mask):
    hidden, _ = full_forward(gen.lm, ids, mask)
    return gen.lm.logits(hidden).numpy()  # [B, T, V]


def assert_split(gen):
    """The layout took: the adapter reads SplitWeights (so the test is not comparing 1 with 1)."""
    weights = gen.lm.variables()
    assert any("of2" in v.name or "of3p" in v.name for v in weights), [v.name for v in weights][:8]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random save_pretrained directories, one per family."""
    root = tmp_path_factory.mktemp("split")
    return {kind: save(root / kind, CONFIGS[kind], hf_weights(CONFIGS[kind], seed=3))
            for kind in ("gpt2", "llama", "qwen2", "gemma3_text")}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_transformers_gpt2_split_equals_transformers(layout, monkeypatch):
    gen = load("random:tiny", layout, monkeypatch)
    assert_split(gen)
    ids = np.asarray([gen.tokenize("The theory of relativity is")], np.int32)
    mask = np.ones_like(ids)
    reference = gen.model(ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(logits_of(gen, ids, mask), reference, atol=1e-4)
    for params in (dict(), dict(num_beams=3)):
        ours = gen.generate_ids(ids, mask, max_new_tokens=8, **params).sequences
        theirs = gen.model.generate(tf.constant(ids), attention_mask=tf.constant(mask), max_new_tokens=8,
                                    pad_token_id=gen.lm.pad_token_id, **params).numpy()
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2", "gemma3_text"])
def test_checkpoint_split_equals_unsplit(kind, checkpoints, monkeypatch):
    plain = load(checkpoints[kind], "1", monkeypatch)
    assert not any("of" in v.name.split("_")[-1] for v in plain.lm.variables())  # one matrix each
    ids, mask = left_pad(PROMPTS, plain.lm.pad_token_id)
    expected = logits_of(plain, ids, mask)
    tokens = plain.generate_ids(ids, mask, max_new_tokens=6).sequences
    for layout in LAYOUTS[:1]:  # 2 blocks; "3,pad" runs through `dense` alike (above)
        split = load(checkpoints[kind], layout, monkeypatch)
        assert_split(split)
        assert split.num_parameters == plain.num_parameters
        valid = mask.astype(bool)  # padded positions' logits are never read
        np.testing.assert_allclose(logits_of(split, ids, mask)[valid], expected[valid], atol=1e-4)
        np.testing.assert_array_equal(split.generate_ids(ids, mask, max_new_tokens=6).sequences, tokens)


def test_split_weight_blocks_are_the_matrix():
    value = np.arange(40 * 100, dtype=np.float32).reshape(40, 100)
    columns = SplitWeight(value, "w", ProductLayout(parts=3))
    assert [p.shape[1] for p in columns.parts] == [48, 48, 4]  # whole 16-float vectors, the rest last
    np.testing.assert_array_equal(np.concatenate([p.numpy() for p in columns.parts], axis=1), value)
    rows = SplitWeight(value, "head", ProductLayout(parts=2), axis=0)
    np.testing.assert_array_equal(np.concatenate([p.numpy() for p in rows.parts], axis=0), value)


@pytest.mark.parametrize("value", ["0", "two", "2,fast", "-1"])
def test_bad_layout_names_the_variable(value, monkeypatch):
    monkeypatch.setenv("TFGEN_SPLIT_PRODUCTS", value)
    with pytest.raises(ValueError, match="TFGEN_SPLIT_PRODUCTS"):
        ProductLayout.from_environment()
