"""SmolLM2-135M or Gemma 3 270M greedy decoding: tfgen against keras-hub (and llama.cpp), and the roofline.

Usage:
    python benchmarks/llama.py [--new-tokens 64] [--repeats 3] [--batches 1 8] [--json out.json]
    python benchmarks/llama.py --model gemma3-270m [--new-tokens 32] [--repeats 2] [--no-llama-cpp]

Both run the same float32 weights (the packaged GGUF, dequantized) with XLA. keras-hub gets the
prompt right-padded to prompt + new tokens and its greedy sampler (`compile(sampler="greedy")`,
no stop token), so both produce exactly `--new-tokens` tokens per row. Times are the best of
`--repeats` runs after one compiling run; ms per token is per decoding step (a step makes one
token for every row). The roofline is the float32 weight bytes over the bandwidth a compiled
matrix-vector product reaches here (`tfgen.bench.matvec_bandwidth`): a batch-1 step must read
every weight once.

`--model gemma3-270m` compares tfgen with keras-hub's `Gemma3CausalLM` (its jit-compiled greedy
`generate_step`, what `generate` runs, on a `Gemma3Backbone`
holding tfgen's float32 weights, copied as keras-hub's own Hugging Face converter copies them) and
with llama.cpp (`llama_cpp`, 2 threads, through its C API so that batch 8 is 8 sequences of one
`llama_decode` per step, greedy argmax on its logits) on two files: the packaged Q4_K_M GGUF, and
a float32 GGUF written here from tfgen's dequantized weights (the original file's metadata and
tokenizer, F32 tensors under llama.cpp's names, norms stored as 1 + w as llama.cpp's converter
writes them, float32 KV cache), whose logits are checked against tfgen's before any timing.
Every side gets the same BOS-started prompt ids and makes exactly `--new-tokens` tokens per row;
ms per token is the whole call (prefill included) over the number of decoding steps. Known gap:
llama.cpp's batch-8 step measured here is far slower than 8x its batch-1 step, so this C-API
batching (separate sequences, non-unified cache) is not yet a fair batch-8 llama.cpp figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

PROMPT = "The theory of relativity is"


def best_ms_per_step(run, steps: int, repeats: int) -> float:
    run()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1000 / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--no-llama-cpp", action="store_true", help="gemma3-270m: skip llama.cpp")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    args = parser.parse_args(argv)
    if args.model == "gemma3-270m":
        return gemma3(args)

    import tfgen
    from tfgen.bench import matvec_bandwidth
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from references import keras_hub_backbone

    from tfgen.models.gguf import read_gguf
    from tfgen.loading import packaged_gguf_path

    gen = tfgen.load("smollm2-135m")
    bandwidth = matvec_bandwidth()
    weight_bytes = gen.num_parameters * 4
    roofline_ms = weight_bytes / bandwidth * 1000
    print(f"SmolLM2-135M: {gen.num_parameters:,} parameters, {weight_bytes / 1e6:.0f} MB float32; "
          f"matvec bandwidth {bandwidth / 1e9:.1f} GB/s -> roofline {roofline_ms:.1f} ms/token at batch 1")

    import keras_hub

    converted = read_gguf(packaged_gguf_path("smollm2-135m"))
    causal_lm = keras_hub.models.LlamaCausalLM(
        backbone=keras_hub_backbone(converted.config, converted.weights), preprocessor=None)
    causal_lm.compile(sampler="greedy")
    del converted

    prompt = gen.tokenize(PROMPT)
    steps = args.new_tokens
    results = dict(bandwidth_gbs=bandwidth / 1e9, weight_mb=weight_bytes / 1e6, roofline_ms=roofline_ms,
                   new_tokens=steps, cases=[])
    print(f"{'batch':>5} {'tfgen ms/token':>15} {'keras-hub ms/token':>19} {'keras-hub/tfgen':>16} "
          f"{'tfgen/roofline':>15}")
    for batch in args.batches:
        ids = np.asarray([prompt] * batch, np.int32)

        def ours():
            out = gen.generate_ids(ids, max_new_tokens=steps, min_new_tokens=steps)
            assert int(out.num_generated.min()) == steps

        length = len(prompt) + steps
        token_ids = np.zeros([batch, length], np.int32)
        token_ids[:, :len(prompt)] = prompt
        padding_mask = np.zeros([batch, length], bool)
        padding_mask[:, :len(prompt)] = True

        def theirs():
            causal_lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None)

        ours_ms = best_ms_per_step(ours, steps, args.repeats)
        theirs_ms = best_ms_per_step(theirs, steps, args.repeats)
        row = dict(batch=batch, tfgen_ms=ours_ms, keras_hub_ms=theirs_ms, ratio=theirs_ms / ours_ms,
                   vs_roofline=ours_ms / roofline_ms)
        results["cases"].append(row)
        print(f"{batch:>5} {ours_ms:>15.1f} {theirs_ms:>19.1f} {row['ratio']:>15.2f}x "
              f"{row['vs_roofline']:>14.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


# -- Gemma 3 270M ---------------------------------------------------------------------------------
def gemma3_backbone(config, weights):
    """keras-hub's `Gemma3Backbone` holding `weights` (Hugging Face names and conventions, norm
    weights w of x * (1 + w), as `read_gguf` returns them): the inverse of
    `tfgen.models.keras_hub._gemma_weights`, as keras-hub's convert_gemma3.py maps a checkpoint.
    Queries are scaled by head_dim ** -0.5 (keras-hub's query_head_dim_normalize), which is
    query_pre_attn_scalar ** -0.5 for the 270M model (both 256)."""
    import keras_hub

    assert config.query_pre_attn_scalar == config.head_dim
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=config.vocab_size, image_size=None, num_layers=config.num_hidden_layers,
        num_query_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        hidden_dim=config.hidden_size, intermediate_dim=config.intermediate_size, head_dim=config.head_dim,
        query_head_dim_normalize=True, use_query_key_norm=True, use_post_ffw_norm=True,
        use_post_attention_norm=True, use_sliding_window_attention=True,
        sliding_window_size=config.sliding_window, global_rope_scaling_factor=config.rope_scaling_factor,
        layer_norm_epsilon=config.rms_norm_eps, dtype="float32")
    w = weights
    backbone.get_layer("token_embedding").embeddings.assign(w["model.embed_tokens.weight"])
    backbone.get_layer("final_normalization").scale.assign(w["model.norm.weight"])
    for i in range(config.num_hidden_layers):
        block, p = backbone.get_layer(f"decoder_block_{i}"), f"model.layers.{i}."
        block.pre_attention_norm.scale.assign(w[p + "input_layernorm.weight"])
        block.post_attention_norm.scale.assign(w[p + "post_attention_layernorm.weight"])
        block.pre_ffw_norm.scale.assign(w[p + "pre_feedforward_layernorm.weight"])
        block.post_ffw_norm.scale.assign(w[p + "post_feedforward_layernorm.weight"])
        attention = block.attention
        for layer, name in ((attention.query_dense, "q"), (attention.key_dense, "k"),
                            (attention.value_dense, "v")):
            heads, d, hd = layer.kernel.shape  # [heads, D, hd] from [heads * hd, D]
            layer.kernel.assign(w[p + f"self_attn.{name}_proj.weight"].reshape(heads, hd, d).transpose(0, 2, 1))
        heads, hd, d = attention.output_dense.kernel.shape  # [heads, hd, D] from [D, heads * hd]
        attention.output_dense.kernel.assign(w[p + "self_attn.o_proj.weight"].reshape(d, heads, hd).transpose(1, 2, 0))
        attention.query_norm.scale.assign(w[p + "self_attn.q_norm.weight"])
        attention.key_norm.scale.assign(w[p + "self_attn.k_norm.weight"])
        block.gating_ffw.kernel.assign(w[p + "mlp.gate_proj.weight"].T)
        block.gating_ffw_2.kernel.assign(w[p + "mlp.up_proj.weight"].T)
        block.ffw_linear.kernel.assign(w[p + "mlp.down_proj.weight"].T)
    return backbone


def write_float32_gguf(source: str, target: str, config, weights) -> None:
    """`weights` (Hugging Face names, norms w) as a float32 GGUF file llama.cpp reads: every metadata
    field of `source` (tokenizer included) but the file type, tensors under llama.cpp's names (the
    gguf package's Hugging Face name map), norm weights stored as 1 + w as convert_hf_to_gguf.py does."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(target, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type",
                                              "general.quantization_version"):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    for name, value in weights.items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings
        label = names.get_name(name, try_suffixes=(".weight",))
        if label is None:
            raise ValueError(f"no llama.cpp name for {name}")
        value = np.asarray(value, np.float32)
        writer.add_tensor(label, value + np.float32(1.0) if name.endswith("norm.weight") else value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class LlamaCpp:
    """llama.cpp through its C API: `batch` sequences decoded together, greedy on its logits."""

    def __init__(self, path: str, threads: int, batch: int, n_ctx: int, float32_cache: bool):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        params = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(path.encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {path}")
        self.vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        context = L.llama_context_default_params()
        context.n_ctx, context.n_batch, context.n_ubatch = batch * n_ctx, batch * n_ctx, batch * n_ctx
        context.n_seq_max, context.n_threads, context.n_threads_batch = batch, threads, threads
        if float32_cache:
            context.type_k = context.type_v = 0  # GGML_TYPE_F32
        self.ctx = L.llama_init_from_model(self.model, context)
        if not self.ctx:
            raise RuntimeError("llama.cpp cannot make a context")
        self.batch_size = batch
        self.batch = L.llama_batch_init(batch * n_ctx, 0, batch)

    def _decode(self, rows):
        """rows: [(seq, pos0, tokens)], logits of each row's last token [len(rows), V]."""
        b, n, outputs = self.batch, 0, []
        for seq, start, tokens in rows:
            for j, token in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n] = token, start + j, 1
                b.seq_id[n][0] = seq
                b.logits[n] = j == len(tokens) - 1
                if b.logits[n]:
                    outputs.append(n)
                n += 1
        b.n_tokens = n
        if self.L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        return np.stack([np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.vocab,))
                         for i in outputs])

    def greedy(self, prompt, steps):
        """`steps` greedy tokens for `batch` copies of `prompt` (each its own sequence)."""
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        logits = self._decode([(s, 0, prompt) for s in range(self.batch_size)])
        out = [[] for _ in range(self.batch_size)]
        for step in range(steps):
            tokens = logits.argmax(-1)
            for s in range(self.batch_size):
                out[s].append(int(tokens[s]))
            if step + 1 < steps:
                logits = self._decode([(s, len(prompt) + step, [int(tokens[s])]) for s in range(self.batch_size)])
        return out

    def all_logits(self, tokens):
        """The logits [T, V] of every position of one sequence."""
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        return np.stack([self._decode([(0, t, [tokens[t]])])[0] for t in range(len(tokens))])

    def close(self):
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def config_bos(path: str) -> int:
    """The BOS id the GGUF file names."""
    import gguf

    return int(gguf.GGUFReader(path).fields["tokenizer.ggml.bos_token_id"].contents())


