"""The files a TF Serving operator needs: warmup records, model config, batching config, command line."""
from __future__ import annotations

import datetime
import json
import os
import shlex
from typing import Dict, List, Optional, Sequence

import numpy as np

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
METADATA_FILE = os.path.join("assets.extra", "tfgen_export.json")
# TF Serving's platform config for a warm start from the version's XLA cache (serve.sh's TFGEN_WARM_START=1).
PLATFORM_CONFIG_FILE = os.path.join("assets.extra", "tf_serving_platform_config.txt")


def warmup_prompt(tokens: int) -> str:
    """A prompt of exactly `tokens` GPT-2 tokens (" the" is one token; the first "the" too)."""
    return "the" + " the" * (tokens - 1)


def warmup_requests(module) -> List[Dict]:
    """One request per (signature, batch bucket, prompt bucket): name, inputs as numpy arrays."""
    requests = []
    signatures = module.exported_signatures
    for batch in module.batch_buckets:
        for length in module.prompt_buckets:
            tokens = min(length, module.max_prompt_tokens)
            prompts = np.array([warmup_prompt(tokens).encode()] * batch, dtype=object)
            requests.append(dict(signature="serving_default", inputs={"prompt": prompts}))
            requests.append(dict(signature="generate_ids", inputs={
                "input_ids": np.full([batch, tokens], 262, np.int32),
                "attention_mask": np.ones([batch, tokens], np.int32)}))
            per_row = dict(
                prompt=prompts,
                max_new_tokens=np.full([batch], 2, np.int32),
                do_sample=np.arange(batch) % 2 == 0,
                temperature=np.full([batch], 0.8, np.float32),
                top_k=np.full([batch], 40, np.int32),
                top_p=np.full([batch], 0.9, np.float32),
                repetition_penalty=np.ones([batch], np.float32),
                seed=np.arange(batch, dtype=np.int64),
            )
            if "generate" in signatures:
                requests.append(dict(signature="generate", inputs=per_row))
            if "generate_logprobs" in signatures:
                requests.append(dict(signature="generate_logprobs", inputs=dict(
                    per_row, logprobs=np.full([batch], 2, np.int32))))
            if "generate_stop" in signatures:
                stop = np.array([[b"\n\n", b"."]] * batch, dtype=object)
                requests.append(dict(signature="generate_stop", inputs=dict(per_row, stop=stop)))
            if "beam" in signatures:
                requests.append(dict(signature="beam", inputs={"prompt": prompts}))
            if "greedy_speculative" in signatures:
                requests.append(dict(signature="greedy_speculative", inputs={"prompt": prompts}))
    return requests


