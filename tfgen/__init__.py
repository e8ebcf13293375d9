"""tfgen: TensorFlow text generation for GPT-2, Llama, Gemma and KerasHub models.

XLA-compiled decoding (greedy, beam search, sampling with every Hugging Face control), model
inspection, and SavedModel exports that TensorFlow Serving runs as they are.

The names below are imported on first use (PEP 562), so `import tfgen` and `tfgen --help` cost
no TensorFlow import; `tfgen.load(...)` brings it in.

Example:
    >>> import tfgen
    >>> gen = tfgen.load("random:tiny")
    >>> gen.generate("The theory of relativity is", max_new_tokens=10)
"""
import importlib
from typing import TYPE_CHECKING

from tfgen._keras_env import ensure_legacy_keras, import_tensorflow_quietly

ensure_legacy_keras()  # first: TF_USE_LEGACY_KERAS=1 must be set before anything imports TensorFlow

__version__ = "0.1.0"
__all__ = ["load", "TextGenerator", "GenerationConfig", "GenerationResult", "Completion",
           "SpeculationStats", "export_saved_model", "screen", "__version__"]

# public name -> the module that defines it
_EXPORTS = {
    "load": "tfgen.loading",
    "TextGenerator": "tfgen.generator",
    "GenerationResult": "tfgen.generator",
    "Completion": "tfgen.generator",
    "SpeculationStats": "tfgen.generator",  # GenerationResult.speculation, TextGenerator.last_speculation
    "GenerationConfig": "tfgen.config",
    "export_saved_model": "tfgen.export",
    "screen": "tfgen.screening",  # generate and screen with a classifier
}
# Those of them that import TensorFlow as they load: it comes in first, without its native log lines
# (tfgen.load does the same for the modules it imports).
_IMPORTS_TENSORFLOW = {"tfgen.generator", "tfgen.screening"}

if TYPE_CHECKING:  # what type checkers and editors see; nothing is imported at run time
    from tfgen.config import GenerationConfig
    from tfgen.export import export_saved_model
    from tfgen.generator import Completion, GenerationResult, SpeculationStats, TextGenerator
    from tfgen.loading import load
    from tfgen.screening import screen


def __getattr__(name: str):
    """Import a public name's module on first use and keep the name, so later lookups are plain."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tfgen' has no attribute {name!r}")
    if _EXPORTS[name] in _IMPORTS_TENSORFLOW:
        import_tensorflow_quietly()
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
