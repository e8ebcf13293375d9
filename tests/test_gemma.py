"""Gemma 3 (and Gemma 2 and 1 by config): tfgen's adapter against keras-hub and llama.cpp.

References, each independent of tfgen's own code:
- keras-hub's `Gemma3Backbone` / `GemmaBackbone` holding the same random weights (copied in as
  keras-hub's own Hugging Face converters copy them): logits of a left-padded batch, of the
  cached prefill and decode steps, and greedy decoding against keras-hub's `generate_step`.
  keras-hub's Gemma blocks always scale queries by head_dim ** -0.5; the tests switch each
  block's `query_head_dim_normalize` off so that it scales by (hidden / heads) ** -0.5, which
  tests query_pre_attn_scalar != head_dim.
- llama.cpp on tiny GGUF files written here as its converter writes them: tensor names from the
  gguf package's own Hugging Face name map, every norm weight stored as 1 + w, metadata keys of
  the architecture. This pins the GGUF conventions (names, the norm shift, the layer pattern and
  RoPE bases llama.cpp hard-codes) without tfgen's mapping.
- llama.cpp on the real Gemma 3 270M file (Q4_K_M), when `packaged_gguf_path("gemma3-270m")`
  can provide it.
"""
import numpy as np
import pytest

import tfgen
from tfgen.config import GenerationConfig
from tfgen.decoding.engine import Engine
from tfgen.decoding.params import left_pad
from tfgen.models import gguf as tfgen_gguf
from tfgen.models.base import full_forward
from tfgen.models.gemma import Gemma, GemmaConfig, GemmaWeights

VOCAB, BOS, EOS, PAD = 300, 2, 1, 0
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, max_position_embeddings=128,
              bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