def write_warmup(path: str, model_name: str, requests: Sequence[Dict]) -> str:
    """Write PredictionLog records (TF Serving's warmup format) to assets.extra/."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    target = os.path.join(path, WARMUP_FILE)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with tf.io.TFRecordWriter(target) as writer:
        for request in requests:
            proto = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=request["signature"]))
            for key, value in request["inputs"].items():
                proto.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=proto))
            writer.write(log.SerializeToString())
    return target


def models_config(name: str, base_path: str) -> str:
    return (
        "model_config_list {\n"
        "  config {\n"
        f"    name: \"{name}\"\n"
        f"    base_path: \"{base_path}\"\n"
        "    model_platform: \"tensorflow\"\n"
        "  }\n"
        "}\n"
    )


def batching_parameters(batch_buckets: Sequence[int], timeout_micros: int = 5000) -> str:
    """TF Serving's BatchingParameters text proto; allowed sizes are the export's batch buckets."""
    sizes = sorted(set(int(b) for b in batch_buckets))
    lines = [
        f"max_batch_size {{ value: {sizes[-1]} }}",
        f"batch_timeout_micros {{ value: {timeout_micros} }}",
        "max_enqueued_batches { value: 100 }",
        "num_batch_threads { value: 2 }",
        "pad_variable_length_inputs: true",
    ]
    lines += [f"allowed_batch_sizes: {size}" for size in sizes]
    return "\n".join(lines) + "\n"


def server_command(model_dir: str, gpu: bool = False) -> List[str]:
    """The tensorflow_model_server command line for a model directory (holding the versions).

    --xla_cpu_compilation_enabled=true: TF Serving disables XLA:CPU JIT by default, and a model
    with jit-compiled functions then fails on its first request (flag defined in
    tensorflow_serving/model_servers/main.cc). On GPU, XLA:GPU needs no flag.
    """
    command = [
        "tensorflow_model_server",
        "--port=8500",
        "--rest_api_port=8501",
        f"--model_config_file={os.path.join(model_dir, 'models.config')}",
        "--enable_batching=true",
        f"--batching_parameters_file={os.path.join(model_dir, 'batching_parameters.txt')}",
        "--enable_model_warmup=true",
    ]
    if not gpu:
        command.append("--xla_cpu_compilation_enabled=true")
    return command


def export_metadata(module, generator, signatures: Sequence[str]) -> Dict:
    """What the export serves and its limits, for operators and clients (assets.extra/tfgen_export.json)."""
    import tensorflow as tf

    import tfgen
    from tfgen.decoding import stops

    lm = module.lm
    return {
        "tfgen_version": tfgen.__version__,
        "tensorflow_version": tf.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": generator.name,
        "random_weights": bool(generator.random_weights),
        "architecture": generator.model.config.model_type,
        "vocab_size": lm.vocab_size,
        "special_token_ids": {"bos": lm.bos_token_id, "eos": lm.eos_token_id, "pad": lm.pad_token_id,
                              "eos_all": list(lm.eos_token_ids)},
        "signatures": list(signatures),
        "max_prompt_tokens": module.max_prompt_tokens,
        "prompt_policy": "longer prompts are left-truncated to their last max_prompt_tokens tokens; "
                         "an empty prompt starts from the BOS token",
        "max_new_tokens": module.max_new_tokens,
        "prompt_buckets": list(module.prompt_buckets),
        "batch_buckets": list(module.batch_buckets),
        "beam": {"num_beams": module.num_beams, "num_return_sequences": module.num_return_sequences}
        if "beam" in signatures else None,
        "stop": {"checked_in_loop": f"the first {stops.MAX_STOPS} stop strings of a row, of up to "
                                    f"{stops.WIDTH} bytes each; the text is cut at any of them"}
        if "generate_stop" in signatures else None,
        "xla": module.xla,
    }


def write_metadata(path: str, metadata: Dict) -> str:
    """Write the export's metadata JSON into path/assets.extra/."""
    target = os.path.join(path, METADATA_FILE)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=2)
        handle.write("\n")
    return target