def gemma3(args) -> dict:
    import tempfile

    import tfgen
    from tfgen.bench import matvec_bandwidth
    from tfgen.decoding.params import left_pad
    from tfgen.loading import packaged_gguf_path
    from tfgen.models.base import full_forward
    from tfgen.models.gguf import read_gguf

    path = packaged_gguf_path("gemma3-270m")
    gen = tfgen.load(f"gguf:{path}")
    bandwidth = matvec_bandwidth()
    weight_bytes = gen.num_parameters * 4
    roofline_ms = weight_bytes / bandwidth * 1000
    print(f"Gemma 3 270M: {gen.num_parameters:,} parameters, {weight_bytes / 1e6:.0f} MB float32; "
          f"matvec bandwidth {bandwidth / 1e9:.1f} GB/s -> roofline {roofline_ms:.1f} ms/token at batch 1")
    bos = config_bos(path)
    prompt = gen.tokenize(PROMPT)
    if prompt[:1] != [bos]:  # the model was trained with BOS first, as llama.cpp and keras-hub give it
        prompt = [bos] + prompt
    steps = args.new_tokens
    converted = read_gguf(path)
    config, weights = converted.config, dict(converted.weights)
    results = dict(model="gemma3-270m", bandwidth_gbs=bandwidth / 1e9, weight_mb=weight_bytes / 1e6,
                   roofline_ms=roofline_ms, new_tokens=steps, prompt_tokens=len(prompt), cases=[])

    # llama.cpp first (its own memory), then keras-hub.
    engines = {}
    if not args.no_llama_cpp:
        # Kept between runs (the logit check below runs on it every time).
        f32_path = os.path.join(tempfile.gettempdir(), "tfgen-bench-gemma-3-270m-f32.gguf")
        if not os.path.isfile(f32_path):
            began = time.perf_counter()
            write_float32_gguf(path, f32_path + ".tmp", config, weights)
            os.replace(f32_path + ".tmp", f32_path)
            print(f"float32 GGUF written in {time.perf_counter() - began:.1f} s: {f32_path} "
                  f"({os.path.getsize(f32_path) / 1e6:.0f} MB)")
        check = LlamaCpp(f32_path, args.threads, 1, len(prompt) + steps + 8, float32_cache=True)
        theirs = check.all_logits(prompt)
        check.close()
        ids, mask = left_pad([prompt], 0)
        hidden, _ = full_forward(gen.lm, ids, mask)
        ours = gen.lm.logits(hidden).numpy()[0]
        difference = float(np.abs(ours - theirs).max())
        scale = float(np.abs(ours).max())
        same_top = bool((ours.argmax(-1) == theirs.argmax(-1)).all())
        print(f"llama.cpp float32 logits vs tfgen over {len(prompt)} positions: max |difference| "
              f"{difference:.2e} (logits up to {scale:.1f}), same argmax everywhere: {same_top}")
        results["llama_cpp_f32_logit_max_abs_diff"] = difference
        # llama.cpp's CPU GELU reads a float16 table (tests/test_gemma.py: ~5e-4 relative error per
        # activation), so over 18 blocks its float32 logits sit ~1e-3 of their range from tfgen's;
        # a wrong weight or norm moves them by far more.
        results["llama_cpp_f32_logit_max_abs"] = scale
        if not same_top or difference > 1e-3 * scale:
            raise SystemExit("llama.cpp's float32 logits do not match tfgen's: no timing on this file")
        engines = {"llama_cpp_f32": (f32_path, True), "llama_cpp_q4": (path, False)}

    import keras_hub

    causal_lm = keras_hub.models.Gemma3CausalLM(backbone=gemma3_backbone(config, weights), preprocessor=None)
    causal_lm.compile(sampler="greedy")
    # What Gemma3CausalLM.generate runs (its jit-compiled generate_step), without generate's output
    # normalization: with preprocessor=None that concatenates the text-only model's `images: None`
    # and fails (keras-hub 0.32).
    generate_function = causal_lm.make_generate_function()
    del converted, weights
    import tensorflow as tf

    header = (f"{'batch':>5} {'tfgen':>8} {'keras-hub':>10} {'llama.cpp f32':>14} {'llama.cpp q4':>13} "
              f"{'tfgen/keras-hub':>16} {'tfgen/lcpp-f32':>15} {'tfgen/lcpp-q4':>14} {'tfgen/roofline':>15}")
    rows = []
    for batch in args.batches:
        ids = np.asarray([prompt] * batch, np.int32)
        reference = {}

        def ours():
            out = gen.generate_ids(ids, max_new_tokens=steps, min_new_tokens=steps)
            assert int(out.num_generated.min()) == steps
            reference["tokens"] = np.asarray(out.sequences)[0, len(prompt):len(prompt) + steps].tolist()

        length = len(prompt) + steps
        token_ids = np.zeros([batch, length], np.int32)
        token_ids[:, :len(prompt)] = prompt
        padding_mask = np.zeros([batch, length], bool)
        padding_mask[:, :len(prompt)] = True

        inputs = {"token_ids": tf.constant(token_ids), "padding_mask": tf.constant(padding_mask)}

        def theirs():
            out = generate_function(inputs, stop_token_ids=None)
            reference["keras_hub"] = np.asarray(out["token_ids"])[0, len(prompt):].tolist()

        row = dict(batch=batch, tfgen_ms=best_ms_per_step(ours, steps, args.repeats))
        row["keras_hub_ms"] = best_ms_per_step(theirs, steps, args.repeats)
        row["keras_hub_same_tokens"] = reference["tokens"] == reference["keras_hub"]
        for name, (file, f32_cache) in engines.items():
            engine = LlamaCpp(file, args.threads, batch, length + 8, float32_cache=f32_cache)
            out = {}

            def lcpp():
                out["tokens"] = engine.greedy(prompt, steps)

            row[name + "_ms"] = best_ms_per_step(lcpp, steps, args.repeats)
            row[name + "_same_tokens"] = out["tokens"][0] == reference["tokens"]
            engine.close()
        row["tfgen_over_keras_hub"] = row["tfgen_ms"] / row["keras_hub_ms"]
        for name in engines:
            row[f"tfgen_over_{name}"] = row["tfgen_ms"] / row[name + "_ms"]
        row["vs_roofline"] = row["tfgen_ms"] / roofline_ms
        results["cases"].append(row)
        rows.append(row)
        print(header)
        for r in rows:
            f = lambda key, fmt: format(r[key], fmt) if key in r else "-"
            print(f"{r['batch']:>5} {f('tfgen_ms', '8.1f')} {f('keras_hub_ms', '10.1f')} "
                  f"{f('llama_cpp_f32_ms', '14.1f'):>14} {f('llama_cpp_q4_ms', '13.1f'):>13} "
                  f"{f('tfgen_over_keras_hub', '15.2f'):>15}x {f('tfgen_over_llama_cpp_f32', '14.2f'):>14}x "
                  f"{f('tfgen_over_llama_cpp_q4', '13.2f'):>13}x {f('vs_roofline', '14.2f'):>14}x")
        print("same tokens as tfgen (row 0):", {k: v for k, v in row.items() if k.endswith("same_tokens")},
              flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
