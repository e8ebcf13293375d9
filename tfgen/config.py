"""GenerationConfig: the decoding parameters, with Hugging Face's names and defaults, validated.

Every check here runs in Python before any TensorFlow work starts, and names the parameter, the
value it got and what is allowed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import numpy as np

# Parameters that may hold one value per row in `generate_ids` (and in the exported `generate`
# signature). Everything else is one value for the whole call.
PER_ROW_FIELDS = ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed")

_EARLY_STOPPING_VALUES = (True, False, "never")


@dataclasses.dataclass
class GenerationConfig:
    """Decoding parameters. Names and defaults follow `transformers.GenerationConfig`.

    Args:
        max_new_tokens: how many tokens to generate at most, after the prompt.
        min_new_tokens: EOS is forbidden until this many tokens were generated.
        do_sample: sample from the processed distribution instead of taking the most likely token.
        temperature: divides the logits before sampling; below 1 sharpens, above 1 flattens.
        top_k: sample only among the k most likely tokens (0 turns the filter off).
        top_p: sample only among the most likely tokens whose probabilities add up to top_p.
        repetition_penalty: divides positive (multiplies negative) logits of tokens already in the
            sequence, prompt included; 1.0 is off.
        no_repeat_ngram_size: forbid any n-gram of this size from appearing twice (0 is off).
        num_beams: beam search with this many beams when > 1.
        length_penalty: beam scores are divided by length ** length_penalty.
        early_stopping: beam search stops when num_beams hypotheses are finished (True), by
            Hugging Face's heuristic (False), or only at max length ("never").
        num_return_sequences: how many sequences to return per prompt.
        eos_token_id: token that ends a row; None takes the model's.
        pad_token_id: token written after a row ended; None takes the model's (EOS for GPT-2).
        seed: makes sampling reproducible; the same seed gives the same text whatever else is in
            the batch. None draws a fresh seed per call.
        stop: strings that end a row; the stop string and what follows are cut from the text.

    Example:
        >>> import tfgen
        >>> config = tfgen.GenerationConfig(max_new_tokens=32, do_sample=True, top_p=0.9, seed=1)
        >>> config.validate()
    """

    max_new_tokens: Any = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: Any = 1.0
    top_k: Any = 50
    top_p: Any = 1.0
    repetition_penalty: Any = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    num_return_sequences: int = 1
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    seed: Any = None
    stop: Optional[Sequence[str]] = None

    @classmethod
    def from_any(cls, config: Any = None, **overrides: Any) -> "GenerationConfig":
        """Build a config from None, a tfgen or transformers GenerationConfig, plus keyword overrides.

        Raises:
            TypeError: for an unknown keyword or a config of another type.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(
                f"unknown generation parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        if config is None:
            values = {}
        elif isinstance(config, GenerationConfig):
            values = dataclasses.asdict(config)
        elif type(config).__name__ == "GenerationConfig" and hasattr(config, "to_dict"):
            values = _from_transformers(config, names)
        else:
            raise TypeError(
                f"generation_config must be a tfgen.GenerationConfig or transformers.GenerationConfig, "
                f"got {type(config).__name__}"
            )
        values.update(overrides)
        return cls(**values)

    def validate(self, batch_size: Optional[int] = None,
                 vocab_size: Optional[int] = None) -> "GenerationConfig":
        """Check every field; per-row arrays must have `batch_size` entries, token ids must be
        below `vocab_size` (when given). Returns self.

        Raises:
            TypeError: a field of the wrong type.
            ValueError: a field out of its allowed range.
        """
        _check_int("num_beams", self.num_beams, low=1)
        _check_int("num_return_sequences", self.num_return_sequences, low=1)
        _check_int("min_new_tokens", self.min_new_tokens, low=0)
        _check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, low=0)
        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise TypeError(f"do_sample must be True or False, got {self.do_sample!r}")
        if self.early_stopping not in _EARLY_STOPPING_VALUES or isinstance(self.early_stopping, (int, float)) and \
                not isinstance(self.early_stopping, bool):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        _check_float("length_penalty", self.length_penalty)
        for name in ("eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, low=0, high=None if vocab_size is None else vocab_size - 1)
        if self.num_beams > 1:
            if self.num_return_sequences > self.num_beams:
                raise ValueError(
                    f"num_return_sequences={self.num_return_sequences} is larger than num_beams="
                    f"{self.num_beams}; beam search returns at most num_beams sequences"
                )
            if self.do_sample:
                raise ValueError("do_sample=True with num_beams > 1 (beam sampling) is not supported; "
                                 "use num_beams=1 for sampling or do_sample=False for beam search")
            if isinstance(self.max_new_tokens, (list, tuple, np.ndarray)):
                raise ValueError("beam search takes one max_new_tokens for the whole batch, got per-row "
                                 f"values {self.max_new_tokens!r}")
        elif not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} with greedy search would repeat the "
                "same text; set do_sample=True or num_beams >= num_return_sequences"
            )
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
                raise TypeError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")

        self._check_rows("max_new_tokens", batch_size, int, low=1)
        self._check_rows("top_k", batch_size, int, low=0)
        self._check_rows("repetition_penalty", batch_size, float, low=0.0, low_open=True)
        self._check_rows("top_p", batch_size, float, low=0.0, low_open=True, high=1.0)
        if self.do_sample:
            self._check_rows("temperature", batch_size, float, low=0.0, low_open=True)
        else:
            self._check_rows("temperature", batch_size, float)
        if self.seed is not None:
            self._check_rows("seed", batch_size, int, low=0, high=2**63 - 1)
        return self

    @property
    def stop_strings(self) -> list:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def row_values(self, name: str, batch_size: int) -> np.ndarray:
        """The field as an array of `batch_size` values (a scalar is repeated)."""
        value = getattr(self, name)
        array = np.asarray(value)
        if array.ndim == 0:
            array = np.full([batch_size], array)
        return array

    def _check_rows(self, name, batch_size, kind, low=None, high=None, low_open=False):
        value = getattr(self, name)
        if isinstance(value, (list, tuple, np.ndarray)):
            if name not in PER_ROW_FIELDS:
                raise TypeError(f"{name} takes one value, got a sequence")
            array = np.asarray(value)
            if array.ndim != 1:
                raise ValueError(f"{name} must be a scalar or a 1-D sequence, got shape {array.shape}")
            if batch_size is not None and array.shape[0] != batch_size:
                raise ValueError(
                    f"{name} has {array.shape[0]} values but the batch has {batch_size} rows; "
                    "give one value per row or a single value"
                )
            for item in array.tolist():
                _check_number(name, item, kind, low, high, low_open)
        else:
            _check_number(name, value, kind, low, high, low_open)


def _from_transformers(config: Any, names: set) -> dict:
    raw = config.to_dict()
    # max_length / min_length count the prompt too, so they cannot become per-row new-token limits
    # without the prompt; a value other than transformers' default is refused, not silently ignored.
    for total, new, default in (("max_length", "max_new_tokens", 20), ("min_length", "min_new_tokens", 0)):
        if raw.get(new) is None and raw.get(total) not in (None, default):
            raise ValueError(
                f"transformers.GenerationConfig.{total}={raw[total]} counts the prompt tokens; tfgen limits "
                f"new tokens only: set {new} instead")
    values = {k: v for k, v in raw.items() if k in names and v is not None}
    if isinstance(values.get("eos_token_id"), list):
        values["eos_token_id"] = values["eos_token_id"][0]
    if raw.get("stop_strings"):
        values["stop"] = raw["stop_strings"]
    return values


def _check_number(name, value, kind, low=None, high=None, low_open=False):
    if kind is int:
        _check_int(name, value, low=low, high=high)
    else:
        _check_float(name, value, low=low, high=high, low_open=low_open)


def _check_int(name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def _check_float(name, value, low=None, high=None, low_open=False) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