def platform_config(batch_buckets: Sequence[int], intra_op_threads: int = 0,
                    inter_op_threads: int = 0) -> str:
    """TF Serving's PlatformConfigMap (`--platform_config_file`) for a warm start: the session runs
    with Grappler off (`disable_meta_optimizer`), so it lowers the same HLO as the validator and
    finds its executables in the persistent XLA cache (tfgen/export/serving_loader.py says why).
    With this file TF Serving ignores --enable_batching, --batching_parameters_file and the
    --tensorflow_*_parallelism flags, so the batching parameters and threads are here (0 = as
    many as cores)."""
    batching = "".join(f"            {line}\n" for line in batching_parameters(batch_buckets).splitlines())
    return (
        "platform_configs {\n"
        "  key: \"tensorflow\"\n"
        "  value {\n"
        "    source_adapter_config {\n"
        "      [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {\n"
        "        legacy_config {\n"
        "          session_config {\n"
        f"            intra_op_parallelism_threads: {int(intra_op_threads)}\n"
        f"            inter_op_parallelism_threads: {int(inter_op_threads)}\n"
        "            graph_options { rewrite_options { disable_meta_optimizer: true } }\n"
        "          }\n"
        "          batching_parameters {\n" + batching +
        "          }\n"
        "        }\n"
        "      }\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


def write_platform_config(path: str, batch_buckets: Sequence[int]) -> str:
    """Write `platform_config` into the version directory `path` (PLATFORM_CONFIG_FILE)."""
    target = os.path.join(path, PLATFORM_CONFIG_FILE)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(platform_config(batch_buckets))
    return target


def warm_server_command(model_dir: str, platform_config_file: str) -> List[str]:
    """`server_command` with the platform config in place of the batching flags it replaces."""
    replaced = ("--enable_batching", "--batching_parameters_file")
    return [part for part in server_command(model_dir) if not part.startswith(replaced)] + [
        f"--platform_config_file={platform_config_file}"]


def _serve_script(name: str, model_dir: str, xla_cache: Optional[str]) -> str:
    """serve.sh: the plain command, and with a shipped XLA cache a warm start behind TFGEN_WARM_START=1."""
    def command(parts):
        return "exec " + " \\\n  ".join(shlex.quote(part) for part in parts) + "\n"

    text = ("#!/bin/sh\n"
            "# Serve this model with TensorFlow Serving (CPU). On a GPU build drop\n"
            "# --xla_cpu_compilation_enabled=true; in Docker mount this directory and point the\n"
            "# paths at the mount (for example /models/" + name + ").\n")
    if xla_cache is not None:
        version_dir = os.path.dirname(os.path.dirname(xla_cache))
        config = os.path.join(version_dir, PLATFORM_CONFIG_FILE)
        text += (
            "#\n"
            "# TFGEN_WARM_START=1 ./serve.sh: load the XLA executables the export's validator compiled\n"
            "# (" + xla_cache + ") instead of compiling every program\n"
            "# during warmup. TF_XLA_FLAGS points TensorFlow's persistent XLA cache there, read-only (an\n"
            "# unwritable directory otherwise fails the request); the platform config turns Grappler off\n"
            "# so that the HLO, the cache's key, is the validator's. The executables are native code for\n"
            "# the exporting machine's TensorFlow (assets.extra/tfgen_export.json) and CPU, which the key\n"
            "# does not hold: use this only on a server with that TensorFlow version on the same CPU type.\n"
            "# Serve a newer version: point both paths at its directory.\n"
            "if [ \"${TFGEN_WARM_START:-0}\" = 1 ]; then\n"
            "  export TF_XLA_FLAGS=\"${TF_XLA_FLAGS:+$TF_XLA_FLAGS }"
            f"--tf_xla_persistent_cache_directory={shlex.quote(xla_cache)} "
            "--tf_xla_persistent_cache_read_only=true\"\n"
            "  " + command(warm_server_command(model_dir, config)) +
            "fi\n")
    return text + command(server_command(model_dir))


def write_operator_files(model_dir: str, name: str, batch_buckets: Sequence[int],
                         xla_cache: Optional[str] = None) -> List[str]:
    """models.config, batching_parameters.txt and serve.sh beside the version directories; with the
    version's XLA cache (`xla_cache`, VERSION/assets.extra/xla_cache) serve.sh has a warm start."""
    absolute = os.path.abspath(model_dir)
    files = {
        "models.config": models_config(name, absolute),
        "batching_parameters.txt": batching_parameters(batch_buckets),
        "serve.sh": _serve_script(name, absolute, None if xla_cache is None else os.path.abspath(xla_cache)),
    }
    written = []
    for filename, text in files.items():  # each whole or not at all: written aside, then renamed
        target = os.path.join(model_dir, filename)
        staging = f"{target}.tmp-{os.getpid()}"
        with open(staging, "w", encoding="utf-8") as handle:
            handle.write(text)
        if filename == "serve.sh":
            os.chmod(staging, 0o755)
        os.replace(staging, target)
        written.append(target)
    return written
