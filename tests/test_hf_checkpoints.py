"""Hugging Face `save_pretrained` directories read with safetensors into tfgen's adapters.

Each test writes a tiny random checkpoint (numpy + `safetensors.numpy.save_file`, Hugging Face's
tensor names and config fields, every weight random: norm scales and biases too) and compares
tfgen's logits on a left-padded batch of two prompts, and its greedy tokens, with KerasHub's own
converter loading the same directory (`<Backbone>.from_preset(dir)`): each row against KerasHub's
backbone on that row alone, within 1e-3 on logits, token for token on greedy (an argmax loop over
the backbone's logits). Where KerasHub's converter does not read a config (linear and dynamic RoPE
scaling, bf16 tensors) it reads a copy of the directory that it can, with what the difference
means stated: the linear factor passed to KerasHub's backbone, the bf16 values written as float32.
"""
import json
import os
import shutil
import types

import numpy as np
import pytest

import tfgen
from tfgen.decoding.params import left_pad
from tfgen.models import hf_checkpoint
from tfgen.models.base import full_forward

VOCAB = 320
PROMPTS = [[5, 17, 42, 99, 7, 250, 31, 64, 12], [88, 3, 141, 77, 9]]  # 9 and 5 tokens
NEW_TOKENS = 8
EOS, BOS, PAD = 2, 1, 0
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             rms_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS)
CONFIGS = {
    "llama": dict(SMALL, model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                  rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False),
    "qwen2": dict(SMALL, model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu",
                  rope_theta=10000.0, tie_word_embeddings=False, use_sliding_window=False,
                  sliding_window=None, max_window_layers=2),
    "qwen3": dict(SMALL, model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_act="silu",
                  rope_theta=10000.0, tie_word_embeddings=True, head_dim=16,  # not hidden / heads
                  attention_bias=False, use_sliding_window=False, sliding_window=None, max_window_layers=2),
    "mistral": dict(SMALL, model_type="mistral", architectures=["MistralForCausalLM"], hidden_act="silu",
                    rope_theta=10000.0, tie_word_embeddings=False, sliding_window=4, head_dim=8),
    "gemma3_text": dict(SMALL, model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
                        num_hidden_layers=6, head_dim=8, query_pre_attn_scalar=8,
                        hidden_activation="gelu_pytorch_tanh",
                        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, sliding_window=4,
                        layer_types=["sliding_attention"] * 5 + ["full_attention"],
                        rope_scaling={"rope_type": "linear", "factor": 2.0}, tie_word_embeddings=True,
                        pad_token_id=PAD, rms_norm_eps=1e-6),
    "gpt2": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=VOCAB, n_positions=128,
                 n_embd=32, n_layer=2, n_head=4, n_inner=None, activation_function="gelu_new",
                 layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                 bos_token_id=BOS, eos_token_id=EOS),
}
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}


