"""Which adapter runs which model: architecture name -> `CausalLM` subclass.

A model object says what it is through `config.model_type` (transformers' configs, and tfgen's own
weight holders such as `tfgen.models.llama.LlamaWeights`). Adding an architecture is one adapter
module in this package and one entry here; the decoding loop never names an architecture.
"""
from __future__ import annotations

from typing import Callable, Dict, Type

from tfgen.models.base import CausalLM
from tfgen.models.gemma import Gemma, GemmaWeights
from tfgen.models.gpt2 import GPT2, GPT2Weights
from tfgen.models.llama import Llama, LlamaWeights

ADAPTERS: Dict[str, Type[CausalLM]] = {
    "gpt2": GPT2,
    "llama": Llama,
    "qwen2": Llama,  # Llama's relatives: the config says which parts (biases, q/k norms, windows)
    "qwen3": Llama,
    "mistral": Llama,
    "gemma": Gemma,
    "gemma2": Gemma,
    "gemma3": Gemma,
}

# config.model_type -> the weight holder built from (config, float32 arrays under Hugging Face's
# names), for models read from files (GGUF, Hugging Face safetensors) rather than handed over as
# model objects.
WEIGHTS: Dict[str, Callable] = {
    "gpt2": GPT2Weights,
    "llama": LlamaWeights,
    "qwen2": LlamaWeights,
    "qwen3": LlamaWeights,
    "mistral": LlamaWeights,
    "gemma": GemmaWeights,
    "gemma2": GemmaWeights,
    "gemma3": GemmaWeights,
}


def adapter_for(model) -> CausalLM:
    """The adapter for a loaded model (a transformers GPT-2, a `LlamaWeights`, ...).

    Raises:
        ValueError: the model's type has no adapter; the message lists the supported ones.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(f"unsupported model type {model_type!r}; tfgen supports: {', '.join(ADAPTERS)}")
    return ADAPTERS[model_type](model)


def weights_for(config, weights: dict):
    """The weight holder (`LlamaWeights`, `GemmaWeights`, ...) of a config and its weights.

    Raises:
        ValueError: the config's model type has no weight holder; the message lists the supported ones.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in WEIGHTS:
        raise ValueError(f"unsupported model type {model_type!r}; tfgen reads weights of: "
                         f"{', '.join(WEIGHTS)}")
    return WEIGHTS[model_type](config, weights)
