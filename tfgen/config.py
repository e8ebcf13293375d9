"""GenerationConfig: the decoding parameters, with Hugging Face's names and defaults, validated.

Every check here runs in Python before any TensorFlow work starts, and names the parameter, the
value it got and what is allowed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, NamedTuple, Optional, Sequence, Union

import numpy as np


class RowField(NamedTuple):
    """A decoding parameter that holds one value per row: its dtype, allowed range and filler.

    The one table of these (`ROW_FIELDS`) is the contract the Python checks here, the tensors
    `tfgen.decoding.params` builds for the loops and the exported signatures' in-graph checks
    all read: a name, range or filler is written once.

    Attributes:
        name: the GenerationConfig field (and the exported signature's input).
        dtype: numpy dtype of the loop's tensor.
        kind: int, float or bool, for the checks.
        low, high: the allowed range (None: unbounded); low_open excludes low itself.
        filler: the value of bucket-filler rows; None copies the first row (so a filler row
            never changes which branch a batch takes).
        per_row_in_api: whether `generate`/`generate_ids` accept one value per row (do_sample is
            one value per call in the Python API, per row in the exported `generate` signature).
    """

    name: str
    dtype: type
    kind: type
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    filler: Any = None
    per_row_in_api: bool = True


ROW_FIELDS = (  # in the order the checks run
    RowField("max_new_tokens", np.int32, int, low=1, filler=1),
    RowField("top_k", np.int32, int, low=0),
    RowField("repetition_penalty", np.float32, float, low=0.0, low_open=True),
    RowField("top_p", np.float32, float, low=0.0, high=1.0, low_open=True),
    RowField("temperature", np.float32, float, low=0.0, low_open=True),  # > 0 checked when sampling
    RowField("seed", np.int64, int, low=0, high=2**63 - 1),
    RowField("min_new_tokens", np.int32, int, low=0, filler=0),
    RowField("presence_penalty", np.float32, float, low=-2.0, high=2.0, filler=0.0),
    RowField("frequency_penalty", np.float32, float, low=-2.0, high=2.0, filler=0.0),
    RowField("min_p", np.float32, float, low=0.0, high=1.0, filler=0.0),
    RowField("typical_p", np.float32, float, low=0.0, high=1.0, low_open=True, filler=1.0),
    RowField("do_sample", np.bool_, bool, filler=False, per_row_in_api=False),
    RowField("ignore_eos", np.bool_, bool, filler=False, per_row_in_api=False),
)
# The most top alternatives `logprobs` returns per token (OpenAI's limit); programs that return
# alternatives compute this many, whatever the request's N, so another N reuses them.
MAX_LOGPROBS = 20
# Fields that are one Python value per call but a per-row tensor in the loop.
_FLAGS = ("do_sample", "ignore_eos")
# Per-row fields only greedy search and sampling take (beam search refuses values other than these).
SAMPLING_ONLY = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "min_p": 0.0, "typical_p": 1.0,
                 "ignore_eos": False}
ROW_FIELD = {field.name: field for field in ROW_FIELDS}

# Parameters that may hold one value per row in `generate_ids` (and in the exported `generate`
# signature). Everything else is one value for the whole call.
PER_ROW_FIELDS = tuple(field.name for field in ROW_FIELDS if field.per_row_in_api)

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
        eos_token_id: the token, or a list of tokens, that ends a row (any of them, as in Hugging
            Face's generation_config.json); None takes the model's (all of its EOS ids).
        pad_token_id: token written after a row ended; None takes the model's (EOS for GPT-2).
        seed: makes sampling reproducible; the same seed gives the same text whatever else is in
            the batch. None draws a fresh seed per call (per row: a None entry, a fresh seed for
            that row).
        stop: strings that end a row; the stop string and what follows are cut from the text.
        presence_penalty, frequency_penalty: OpenAI's penalties in [-2, 2], over the generated
            tokens only: a token's logit drops by frequency_penalty per time it was generated and
            by presence_penalty once it was (greedy search and sampling).
        min_p: sampling keeps tokens at least min_p times as likely as the most likely (0 off).
        typical_p: locally typical sampling: the most typical tokens whose mass reaches typical_p.
        logit_bias: {token id: bias} added to those logits at every step (-100 bans, +100 forces).
        bad_words_ids: token sequences that must not be generated (Hugging Face's semantics: the
            last token of a sequence is banned where the tokens before it were just produced).
        suppress_tokens: token ids never generated; begin_suppress_tokens: not as the first token.
        ignore_eos: keep generating after EOS until max_new_tokens (EOS is then ordinary text).
        logprobs: None (off), or return each generated token's log-probability and its `logprobs`
            most likely alternatives (0..20; OpenAI's completions `logprobs`), all under the
            distribution the token was chosen from (greedy and sampling).
        raw_logprobs: with logprobs, the same under the model's raw distribution too.

    Example:
        >>> import tfgen
        >>> config = tfgen.GenerationConfig(max_new_tokens=32, do_sample=True, top_p=0.9, seed=1)
        >>> config.validate()
    """

    max_new_tokens: Any = 20
    min_new_tokens: Any = 0
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
    eos_token_id: Optional[Union[int, List[int]]] = None
    pad_token_id: Optional[int] = None
    seed: Any = None
    stop: Optional[Sequence[str]] = None
    presence_penalty: Any = 0.0
    frequency_penalty: Any = 0.0
    min_p: Any = 0.0
    typical_p: Any = 1.0
    logit_bias: Optional[dict] = None
    bad_words_ids: Optional[Sequence[Sequence[int]]] = None
    suppress_tokens: Optional[Sequence[int]] = None
    begin_suppress_tokens: Optional[Sequence[int]] = None
    ignore_eos: bool = False
    logprobs: Optional[int] = None
    raw_logprobs: bool = False

    @classmethod
    def from_any(cls, config: Any = None, *, defaults: Optional[dict] = None,
                 **overrides: Any) -> "GenerationConfig":
        """Build a config from None, a tfgen or transformers GenerationConfig, plus keyword overrides.

        `defaults` are the model's own parameters (`TextGenerator.defaults`, from its
        generation_config.json): as in transformers' generate, each replaces a field the given config
        leaves at GenerationConfig's default; keyword overrides always win.

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
        if defaults:
            plain = cls()
            for name, value in defaults.items():
                default = getattr(plain, name, None)
                if name in names and _is_default(values.get(name, default), default):
                    values[name] = value
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
        check_int("num_beams", self.num_beams, low=1)
        check_int("num_return_sequences", self.num_return_sequences, low=1)
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, low=0)
        for name in _FLAGS:
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.early_stopping not in _EARLY_STOPPING_VALUES or isinstance(self.early_stopping, (int, float)) and \
                not isinstance(self.early_stopping, bool):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        _check_float("length_penalty", self.length_penalty)
        high = None if vocab_size is None else vocab_size - 1
        if self.pad_token_id is not None:
            check_int("pad_token_id", self.pad_token_id, low=0, high=high)
        if isinstance(self.eos_token_id, (list, tuple)):
            if not self.eos_token_id:
                raise ValueError("eos_token_id: an empty list; give at least one id, or None for the model's")
            for value in self.eos_token_id:
                check_int("eos_token_id", value, low=0, high=high)
        elif self.eos_token_id is not None:
            check_int("eos_token_id", self.eos_token_id, low=0, high=high)
        if self.num_beams > 1:
            if self.num_return_sequences > self.num_beams:
                raise ValueError(
                    f"num_return_sequences={self.num_return_sequences} is larger than num_beams="
                    f"{self.num_beams}; beam search returns at most num_beams sequences"
                )
            if self.do_sample:
                raise ValueError("do_sample=True with num_beams > 1 (beam sampling) is not supported; "
                                 "use num_beams=1 for sampling or do_sample=False for beam search")
            for name in ("max_new_tokens", "min_new_tokens"):
                if isinstance(getattr(self, name), (list, tuple, np.ndarray)):
                    raise ValueError(f"beam search takes one {name} for the whole batch, got per-row "
                                     f"values {getattr(self, name)!r}")
            for name, neutral in SAMPLING_ONLY.items():
                if np.any(np.asarray(getattr(self, name)) != neutral):
                    raise ValueError(f"{name} applies to greedy search and sampling, not to beam search "
                                     f"(num_beams={self.num_beams})")
        elif not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} with greedy search would repeat the "
                "same text; set do_sample=True or num_beams >= num_return_sequences"
            )
        stop_list(self.stop)  # raises on a malformed stop
        self._check_logprobs()

        _check_token_ids(self, vocab_size)
        for field in ROW_FIELDS:
            if field.name in _FLAGS or field.name == "seed" and self.seed is None:
                continue
            if field.name == "temperature" and not self.do_sample:
                field = field._replace(low=None)  # greedy ignores the temperature
            self._check_rows(field, batch_size)
        return self

    def _check_logprobs(self) -> None:
        if self.logprobs is not None:
            check_int("logprobs", self.logprobs, low=0, high=MAX_LOGPROBS)
            if self.num_beams > 1:
                raise ValueError("logprobs applies to greedy search and sampling, not to beam search "
                                 f"(num_beams={self.num_beams}); beam search returns sequence scores")
        if not isinstance(self.raw_logprobs, (bool, np.bool_)):
            raise TypeError(f"raw_logprobs must be True or False, got {self.raw_logprobs!r}")
        if self.raw_logprobs and self.logprobs is None:
            raise ValueError("raw_logprobs=True needs logprobs (the number of alternatives, 0 or more)")

    @property
    def top_logprobs(self) -> int:
        """The compiled width of the top-alternatives outputs: 0 (none asked) or MAX_LOGPROBS."""
        return MAX_LOGPROBS if self.logprobs else 0

    def check_fits(self, prompt_tokens: int, context: int) -> None:
        """Raise ValueError when a prompt of `prompt_tokens` plus max_new_tokens exceeds `context`."""
        max_new = int(np.max(self.max_new_tokens))
        if prompt_tokens + max_new > context:
            raise ValueError(
                f"prompt of {prompt_tokens} tokens + max_new_tokens={max_new} exceeds the model's context of "
                f"{context} tokens; shorten the prompt or lower max_new_tokens"
            )

    @property
    def stop_strings(self) -> List[str]:
        return stop_list(self.stop)

    def eos_token_ids(self, model_ids: Sequence[int]) -> tuple:
        """The ids that end a row: this config's (one or a list), else the model's `model_ids`."""
        value = self.eos_token_id
        if value is None:
            return tuple(int(i) for i in model_ids)
        return tuple(int(i) for i in value) if isinstance(value, (list, tuple)) else (int(value),)

    def row_values(self, name: str, batch_size: int) -> np.ndarray:
        """The field as an array of `batch_size` values (a scalar is repeated)."""
        value = getattr(self, name)
        array = np.asarray(value)
        if array.ndim == 0:
            array = np.full([batch_size], array)
        return array

    def _check_rows(self, field: RowField, batch_size: Optional[int]) -> None:
        name, kind, low, high, low_open = field.name, field.kind, field.low, field.high, field.low_open
        value = getattr(self, name)
        if isinstance(value, (list, tuple, np.ndarray)):
            if not field.per_row_in_api:
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
                if item is None and name == "seed":
                    continue  # a row without a seed draws a fresh one
                _check_number(name, item, kind, low, high, low_open)
        else:
            _check_number(name, value, kind, low, high, low_open)


def _check_token_ids(config: "GenerationConfig", vocab_size: Optional[int]) -> None:
    """logit_bias, bad_words_ids, suppress_tokens, begin_suppress_tokens: types, and ids below vocab_size."""
    high = None if vocab_size is None else vocab_size - 1
    bias = config.logit_bias
    if bias is not None:
        if not isinstance(bias, dict) or not bias:
            raise TypeError(f"logit_bias must be a non-empty dict {{token id: bias}}, got {bias!r}")
        for token, value in bias.items():
            check_int("logit_bias token id", token, low=0, high=high)
            _check_float(f"logit_bias[{token}]", value)
    words = config.bad_words_ids
    if words is not None:
        if not isinstance(words, (list, tuple)) or not words:
            raise TypeError(f"bad_words_ids must be a non-empty list of token id lists, got {words!r}")
        for sequence in words:
            if not isinstance(sequence, (list, tuple)) or not sequence:
                raise ValueError("bad_words_ids: each banned sequence must be a non-empty list of token "
                                 f"ids, got {sequence!r}")
            for token in sequence:
                check_int("bad_words_ids token id", token, low=0, high=high)
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        tokens = getattr(config, name)
        if tokens is not None:
            if not isinstance(tokens, (list, tuple)):
                raise TypeError(f"{name} must be a list of token ids, got {tokens!r}")
            for token in tokens:
                check_int(f"{name} token id", token, low=0, high=high)


def stop_list(stop: Any) -> List[str]:
    """The stop strings of a `stop` value (None, a string or a list of strings) as a list.

    Raises:
        TypeError: anything else, or an empty string among them.
    """
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
        raise TypeError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return list(stops)


def _is_default(value: Any, default: Any) -> bool:
    """Whether a field holds its class default (a plain value equal to it; arrays never count)."""
    return value is default or (type(value) is type(default) and isinstance(value, (bool, int, float, str))
                                and value == default)


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
    if raw.get("stop_strings"):
        values["stop"] = raw["stop_strings"]
    return values


def _check_number(name, value, kind, low=None, high=None, low_open=False):
    if kind is int:
        check_int(name, value, low=low, high=high)
    else:
        _check_float(name, value, low=low, high=high, low_open=low_open)


def check_int(name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> None:
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