# -- writing checkpoints ------------------------------------------------------------------------------
def hf_weights(config: dict, seed: int) -> dict:
    """Random float32 weights under Hugging Face's names for `config` (the shapes tfgen's own table
    gives are not used: they are written out here from the architectures' definitions)."""
    rng = np.random.default_rng(seed)
    kind = config["model_type"]

    def matrix(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vector(size, centre=1.0):  # norm scales around `centre`, biases around 0
        return (centre + 0.2 * rng.standard_normal(size)).astype(np.float32)

    if kind == "gpt2":
        d, p = config["n_embd"], "transformer."  # GPT2LMHeadModel's state dict names
        weights = {p + "wte.weight": 0.5 * matrix(VOCAB, d) * np.sqrt(d), p + "wpe.weight": matrix(128, d),
                   p + "ln_f.weight": vector(d), p + "ln_f.bias": vector(d, 0.0)}
        for i in range(config["n_layer"]):
            b = f"{p}h.{i}."
            weights.update({
                b + "ln_1.weight": vector(d), b + "ln_1.bias": vector(d, 0.0),
                b + "ln_2.weight": vector(d), b + "ln_2.bias": vector(d, 0.0),
                b + "attn.c_attn.weight": matrix(d, 3 * d), b + "attn.c_attn.bias": vector(3 * d, 0.0),
                b + "attn.c_proj.weight": matrix(d, d), b + "attn.c_proj.bias": vector(d, 0.0),
                b + "mlp.c_fc.weight": matrix(d, 4 * d), b + "mlp.c_fc.bias": vector(4 * d, 0.0),
                b + "mlp.c_proj.weight": matrix(4 * d, d), b + "mlp.c_proj.bias": vector(d, 0.0)})
        return weights
    d, f = config["hidden_size"], config["intermediate_size"]
    hd = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    gemma = kind == "gemma3_text"
    norm_centre = 0.0 if gemma else 1.0  # Gemma stores w of x * (1 + w)
    embed_scale = 0.5 if gemma else 0.5 * np.sqrt(d)  # Gemma multiplies its embeddings by sqrt(d)
    weights = {"model.embed_tokens.weight": embed_scale * matrix(VOCAB, d),
               "model.norm.weight": vector(d, norm_centre)}
    if not config["tie_word_embeddings"]:
        weights["lm_head.weight"] = matrix(VOCAB, d)
    for i in range(config["num_hidden_layers"]):
        b = f"model.layers.{i}."
        weights.update({
            b + "self_attn.q_proj.weight": matrix(q, d), b + "self_attn.k_proj.weight": matrix(kv, d),
            b + "self_attn.v_proj.weight": matrix(kv, d), b + "self_attn.o_proj.weight": matrix(d, q),
            b + "mlp.gate_proj.weight": matrix(f, d), b + "mlp.up_proj.weight": matrix(f, d),
            b + "mlp.down_proj.weight": matrix(d, f),
            b + "input_layernorm.weight": vector(d, norm_centre),
            b + "post_attention_layernorm.weight": vector(d, norm_centre)})
        if kind == "qwen2":
            weights.update({b + "self_attn.q_proj.bias": vector(q, 0.0),
                            b + "self_attn.k_proj.bias": vector(kv, 0.0),
                            b + "self_attn.v_proj.bias": vector(kv, 0.0)})
        if kind in ("qwen3", "gemma3_text"):
            weights.update({b + "self_attn.q_norm.weight": vector(hd, norm_centre),
                            b + "self_attn.k_norm.weight": vector(hd, norm_centre)})
        if gemma:
            weights.update({b + "pre_feedforward_layernorm.weight": vector(d, norm_centre),
                            b + "post_feedforward_layernorm.weight": vector(d, norm_centre)})
    return weights


def save(directory, config: dict, weights: dict, dtype: str = "F32", shards: int = 1,
         generation: dict = None) -> str:
    """Write a save_pretrained directory: config.json, the weights as `dtype` safetensors (one file,
    or `shards` files and their index), generation_config.json when given, and a tokenizer.json."""
    import ml_dtypes
    from safetensors.numpy import save_file

    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(config, handle)
    if generation is not None:
        with open(os.path.join(directory, "generation_config.json"), "w") as handle:
            json.dump(generation, handle)
    cast = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}[dtype]
    tensors = {name: np.ascontiguousarray(value.astype(cast)) for name, value in weights.items()}
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for index in range(shards):
            shard = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
            part = names[index::shards]
            save_file({name: tensors[name] for name in part}, os.path.join(directory, shard),
                      metadata={"format": "pt"})
            weight_map.update({name: shard for name in part})
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as handle:
            json.dump({"metadata": {}, "weight_map": weight_map}, handle)
    write_tokenizer(directory)
    return directory


def write_tokenizer(directory) -> None:
    """A word-level tokenizer.json over VOCAB tokens ("t0" ... ), special tokens first."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB)}
    vocab.update({"<pad>": PAD, "<s>": BOS, "</s>": EOS})
    del vocab["t0"], vocab["t1"], vocab["t2"]
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t3"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(os.path.join(directory, "tokenizer.json"))


def exact_in(dtype, weights: dict) -> dict:
    """The weights rounded to `dtype` (float16 for KerasHub's Mistral converter, which casts to it;
    bfloat16 for the bf16 checkpoint's float32 twin), as float32."""
    return {name: value.astype(dtype).astype(np.float32) for name, value in weights.items()}


# -- references ---------------------------------------------------------------------------------------
BACKBONES = {"llama": "Llama3Backbone", "qwen2": "QwenBackbone", "qwen3": "Qwen3Backbone",
             "mistral": "MistralBackbone", "gemma3_text": "Gemma3Backbone", "gpt2": "GPT2Backbone"}


def keras_hub_from_dir(directory, kind, **kwargs):
    import keras_hub

    return getattr(keras_hub.models, BACKBONES[kind]).from_preset(str(directory), dtype="float32", **kwargs)


def keras_logits(backbone, ids) -> np.ndarray:
    """KerasHub's logits [T, V] of one unpadded row."""
    tokens = np.asarray([ids], np.int32)
    hidden = backbone({"token_ids": tokens, "padding_mask": np.ones_like(tokens)})
    logits = backbone.token_embedding(hidden, reverse=True)
    cap = getattr(backbone, "final_logit_soft_cap", None)
    if cap:
        logits = np.tanh(np.asarray(logits) / cap) * cap
    return np.asarray(logits)[0]


def keras_greedy(backbone, ids, steps=NEW_TOKENS):
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(np.argmax(keras_logits(backbone, ids)[-1])))
    return ids[-steps:]