FAMILIES = {
    # keras-hub's Gemma 3 makes every 6th layer global with RoPE base 1e6 and slides on the others
    # with base 1e4, so 6 layers: 0-4 slide over 4 tokens, 5 is global (with linear RoPE scaling).
    "gemma3": dict(num_hidden_layers=6, rope_theta=1e6, rope_local_base_freq=1e4, sliding_window=4,
                   rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # Gemma 2: layers 0 and 2 slide, 1 is global; small soft-caps, so that they bind.
    "gemma2": dict(num_hidden_layers=3, rope_theta=1e4, sliding_window=4, attn_logit_softcapping=2.0,
                   final_logit_softcapping=3.0),
    "gemma": dict(num_hidden_layers=2, rope_theta=1e4, sliding_window=None),
}
# Prompts of 11, 7 and 3 tokens: with a window of 4 the long ones reach past it.
PROMPTS = [list(np.random.default_rng(7).integers(4, VOCAB, n)) for n in (11, 7, 3)]


def gemma_config(family, **overrides):
    # keras-hub without query_head_dim_normalize scales queries by (hidden / heads) ** -0.5.
    fields = dict(COMMON, query_pre_attn_scalar=COMMON["hidden_size"] // COMMON["num_attention_heads"],
                  **FAMILIES[family], model_type=family)
    fields.update(overrides)
    return GemmaConfig(**fields)


def random_weights(config, seed=0):
    """Random float32 weights under Hugging Face's names and conventions (norm weights w of 1 + w)."""
    rng = np.random.default_rng(seed)
    heads, kv, hd, d, f = (config.num_attention_heads, config.num_key_value_heads, config.head_dim,
                           config.hidden_size, config.intermediate_size)

    def normal(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {"model.embed_tokens.weight": normal([config.vocab_size, d], 0.1),
               "model.norm.weight": normal([d], 0.3)}
    norms = ["input_layernorm", "post_attention_layernorm"]
    if config.use_post_norms:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        weights.update({p + name + ".weight": normal([d], 0.3) for name in norms})
        if config.use_qk_norm:
            weights[p + "self_attn.q_norm.weight"] = normal([hd], 0.3)
            weights[p + "self_attn.k_norm.weight"] = normal([hd], 0.3)
        weights[p + "self_attn.q_proj.weight"] = normal([heads * hd, d], 0.15)
        weights[p + "self_attn.k_proj.weight"] = normal([kv * hd, d], 0.15)
        weights[p + "self_attn.v_proj.weight"] = normal([kv * hd, d], 0.15)
        weights[p + "self_attn.o_proj.weight"] = normal([d, heads * hd], 0.15)
        weights[p + "mlp.gate_proj.weight"] = normal([f, d], 0.15)
        weights[p + "mlp.up_proj.weight"] = normal([f, d], 0.15)
        weights[p + "mlp.down_proj.weight"] = normal([d, f], 0.15)
    return weights


def adapter(config, weights):
    return Gemma(GemmaWeights(config, dict(weights)))


def keras_hub_backbone(config, weights):
    """keras-hub's backbone of the family holding `weights`, mapped as keras-hub's own converters
    (keras_hub/src/utils/transformers/convert_gemma3.py, convert_gemma.py) map Hugging Face's."""
    import keras_hub

    shared = dict(vocabulary_size=config.vocab_size, num_layers=config.num_hidden_layers,
                  num_query_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                  hidden_dim=config.hidden_size, head_dim=config.head_dim,
                  use_post_ffw_norm=config.use_post_norms, use_post_attention_norm=config.use_post_norms,
                  attention_logit_soft_cap=config.attn_logit_softcapping,
                  final_logit_soft_cap=config.final_logit_softcapping,
                  use_sliding_window_attention=bool(config.sliding_window),
                  sliding_window_size=config.sliding_window or 4096, layer_norm_epsilon=config.rms_norm_eps,
                  dtype="float32")
    if config.model_type == "gemma3":
        backbone = keras_hub.models.Gemma3Backbone(
            image_size=None, intermediate_dim=config.intermediate_size, use_query_key_norm=True,
            global_rope_scaling_factor=config.rope_scaling_factor, **shared)
    else:  # keras-hub's Gemma counts both halves of the gated feed-forward in intermediate_dim
        backbone = keras_hub.models.GemmaBackbone(intermediate_dim=2 * config.intermediate_size, **shared)
    w = weights
    backbone.get_layer("token_embedding").embeddings.assign(w["model.embed_tokens.weight"])
    backbone.get_layer("final_normalization").scale.assign(w["model.norm.weight"])
    for i in range(config.num_hidden_layers):
        block, p = backbone.get_layer(f"decoder_block_{i}"), f"model.layers.{i}."
        block.attention.query_head_dim_normalize = False  # see the module docstring
        block.pre_attention_norm.scale.assign(w[p + "input_layernorm.weight"])
        if config.use_post_norms:
            block.post_attention_norm.scale.assign(w[p + "post_attention_layernorm.weight"])
            block.pre_ffw_norm.scale.assign(w[p + "pre_feedforward_layernorm.weight"])
            block.post_ffw_norm.scale.assign(w[p + "post_feedforward_layernorm.weight"])
        else:
            block.pre_ffw_norm.scale.assign(w[p + "post_attention_layernorm.weight"])
        attention = block.attention
        for layer, name in ((attention.query_dense, "q"), (attention.key_dense, "k"),
                            (attention.value_dense, "v")):
            heads, d, hd = layer.kernel.shape  # [heads, D, hd] from [heads * hd, D]
            matrix = w[p + f"self_attn.{name}_proj.weight"]
            layer.kernel.assign(matrix.reshape(heads, hd, d).transpose(0, 2, 1))
        heads, hd, d = attention.output_dense.kernel.shape  # [heads, hd, D] from [D, heads * hd]
        attention.output_dense.kernel.assign(
            w[p + "self_attn.o_proj.weight"].reshape(d, heads, hd).transpose(1, 2, 0))
        if config.use_qk_norm:
            attention.query_norm.scale.assign(w[p + "self_attn.q_norm.weight"])
            attention.key_norm.scale.assign(w[p + "self_attn.k_norm.weight"])
        block.gating_ffw.kernel.assign(w[p + "mlp.gate_proj.weight"].T)
        block.gating_ffw_2.kernel.assign(w[p + "mlp.up_proj.weight"].T)
        block.ffw_linear.kernel.assign(w[p + "mlp.down_proj.weight"].T)
    return backbone


def keras_hub_logits(backbone, rows):
    """keras-hub's logits [B, T, V] of right-padded rows: keras-hub numbers positions from the first
    slot whatever the padding mask says, so real tokens sit at 0..n-1 as ours do after left padding."""
    width = max(map(len, rows))
    ids, mask = np.full([len(rows), width], PAD, np.int32), np.zeros([len(rows), width], np.int32)
    for row, tokens in enumerate(rows):
        ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, 1
    hidden = backbone({"token_ids": ids, "padding_mask": mask})
    return backbone.token_embedding(hidden, reverse=True).numpy()


def full_logits(lm, rows):
    """tfgen's logits [B, T, V] of the left-padded rows (eager full forward pass)."""
    ids, mask = left_pad(rows, PAD)
    hidden, _ = full_forward(lm, ids, mask)
    return lm.logits(hidden).numpy()


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="session", params=list(FAMILIES))
def family(request):
    """(config, Hugging Face weights, tfgen adapter, keras-hub backbone) of one tiny random family."""
    config = gemma_config(request.param)
    weights = random_weights(config)
    return config, weights, adapter(config, weights), keras_hub_backbone(config, weights)


# -- against keras-hub ------------------------------------------------------------------------------
def test_forward_matches_keras_hub(family):
    """A left-padded batch: every real position's logits within 1e-3 (seen: 2e-6 to 3e-6 on logits
    up to 4)."""
    config, _, lm, backbone = family
    ours, theirs = full_logits(lm, PROMPTS), keras_hub_logits(backbone, PROMPTS)
    width = ours.shape[1]
    for row, tokens in enumerate(PROMPTS):
        np.testing.assert_allclose(ours[row, width - len(tokens):], theirs[row, :len(tokens)],
                                   atol=1e-3, rtol=0)


def test_each_gemma_part_changes_the_logits(family):
    """The comparison above can fail: dropping any one part moves the logits by far more than 1e-3."""
    import dataclasses

    config, weights, lm, _ = family
    reference = full_logits(lm, PROMPTS[:1])
    changes = [dict(query_pre_attn_scalar=config.head_dim)]
    if config.sliding_window:
        changes.append(dict(sliding_window=64))
    if config.model_type == "gemma3":
        changes += [dict(rope_scaling=None), dict(rope_local_base_freq=config.rope_theta)]
    if config.attn_logit_softcapping:
        changes += [dict(attn_logit_softcapping=None), dict(final_logit_softcapping=None)]
    for change in changes:
        changed = full_logits(adapter(dataclasses.replace(config, **change), weights), PROMPTS[:1])
        assert np.abs(changed - reference).max() > 0.05, change


def test_cached_prefill_and_decode_steps_match_keras_hub(family):
    """The decoding loop's prefill and one-token steps (`tfgen.decoding.steps`, eagerly) on a
    left-padded batch, teacher-forced past the window: each step's logits equal keras-hub's at that
    position. The compiled loop (XLA's in-place cache writes) is checked by the greedy test."""
    import tensorflow as tf

    from tfgen.decoding import steps

    _, _, lm, backbone = family
    fed = np.random.default_rng(3).integers(4, VOCAB, [len(PROMPTS), 5]).astype(np.int32)
    ids, mask = left_pad(PROMPTS, PAD)
    width = ids.shape[1]
    logits, cache, key_mask, positions = steps.prefill(lm, tf.constant(ids), tf.constant(mask),
                                                       width + fed.shape[1])
    ours = [logits.numpy()]
    for step in range(fed.shape[1]):
        logits, cache, key_mask = steps.feed(lm, tf.constant(fed[:, step]), tf.constant(width + step),
                                             positions + step, key_mask, cache)
        ours.append(logits.numpy())
    ours = np.stack(ours, axis=1)  # [B, 1 + steps, V]
    rows = [list(p) + list(f) for p, f in zip(PROMPTS, fed)]
    theirs = keras_hub_logits(backbone, rows)
    for row, prompt in enumerate(PROMPTS):
        expected = theirs[row, len(prompt) - 1:len(prompt) + fed.shape[1]]
        np.testing.assert_allclose(ours[row], expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["gemma3", "gemma2"])
def test_greedy_matches_keras_hub_generate(name):
    """The engine's compiled greedy loop (prefill and decode steps over the in-place cache) against
    keras-hub's greedy `generate_step` on right-padded prompts (each row fills its own padding, as
    ours gets per-row max_new_tokens): the same tokens, and each token's log-probability equal to
    keras-hub's full forward pass over the finished sequence, within 1e-4."""
    import keras_hub
    import tensorflow as tf

    config = gemma_config(name)
    weights = random_weights(config, seed=1)
    backbone = keras_hub_backbone(config, weights)
    total = 16
    ids = np.full([len(PROMPTS), total], PAD, np.int32)
    mask = np.zeros([len(PROMPTS), total], bool)
    for row, tokens in enumerate(PROMPTS):
        ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, True
    causal = (keras_hub.models.Gemma3CausalLM if name == "gemma3" else keras_hub.models.GemmaCausalLM)(
        backbone=backbone, preprocessor=None)
    theirs = causal.generate_step({"token_ids": tf.constant(ids), "padding_mask": tf.constant(mask)},
                                  stop_token_ids=None)["token_ids"].numpy()
    engine = Engine(adapter(config, weights))
    generation = GenerationConfig(max_new_tokens=[total - len(p) for p in PROMPTS])
    generation.validate(batch_size=len(PROMPTS), vocab_size=VOCAB)
    left, left_mask = left_pad(PROMPTS, PAD)
    result = engine.generate(left, left_mask, generation)
    reference = log_softmax(keras_hub_logits(backbone, [list(row) for row in theirs]))
    for row, prompt in enumerate(PROMPTS):
        count = int(result["num_generated"][row])
        expected = theirs[row, len(prompt):]
        assert count == len(expected) or expected[count - 1] == EOS  # we stop at EOS, keras-hub goes on
        assert list(result["new_tokens"][row, :count]) == list(expected[:count]), row
        positions = np.arange(len(prompt) - 1, len(prompt) - 1 + count)
        np.testing.assert_allclose(result["log_probs"][row, :count],
                                   reference[row, positions, expected[:count]], atol=1e-4, rtol=0)
    generated = {token for row, prompt in enumerate(PROMPTS) for token in theirs[row, len(prompt):]}
    assert len(generated) > 4  # not one token repeated: a meaningful check


# -- GGUF files, against llama.cpp ------------------------------------------------------------------
def sentencepiece_vocab():
    """A small SentencePiece-style vocabulary as llama.cpp wants one: controls, <unk>, the 256 byte
    tokens (llama.cpp looks up <0x0A>), then normal pieces with descending scores."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces = ["▁", "e", "t", "a", "o", "n", "▁t", "▁a", "th", "▁the", "in", "er", "an", "re", "on"]
    tokens += pieces + [f"▁w{i}" for i in range(VOCAB - len(tokens) - len(pieces))]
    types = [3, 3, 3, 2] + [6] * 256 + [1] * (VOCAB - 260)
    scores = [0.0] * 260 + [-float(i) for i in range(VOCAB - 260)]
    return tokens, scores, types


def gguf_config(family):
    """A tiny config with llama.cpp's own constants: queries scaled by head_dim (all but the 27B
    models), Gemma 3's local RoPE base 1e4 and every 6th layer global."""
    return gemma_config(family, query_pre_attn_scalar=COMMON["head_dim"])


