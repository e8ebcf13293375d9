"""The decoding loops' parameter contract (tfgen/decoding/params.py): one builder for the Python API
and the exported signatures, padding and buckets in numpy and in the graph, seeds."""
import numpy as np
import pytest
import tensorflow as tf

from tfgen.config import ROW_FIELDS, GenerationConfig
from tfgen.decoding import params


def _rows():
    return dict(max_new_tokens=[5, 9], top_k=[0, 7], repetition_penalty=[1.0, 1.3], top_p=[0.9, 1.0],
                temperature=[0.7, 1.2], seed=[11, 12], do_sample=[True, False], min_new_tokens=[2, 3],
                presence_penalty=[0.5, 0.0], frequency_penalty=[0.0, 1.0], min_p=[0.1, 0.0],
                typical_p=[1.0, 0.9], ignore_eos=[False, True])


def test_sampling_params_same_eagerly_and_in_a_graph():
    scalars = dict(first_slot=3, eos_token_ids=[50256, 7], pad_token_id=50256, no_repeat_ngram_size=2,
                   vocab_size=50257)
    eager = params.sampling_params({k: np.asarray(v) for k, v in _rows().items()}, 4, **scalars)

    @tf.function
    def in_graph(rows):
        return params.sampling_params(rows, tf.constant(4), **scalars)

    graph = in_graph({k: tf.constant(v) for k, v in _rows().items()})
    for name, value in eager._asdict().items():
        if name in ("stops", "rules"):
            assert value == getattr(graph, name) == (None if name == "stops" else params.TokenRules())
            continue
        np.testing.assert_array_equal(value.numpy(), getattr(graph, name).numpy(), err_msg=name)
    assert eager.first_slot.numpy() == 3 and eager.no_repeat_ngram_size.numpy() == 2
    assert eager.min_new_tokens.numpy().tolist() == [2, 3, 0, 0]
    assert eager.ignore_eos.numpy().tolist() == [False, True, False, False]
    # Filler rows: greedy, one step, everything else copied from the first row.
    assert eager.do_sample.numpy().tolist() == [True, False, False, False]
    assert eager.max_new_tokens.numpy().tolist() == [5, 9, 1, 1]
    np.testing.assert_allclose(eager.temperature.numpy(), [0.7, 1.2, 0.7, 0.7], rtol=1e-6)
    assert eager.seed.numpy().tolist() == [11, 12, 11, 11]
    assert eager.seed.dtype == tf.int64 and eager.top_k.dtype == tf.int32


def test_every_row_field_has_a_record_field():
    names = set(params.SamplingParams._fields)
    assert {field.name for field in ROW_FIELDS} <= names


def test_beam_params_repeat_the_penalty_per_beam():
    record = params.beam_params(np.array([1.0, 1.5], np.float32), 3, max_new_tokens=8, first_slot=0,
                                eos_token_ids=[1, 4], pad_token_id=1, vocab_size=6, early_stopping="never")
    assert record.repetition_penalty.numpy().tolist() == [1.0, 1.0, 1.0, 1.5, 1.5, 1.5]
    assert record.eos_mask.numpy().tolist() == [False, True, False, False, True, False]
    assert bool(record.early_stopping_never) and not bool(record.early_stopping_true)


def test_graph_padding_equals_numpy_padding():
    rows = [[5, 6, 7], [8], [9, 10]]
    ids, mask = params.left_pad(rows, 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    padded_ids, padded_mask = params.pad_to_buckets(ids, mask, 0)
    assert padded_ids.shape == (4, 8)
    ragged = tf.ragged.constant(rows, tf.int32)
    length = params.bucket_graph(tf.constant(3), params.PROMPT_BUCKETS)
    batch = params.bucket_graph(tf.constant(3), params.BATCH_BUCKETS)
    graph_ids, graph_mask = params.left_pad_graph(ragged, length, batch, 0)
    np.testing.assert_array_equal(graph_ids.numpy(), padded_ids)
    np.testing.assert_array_equal(graph_mask.numpy(), padded_mask)
    assert padded_ids[3].tolist() == padded_ids[0].tolist()  # a filler row copies the first


@pytest.mark.parametrize("value", [1, 8, 9, 64, 65, 5000])
def test_bucket_in_numpy_and_graph(value):
    for buckets in (params.BATCH_BUCKETS, params.PROMPT_BUCKETS):
        expected = params.bucket(value, buckets)
        assert expected >= value and (expected in buckets or expected % buckets[-1] == 0)
        assert int(params.bucket_graph(tf.constant(value), buckets)) == expected


def test_row_seeds():
    assert params.row_seeds(7, 3).tolist() == [7, 7, 7]
    mixed = params.row_seeds([5, None, 6], 3)
    assert mixed.dtype == np.int64 and mixed[0] == 5 and mixed[2] == 6 and 0 <= mixed[1] < 2**62
    assert len(set(params.row_seeds(None, 4).tolist())) == 4
    copies = params.copy_seeds([3, 4], 2)
    assert copies[0] == 3 and copies[2] == 4 and copies[1] != 3  # copy 0 keeps the row's seed


def test_graph_checks_name_the_parameter():
    rows = {k: tf.constant(v) for k, v in _rows().items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"top_p must be > 0 and <= 1"):
        params.check_rows_graph(dict(rows, top_p=tf.constant([0.0, 1.0])), 2, 16)
    with pytest.raises(tf.errors.InvalidArgumentError, match="top_k: one value per prompt"):
        params.check_rows_graph(dict(rows, top_k=tf.constant([1, 2, 3])), 2, 16)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"max_new_tokens must be >= 1 and <= 4"):
        params.check_rows_graph(rows, 2, 4)
    # Greedy rows may carry any temperature; sampling rows need > 0.
    params.check_rows_graph(dict(rows, temperature=tf.constant([0.5, 0.0])), 2, 16)
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature must be > 0"):
        params.check_rows_graph(dict(rows, temperature=tf.constant([0.0, 1.0])), 2, 16)


def test_config_check_fits():
    config = GenerationConfig(max_new_tokens=10)
    config.check_fits(20, 30)
    with pytest.raises(ValueError, match=r"prompt of 21 tokens \+ max_new_tokens=10 exceeds .* context of 30"):
        config.check_fits(21, 30)


def test_in_place_writes_are_a_property_of_the_engine_copy(tiny):
    """No module-level switch: the engine's adapter is a copy that writes the cache in place under
    XLA; the generator's own adapter (eager inspection) keeps the scatter."""
    assert tiny.lm.in_place_writes is False
    assert tiny.engine.lm.in_place_writes is True
    assert tiny.engine.lm.wte is tiny.lm.wte  # same weights, not copied
    assert tfgen_load_eager().engine.lm.in_place_writes is False


def tfgen_load_eager():
    import tfgen

    return tfgen.load("random:tiny", xla=False)