def tfgen_row_logits(generator):
    """tfgen's logits of PROMPTS as one left-padded batch, each row's real positions: [T_row, V]."""
    ids, mask = left_pad(PROMPTS, generator.lm.pad_token_id)
    hidden, _ = full_forward(generator.lm, ids, mask)
    logits = generator.lm.logits(hidden).numpy()
    return [logits[row, ids.shape[1] - len(prompt):] for row, prompt in enumerate(PROMPTS)]


def check_against(generator, backbone):
    """Logits within 1e-3 and greedy token for token, every row of the left-padded batch."""
    for row, (ours, prompt) in enumerate(zip(tfgen_row_logits(generator), PROMPTS)):
        np.testing.assert_allclose(ours, keras_logits(backbone, prompt), atol=1e-3, rtol=0,
                                   err_msg=f"row {row}")
    ids, mask = left_pad(PROMPTS, generator.lm.pad_token_id)
    result = generator.generate_ids(ids, mask, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    for row, prompt in enumerate(PROMPTS):
        assert result.sequences[row, ids.shape[1]:].tolist() == keras_greedy(backbone, prompt), f"row {row}"


def load(directory):
    # The conversion is under test: tf.function graphs (xla=False), a third of an XLA build.
    return tfgen.load(str(directory), xla=False)


# -- architectures ----------------------------------------------------------------------------------
def test_llama3_scaled_rope_sharded(tmp_path):
    config = dict(CONFIGS["llama"], rope_scaling=LLAMA3_SCALING)
    directory = save(tmp_path / "llama3", config, hf_weights(config, 0), shards=3)
    assert len([n for n in os.listdir(directory) if n.endswith(".safetensors")]) == 3
    generator = load(directory)
    assert generator.lm.config.rope_scaling["rope_type"] == "llama3"
    check_against(generator, keras_hub_from_dir(directory, "llama"))


@pytest.mark.parametrize("kind", ["linear", "dynamic"])
def test_llama_linear_and_dynamic_rope(tmp_path, kind):
    """KerasHub's converter reads llama3 scaling only, so its backbone reads the same weights without
    rope_scaling. Linear: the factor goes to KerasHub's rope_position_scaling_factor, applied by
    KerasHub's own linear RoPE (`RotaryEmbedding._get_inverse_freq`: inverse frequencies / factor,
    transformers' linear scaling); keras-hub 0.32's Llama RoPE overrides that method and drops the
    factor, so each layer's RoPE is given the base class's method back. Dynamic: none
    (transformers' dynamic NTK is the default RoPE up to max_position_embeddings, past which tfgen
    does not run)."""
    from keras_hub.layers import RotaryEmbedding

    config = dict(CONFIGS["llama"], tie_word_embeddings=True, rope_scaling={"rope_type": kind, "factor": 4.0})
    weights = hf_weights(config, 1)
    directory = save(tmp_path / kind, config, weights)
    plain = save(tmp_path / "plain", {k: v for k, v in config.items() if k != "rope_scaling"}, weights)
    factor = 4.0 if kind == "linear" else 1.0
    reference = keras_hub_from_dir(plain, "llama", rope_position_scaling_factor=factor)
    for layer in reference.transformer_layers:  # the factor reaches the base class's linear RoPE
        rotary = layer._self_attention_layer.rotary_embedding_layer
        assert rotary.scaling_factor == factor and rotary.rope_type == "linear"
        rotary._get_inverse_freq = types.MethodType(RotaryEmbedding._get_inverse_freq, rotary)
    check_against(load(directory), reference)


def test_qwen2_biases_from_bf16(tmp_path):
    """bf16 tensors (read by their bits: numpy has no bfloat16) against KerasHub on the same values
    as float32 (its numpy safetensors reader cannot read bf16)."""
    import ml_dtypes

    config = CONFIGS["qwen2"]
    weights = exact_in(ml_dtypes.bfloat16, hf_weights(config, 2))
    directory = save(tmp_path / "bf16", config, weights, dtype="BF16")
    with open(os.path.join(directory, "model.safetensors"), "rb") as handle:
        assert b'"BF16"' in handle.read(4096)
    reference = save(tmp_path / "f32", config, weights)
    generator = load(directory)
    assert generator.model.blocks[0].qkv_bias is not None
    check_against(generator, keras_hub_from_dir(reference, "qwen2"))


def test_qwen3_qk_norms_from_f16(tmp_path):
    config = CONFIGS["qwen3"]
    directory = save(tmp_path / "qwen3", config, exact_in(np.float16, hf_weights(config, 3)), dtype="F16")
    generator = load(directory)
    assert generator.lm.head_dim == 16 and generator.model.blocks[0].q_norm is not None
    check_against(generator, keras_hub_from_dir(directory, "qwen3"))


def test_mistral_sliding_window_shorter_than_the_text(tmp_path):
    """A window of 4 against 9-token prompts and 8 new tokens: every query past the 4th drops keys.
    The weights are float16 values (KerasHub's Mistral converter casts every tensor to float16)."""
    config = CONFIGS["mistral"]
    directory = save(tmp_path / "mistral", config, exact_in(np.float16, hf_weights(config, 4)))
    generator = load(directory)
    assert set(generator.lm.layer_types) == {"sliding_attention"}
    backbone = keras_hub_from_dir(directory, "mistral")
    check_against(generator, backbone)
    unwindowed = keras_hub_from_dir(directory, "mistral", sliding_window=None)
    assert np.abs(keras_logits(unwindowed, PROMPTS[0]) - keras_logits(backbone, PROMPTS[0])).max() > 1e-2


def test_gemma3_text(tmp_path):
    """Hugging Face's bare norm weights w (tfgen stores 1 + w), five sliding layers (window 4) and a
    global one with linear RoPE scaling."""
    config = CONFIGS["gemma3_text"]
    directory = save(tmp_path / "gemma3", config, hf_weights(config, 5))
    generator = load(directory)
    assert generator.lm.layer_types == config["layer_types"]
    check_against(generator, keras_hub_from_dir(directory, "gemma3_text"))


def test_gpt2_without_transformers_model(tmp_path):
    config = CONFIGS["gpt2"]
    directory = save(tmp_path / "gpt2", config, hf_weights(config, 6))
    generator = load(directory)
    assert type(generator.model).__name__ == "GPT2Weights"
    check_against(generator, keras_hub_from_dir(directory, "gpt2"))


def test_tf_gpt2_save_pretrained_reads_without_transformers(tiny, tmp_path):
    """A TFGPT2LMHeadModel's own safetensors (`save_pretrained(safe_serialization=True)`) read into
    `GPT2Weights`: the same logits as the transformers model."""
    tiny.model.save_pretrained(str(tmp_path), safe_serialization=True)
    loaded = load(tmp_path)
    assert type(loaded.model).__name__ == "GPT2Weights"
    ids = np.array([[464, 4583, 286, 44449, 318]], np.int32)
    hidden, _ = full_forward(loaded.lm, ids, np.ones_like(ids))
    np.testing.assert_allclose(loaded.lm.logits(hidden).numpy(), tiny.model(ids).logits.numpy(), atol=1e-4)


# -- generation_config.json ---------------------------------------------------------------------------
def test_eos_list_pad_and_defaults_from_generation_config(tmp_path):
    config = dict(CONFIGS["llama"])
    del config["eos_token_id"]  # generation_config.json's list wins anyway
    weights = hf_weights(config, 7)
    plain = load(save(tmp_path / "plain", dict(config, eos_token_id=EOS), weights))
    ids, mask = left_pad(PROMPTS, plain.lm.pad_token_id)
    greedy = plain.generate_ids(ids, mask, max_new_tokens=NEW_TOKENS, ignore_eos=True).sequences
    greedy = greedy[:, ids.shape[1]:]
    second = int(greedy[0, 3])  # row 0's 4th token ends it; EOS itself never comes first
    assert second not in greedy[0, :3].tolist() + [EOS]
    generation = {"bos_token_id": BOS, "eos_token_id": [EOS, second], "do_sample": False, "max_new_tokens": 6,
                  "repetition_penalty": 1.0, "top_k": 7, "transformers_version": "4.57.0"}
    generator = load(save(tmp_path / "listed", config, weights, generation=generation))
    assert generator.lm.eos_token_id == EOS and generator.lm.eos_token_ids == (EOS, second)
    assert generator.lm.pad_token_id == EOS  # no pad id anywhere: the first EOS, as transformers does
    assert generator.defaults == {"do_sample": False, "max_new_tokens": 6, "repetition_penalty": 1.0,
                                  "top_k": 7}
    result = generator.generate_ids(ids, mask)  # the file's max_new_tokens, and the second EOS ends row 0
    assert result.num_generated.tolist()[0] == 4 and result.sequences[0, ids.shape[1] + 3] == second
    assert result.num_generated.tolist()[1] <= 6
    assert generator.generate_ids(ids, mask, max_new_tokens=2).num_generated.max() <= 2  # the caller wins


def test_defaults_merge_as_transformers_does():
    from tfgen.config import GenerationConfig

    defaults = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 64}
    config = GenerationConfig.from_any(None, defaults=defaults, temperature=1.2)
    assert (config.do_sample, config.temperature, config.top_p, config.max_new_tokens) == (True, 1.2, 0.9, 64)
    # A given config keeps what it sets; fields it leaves at the defaults take the model's.
    given = GenerationConfig.from_any(GenerationConfig(top_p=0.5), defaults=defaults)
    assert (given.top_p, given.temperature, given.do_sample) == (0.5, 0.6, True)