def quiet_feed_forward(config, weights):
    """llama.cpp's CPU GELU reads a float16 table (about 5e-4 relative error per activation): scale
    the feed-forward output down (~0.2) so that this noise stays below the 1e-3 tolerance; every
    weight still moves the logits by far more than that."""
    for i in range(config.num_hidden_layers):
        if config.use_post_norms:  # a gain 1 + w of 0.2 +- 0.1
            name = f"model.layers.{i}.post_feedforward_layernorm.weight"
            weights[name] = weights[name] * 0.3 - 0.8
        else:
            name = f"model.layers.{i}.mlp.down_proj.weight"
            weights[name] = weights[name] * 0.15
    return weights


def write_gemma_gguf(path, config, weights, architecture=None):
    """`weights` (Hugging Face names and conventions) as llama.cpp's convert_hf_to_gguf.py writes them."""
    import gguf

    arch = architecture or config.model_type
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
    if config.rope_scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_scaling["factor"])
    if config.attn_logit_softcapping:
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    if config.final_logit_softcapping:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    tokens, scores, types = sentencepiece_vocab()
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_pad_token_id(PAD)
    writer.add_unk_token_id(3)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    for name, value in weights.items():
        target = names.get_name(name, try_suffixes=(".weight",))
        assert target is not None, name
        # convert_hf_to_gguf.py (GemmaModel, Gemma2Model, Gemma3Model): norm weights + 1
        writer.add_tensor(target, value + np.float32(1.0) if name.endswith("norm.weight") else value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_cpp_logits(path, rows, float32_cache=True):
    """llama.cpp's logits [T, V] of each row; keys and values cached in float32 (type 0) rather than
    its default float16 unless `float32_cache` is False (the real model: as users run it)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    cache = dict(type_k=0, type_v=0) if float32_cache else {}
    model = llama_cpp.Llama(str(path), logits_all=True, n_ctx=128, verbose=False, **cache)
    out = []
    for tokens in rows:
        model.reset()
        model.eval(list(tokens))
        out.append(np.array(model.scores[:len(tokens)], np.float64))
    return out


@pytest.fixture(scope="session", params=list(FAMILIES))
def gemma_gguf(request, tmp_path_factory):
    config = gguf_config(request.param)
    weights = quiet_feed_forward(config, random_weights(config, seed=2))
    path = tmp_path_factory.mktemp("gguf") / f"tiny-{request.param}.gguf"
    write_gemma_gguf(path, config, weights)
    return path, config, weights


def test_gguf_config_and_weights_follow_hugging_face(gemma_gguf, tmp_path, monkeypatch):
    """read_gguf gives a GemmaConfig with llama.cpp's constants and the weights under Hugging Face's
    names with the converter's + 1 taken off the norms; the cache gives back the same."""
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))
    path, config, weights = gemma_gguf
    converted = tfgen_gguf.read_gguf(str(path))
    assert isinstance(converted.config, GemmaConfig)
    ours = converted.config
    assert ours.model_type == config.model_type and ours.layer_types == config.layer_types
    assert (ours.sliding_window, ours.rope_theta, ours.query_pre_attn_scalar) == (
        config.sliding_window, config.rope_theta, config.head_dim)
    assert (ours.use_qk_norm, ours.use_post_norms, ours.rope_scaling) == (
        config.use_qk_norm, config.use_post_norms, config.rope_scaling)
    assert (ours.attn_logit_softcapping, ours.final_logit_softcapping) == (
        config.attn_logit_softcapping, config.final_logit_softcapping)
    assert ours.rope_local_base_freq == (1e4 if config.model_type == "gemma3" else config.rope_theta)
    assert set(converted.weights) == set(weights)
    for name, value in weights.items():
        np.testing.assert_allclose(converted.weights[name], value, atol=1e-6, rtol=0, err_msg=name)

    def no_conversion(_):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(tfgen_gguf, "_convert", no_conversion)
    again = tfgen_gguf.read_gguf(str(path))
    assert again.config == converted.config


