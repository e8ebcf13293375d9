"""EOS as a list: a GGUF model's end-of-generation ids are llama.cpp's, and any of them ends a row.

The reference is llama.cpp itself (llama-cpp-python, `llama_vocab_is_eog` over the whole
vocabulary, loaded with `vocab_only`); generation against Hugging Face's own handling of an EOS
list is in tests/test_engine_exact.py (`test_greedy_eos_list`, `test_beam_eos_list`).
"""
import pytest

import tfgen
from tfgen.loading import packaged_gguf_path


def llama_cpp_eog_ids(path):
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(model._model.model)
    return {i for i in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, i)}


def test_smollm2_end_ids_are_llama_cpps():
    path = packaged_gguf_path("smollm2-135m")
    gen = tfgen.load("smollm2-135m")
    assert set(gen.lm.eos_token_ids) == llama_cpp_eog_ids(path)
    assert gen.lm.eos_token_ids[0] == gen.lm.eos_token_id


@pytest.mark.download
def test_gemma3_end_of_turn_ends_a_row():
    try:
        path = packaged_gguf_path("gemma3-270m")
    except ValueError as error:
        pytest.skip(f"the Gemma 3 270M GGUF cannot be had here: {error}")
    from tfgen.models.gguf import read_gguf

    config = read_gguf(path).config
    expected = llama_cpp_eog_ids(path)
    assert set(config.eos_token_ids) == expected and 106 in expected  # <end_of_turn>


def test_a_second_eos_id_ends_the_row(tiny):
    """An id greedy produces mid-way, given as a second EOS: the row ends at its first occurrence,
    in the compiled loop and in streaming."""
    prompt = "The theory of relativity is"
    plain = tiny.generate_ids([tiny.tokenize(prompt)], max_new_tokens=8, ignore_eos=True)
    new = plain.sequences[0, -8:].tolist()
    step = next(i for i in range(1, 8) if new[i] not in new[:i])
    ids = [50256, new[step]]
    ended = tiny.generate_ids([tiny.tokenize(prompt)], max_new_tokens=8, eos_token_id=ids)
    assert ended.num_generated[0] == step + 1
    assert ended.sequences[0, -ended.scores.shape[1]:][:step + 1].tolist() == new[:step + 1]
    streamed = list(tiny.engine.stream(tiny.tokenize(prompt), tfgen.GenerationConfig(
        max_new_tokens=8, eos_token_id=ids).validate(1, tiny.vocab_size)))
    assert streamed == new[:step + 1]
    with pytest.raises(ValueError, match="eos_token_id"):
        tiny.generate_ids([[464]], max_new_tokens=2, eos_token_id=[])
    with pytest.raises(ValueError, match="eos_token_id"):
        tiny.generate_ids([[464]], max_new_tokens=2, eos_token_id=[3, 10 ** 6])