# -- bad input ----------------------------------------------------------------------------------------
@pytest.fixture
def llama_dir(tmp_path):
    config = CONFIGS["llama"]
    return save(tmp_path / "llama", config, hf_weights(config, 8), shards=2)


def rewrite_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as handle:
        config = json.load(handle)
    config.update(changes)
    with open(path, "w") as handle:
        json.dump(config, handle)


def test_missing_shard_is_named(llama_dir):
    os.remove(os.path.join(llama_dir, "model-00002-of-00002.safetensors"))
    with pytest.raises(ValueError, match="shard model-00002-of-00002.safetensors .* is missing"):
        hf_checkpoint.read_checkpoint(llama_dir)


def test_shape_mismatch_names_the_tensor_and_both_shapes(llama_dir):
    rewrite_config(llama_dir, intermediate_size=64)
    shapes = r"shape \[(48, 32|32, 48)\].*\[(64, 32|32, 64)\]"  # the file's, then the config's
    with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight .*" + shapes):
        tfgen.load(llama_dir)


def test_missing_tensors_are_named(llama_dir):
    rewrite_config(llama_dir, num_hidden_layers=3)
    with pytest.raises(ValueError, match="does not match its config.json.*model.layers.2"):
        tfgen.load(llama_dir)


def test_unsupported_model_type_lists_the_supported(llama_dir):
    rewrite_config(llama_dir, model_type="bert")
    with pytest.raises(ValueError, match="'bert'") as error:
        tfgen.load(llama_dir)
    for name in ("llama", "qwen2", "qwen3", "mistral", "gemma3_text", "gpt2"):
        assert name in str(error.value)