def test_gguf_logits_match_llama_cpp(gemma_gguf, tmp_path, monkeypatch):
    """tfgen on the file (read_gguf -> GemmaWeights -> Gemma) against llama.cpp on the same file:
    a left-padded batch of BOS-started prompts, within 1e-3 (seen: 2e-4 to 3e-4 on logits up to 5)."""
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))
    path = gemma_gguf[0]
    converted = tfgen_gguf.read_gguf(str(path))
    lm = Gemma(GemmaWeights(converted.config, converted.weights))
    rows = [[BOS] + list(p) for p in PROMPTS]
    ours = full_logits(lm, rows)
    width = ours.shape[1]
    for index, (row, theirs) in enumerate(zip(rows, llama_cpp_logits(path, rows))):
        np.testing.assert_allclose(ours[index, width - len(row):], theirs, atol=1e-3, rtol=0)


def test_load_builds_the_gemma_adapter(gemma_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))
    path, config, _ = gemma_gguf
    generator = tfgen.load(f"gguf:{path}")
    assert isinstance(generator.model, GemmaWeights) and isinstance(generator.lm, Gemma)
    assert generator.model.config.model_type == config.model_type
    assert generator.lm.vocab_size == VOCAB and generator.lm.eos_token_id == EOS


def test_unsupported_architecture_lists_the_supported_ones(tmp_path, monkeypatch):
    from gguf_files import write_architecture_only

    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "qwen2.gguf"
    write_architecture_only(path, "qwen2")
    with pytest.raises(ValueError) as error:
        tfgen.load(f"gguf:{path}")
    message = str(error.value)
    assert str(path) in message and "'qwen2'" in message
    assert all(name in message for name in ("llama", "gemma", "gemma2", "gemma3")), message


