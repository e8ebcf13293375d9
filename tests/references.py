"""Independent references the tests (and benchmarks/llama.py) compare tfgen against."""
import numpy as np


def keras_hub_backbone(config, weights):
    """keras-hub's `LlamaBackbone` holding the same float32 weights (Hugging Face names).

    The weight mapping is keras-hub's own conversion from transformers' Llama checkpoints
    (`keras_hub/src/utils/transformers/convert_llama3.py`). Used by the tests and benchmarks.
    """
    import keras_hub

    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=config.vocab_size, num_layers=config.num_hidden_layers,
        num_query_heads=config.num_attention_heads, hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size, num_key_value_heads=config.num_key_value_heads,
        rope_max_wavelength=config.rope_theta, layer_norm_epsilon=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings, dtype="float32")
    w = weights
    backbone.get_layer("token_embedding").embeddings.assign(w["model.embed_tokens.weight"])
    if not config.tie_word_embeddings:
        backbone.get_layer("token_embedding").reverse_embeddings.assign(w["lm_head.weight"].T)
    backbone.get_layer("sequence_output_layernorm").scale.assign(w["model.norm.weight"])
    for i in range(config.num_hidden_layers):
        layer, p = backbone.get_layer(f"transformer_layer_{i}"), f"model.layers.{i}."
        layer._self_attention_layernorm.scale.assign(w[p + "input_layernorm.weight"])
        layer._feedforward_layernorm.scale.assign(w[p + "post_attention_layernorm.weight"])
        attention = layer._self_attention_layer
        for dense_layer, name in ((attention._query_dense, "q_proj"), (attention._key_dense, "k_proj"),
                                  (attention._value_dense, "v_proj"), (attention._output_dense, "o_proj")):
            # transpose, then reshape to keras-hub's einsum kernel
            kernel = w[p + f"self_attn.{name}.weight"].T
            dense_layer.kernel.assign(np.reshape(kernel, dense_layer.kernel.shape))
        layer._feedforward_gate_dense.kernel.assign(w[p + "mlp.gate_proj.weight"].T)
        layer._feedforward_intermediate_dense.kernel.assign(w[p + "mlp.up_proj.weight"].T)
        layer._feedforward_output_dense.kernel.assign(w[p + "mlp.down_proj.weight"].T)
    return backbone