def test_unsupported_rope_scaling(llama_dir):
    rewrite_config(llama_dir, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="'yarn'.*llama3"):
        tfgen.load(llama_dir)


def test_no_weights_file(llama_dir):
    for name in os.listdir(llama_dir):
        if "safetensors" in name:
            os.remove(os.path.join(llama_dir, name))
    with pytest.raises(ValueError, match="no weights: expected model.safetensors"):
        tfgen.load(llama_dir)


def test_truncated_and_non_float_tensors(tmp_path):
    from safetensors.numpy import save_file

    config = CONFIGS["llama"]
    weights = hf_weights(config, 9)
    directory = save(tmp_path / "int", config, weights)
    weights["model.norm.weight"] = np.ones(32, np.int8)
    save_file(weights, os.path.join(directory, "model.safetensors"))
    with pytest.raises(ValueError, match="model.norm.weight .* is I8"):
        tfgen.load(directory)
    path = os.path.join(directory, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot load weights from .*truncated"):
        tfgen.load(directory)


def test_index_naming_a_tensor_its_shard_lacks(llama_dir):
    index = os.path.join(llama_dir, "model.safetensors.index.json")
    with open(index) as handle:
        data = json.load(handle)
    data["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors"
    with open(index, "w") as handle:
        json.dump(data, handle)
    with pytest.raises(ValueError, match="model.extra.weight in model-00001-of-00002.safetensors"):
        hf_checkpoint.read_checkpoint(llama_dir)


def test_dir_without_tokenizer(llama_dir):
    os.remove(os.path.join(llama_dir, "tokenizer.json"))
    shutil.rmtree(os.path.join(llama_dir, "unused"), ignore_errors=True)
    with pytest.raises(ValueError, match="tokenizer"):
        tfgen.load(llama_dir)