# -- bad configs and weights ------------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    (dict(model_type="gemma4"), "model_type"),
    (dict(layer_types=["full_attention"] * 5), "layer_types"),
    (dict(layer_types=["local"] * 6), "layer_types"),
    (dict(sliding_window=None), "sliding_window"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
])
def test_bad_config_is_a_clear_error(change, words):
    with pytest.raises(ValueError, match=words):
        gemma_config("gemma3", **change)


def test_unknown_activation_is_a_clear_error():
    config = gemma_config("gemma", hidden_activation="relu")
    with pytest.raises(ValueError, match="hidden_activation 'relu'"):
        adapter(config, random_weights(config))


def test_missing_weight_is_named():
    config = gemma_config("gemma")
    weights = random_weights(config)
    del weights["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        GemmaWeights(config, weights)


# -- the real Gemma 3 270M ---------------------------------------------------------------------------
TEXTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
]


@pytest.fixture(scope="session")
def gemma3_270m():
    """(path, generator) of the packaged Gemma 3 270M (Q4_K_M); its converted weights are cached."""
    from tfgen.loading import packaged_gguf_path

    try:
        path = packaged_gguf_path("gemma3-270m")
    except ValueError as error:
        pytest.skip(f"the Gemma 3 270M GGUF cannot be had here: {error}")
    return path, tfgen.load(f"gguf:{path}")


