"""tfgen: TensorFlow text generation for GPT-2-family models.

XLA-compiled decoding (greedy, beam search, sampling with every Hugging Face control), model
inspection, and SavedModel exports that TensorFlow Serving runs as they are.

Example:
    >>> import tfgen
    >>> gen = tfgen.load("random:tiny")
    >>> gen.generate("The theory of relativity is", max_new_tokens=10)
"""
from tfgen._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from tfgen.config import GenerationConfig  # noqa: E402
from tfgen.generator import GenerationResult, TextGenerator  # noqa: E402
from tfgen.loading import load  # noqa: E402
from tfgen.export import export_saved_model  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load", "TextGenerator", "GenerationConfig", "GenerationResult", "export_saved_model", "__version__"]