@pytest.mark.download
def test_gemma3_270m_config_is_the_published_one(gemma3_270m):
    """google/gemma-3-270m's config.json, which the GGUF metadata only partly states."""
    config = gemma3_270m[1].model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (18, 640, 2048)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 1, 256)
    assert (config.sliding_window, config.rope_theta, config.rope_local_base_freq) == (512, 1e6, 1e4)
    assert config.query_pre_attn_scalar == 256 and config.vocab_size == 262144
    assert [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"] == [5, 11, 17]
    assert config.final_logit_softcapping is None and config.attn_logit_softcapping is None


@pytest.mark.download
def test_gemma3_270m_close_to_llama_cpp(gemma3_270m):
    """llama.cpp runs the quantized weights with 8-bit activations, tfgen their float32
    dequantization: the same predictions wherever llama.cpp's choice is clear, and per-token
    log-probabilities within quantization noise (seen: mean 0.07, max 0.45 nats; against llama.cpp
    on a float32 copy of the same weights: max 0.005, so the noise is llama.cpp's arithmetic)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path, generator = gemma3_270m
    vocab = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    rows = [vocab.tokenize(text.encode(), add_bos=True, special=True) for text in TEXTS]
    assert all(row[0] == BOS for row in rows)
    ours = full_logits(generator.lm, rows)
    width = ours.shape[1]
    differences, agreed, clear = [], 0, 0
    for index, (row, theirs) in enumerate(zip(rows, llama_cpp_logits(path, rows, float32_cache=False))):
        mine = log_softmax(ours[index, width - len(row):])
        reference = log_softmax(theirs)
        top2 = np.sort(reference, axis=-1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] > 0.5  # llama.cpp's top token leads by more than the noise
        assert (mine.argmax(-1) == reference.argmax(-1))[decided].all(), TEXTS[index]
        agreed += int((mine.argmax(-1) == reference.argmax(-1)).sum())
        clear += len(row)
        following = np.array(row[1:])
        positions = np.arange(len(row) - 1)
        differences += list(np.abs(mine[positions, following] - reference[positions, following]))
    assert agreed / clear >= 0.85  # seen: 0.96 (the rest are near-ties)
    assert np.mean(differences) < 0.15 and np.max(differences) < 0.75

