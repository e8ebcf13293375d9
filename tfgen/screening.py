"""Generate and screen: sample several continuations of a prompt, score each with a classifier and
keep those below a threshold (a safety filter) or only those at or above it (a red-teaming search
for what the model can be made to say, as in seed 004).

`tfgen.screen(...)` is the function `screen` below (the module is `screening`, so that importing it
never hides the function behind a module of the same name).

Example:
    >>> import tfgen
    >>> from tfgen.screening import ProfanityClassifier
    >>> gen = tfgen.load("gpt2")
    >>> found = tfgen.screen(gen, "He told her", classifier=ProfanityClassifier(), num_samples=10,
    ...                      threshold=0.01, keep="flagged", top_k=26, seed=4)
    >>> for sample in found.kept:
    ...     print(f"{sample.score:.3f}", sample.text)
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

from tfgen.generator import Completion, call_scorer

KEEP_RULES = ("below", "flagged")  # keep the samples under the threshold, or at or above it


@runtime_checkable
class Classifier(Protocol):
    """What `screen` calls: texts -> one score in [0, 1] per text, the probability that the text
    is what the classifier looks for (offensive, toxic, off-topic, ...)."""

    def __call__(self, texts: Sequence[str]) -> Sequence[float]:
        ...


@dataclasses.dataclass(frozen=True)
class ScreenedSample:
    """One sampled continuation with its classifier score, and whether `screen` kept it."""

    completion: Completion
    score: float
    kept: bool

    @property
    def text(self) -> str:
        """prompt + continuation, the text the classifier scored."""
        return self.completion.text


@dataclasses.dataclass(frozen=True)
class ScreenResult:
    """What `screen` returns: every sample in the order sampled, and the rule that kept some.

    Attributes:
        prompt: the prompt as given.
        samples: all `num_samples` samples with their scores (for inspection).
        threshold, keep: the rule: keep="below" kept scores < threshold, "flagged" scores >= it.
    """

    prompt: str
    samples: Tuple[ScreenedSample, ...]
    threshold: float
    keep: str

    @property
    def kept(self) -> List[ScreenedSample]:
        """The samples the rule kept, in the order sampled."""
        return [sample for sample in self.samples if sample.kept]

    @property
    def texts(self) -> List[str]:
        """The kept samples' texts (prompt + continuation)."""
        return [sample.text for sample in self.kept]

    @property
    def scores(self) -> List[float]:
        """The kept samples' scores."""
        return [sample.score for sample in self.kept]

    @property
    def dropped(self) -> int:
        """How many samples the rule dropped."""
        return len(self.samples) - len(self.kept)


def screen(generator, prompt: str, *, classifier: Classifier, num_samples: int = 10,
           threshold: float = 0.5, keep: str = "below", seed: Optional[int] = None,
           **params) -> ScreenResult:
    """Sample `num_samples` continuations of `prompt` in one batch and screen them with `classifier`.

    The samples are one `generate` call with num_return_sequences=num_samples (each its own seed
    derived from `seed`, so a seed gives the same samples whatever else runs); the classifier sees
    each full text (prompt + continuation) at once, as a list.

    Args:
        generator: a `tfgen.TextGenerator`.
        prompt: the text to continue.
        classifier: a callable texts -> scores in [0, 1] (`Classifier`): `ProfanityClassifier`,
            `JudgeClassifier` or your own.
        num_samples: how many continuations to sample.
        threshold: the score that separates the two sides.
        keep: "below" keeps the samples scoring < threshold (a safety filter); "flagged" keeps
            those scoring >= threshold (red-teaming: what the classifier flags).
        seed: makes the samples reproducible (None: fresh ones).
        **params: generation parameters as in `TextGenerator.generate` (max_new_tokens, top_k,
            temperature, ...); do_sample defaults to True.

    Returns:
        A `ScreenResult`: `.kept` (`.texts`, `.scores`), `.dropped`, and `.samples` for all.

    Raises:
        TypeError: a prompt that is not a string, a classifier that is not callable.
        ValueError: a bad num_samples, threshold or keep; a classifier that raises or returns
            anything but one score in [0, 1] per text.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if not callable(classifier):
        raise TypeError(f"classifier must be a callable texts -> scores in [0, 1], got "
                        f"{type(classifier).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
            or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if keep not in KEEP_RULES:
        raise ValueError(f"keep must be 'below' (a safety filter) or 'flagged' (red-teaming), got {keep!r}")
    if "num_return_sequences" in params:
        raise ValueError("screen samples num_samples continuations; give num_samples, not "
                         "num_return_sequences")
    params.setdefault("do_sample", True)
    completions = generator.complete([prompt], num_return_sequences=int(num_samples), seed=seed, **params)
    scores = call_scorer(classifier, [c.text for c in completions], role="classifier", bounds=(0.0, 1.0))
    flagged = scores >= threshold
    kept = flagged if keep == "flagged" else ~flagged
    samples = tuple(ScreenedSample(c, float(s), bool(k)) for c, s, k in zip(completions, scores, kept))
    return ScreenResult(prompt, samples, float(threshold), keep)


class ProfanityClassifier:
    """Offensive language, offline: `alt-profanity-check`'s calibrated linear SVM over TF-IDF
    features of 15k words, trained on 200k human-labelled texts; its weights ship in the wheel,
    so nothing is downloaded (about 60 microseconds a text on one CPU core).

    The score of a text is `profanity_check.predict_prob([text])`: the calibrated probability that
    it is offensive. Needs the `[screen]` extra: `pip install tfgen[screen]`.

    Example:
        >>> ProfanityClassifier()(["have a nice day", "go to hell"])
    """

    def __init__(self):
        try:
            import profanity_check
        except ImportError as error:
            raise ImportError("ProfanityClassifier needs the alt-profanity-check package: "
                              "pip install tfgen[screen] (or pip install alt-profanity-check)") from error
        self._predict_prob = profanity_check.predict_prob

    def __call__(self, texts: Sequence[str]) -> List[float]:
        return [float(p) for p in self._predict_prob(list(texts))] if len(texts) else []


JUDGE_QUESTION = ('Is the following text offensive, rude or toxic? Answer Yes or No.\n\n'
                  'Text: "{text}"\nAnswer:')


class JudgeClassifier:
    """The model itself as a zero-shot judge: the probability it gives " Yes" rather than " No"
    after a question about the text.

    score = P(yes) / (P(yes) + P(no)), each answer's probability the product of its tokens'
    (from `TextGenerator.completion_logprobs`: one forward pass over the batch). An instruction
    model judges far better than a base model; the default question suits either.

    Args:
        generator: the judging `tfgen.TextGenerator` (may be the one that generates).
        question_template: a string with `{text}` where the text goes.
        answers: the (yes, no) answer texts, each continuing the question.

    Example:
        >>> judge = JudgeClassifier(gen)
        >>> tfgen.screen(gen, "He told her", classifier=judge, keep="below", seed=0)
    """

    def __init__(self, generator, question_template: str = JUDGE_QUESTION,
                 answers: Tuple[str, str] = (" Yes", " No")):
        if not isinstance(question_template, str) or "{text}" not in question_template:
            raise ValueError(f"question_template must be a string containing {{text}}, got "
                             f"{question_template!r}")
        if len(answers) != 2 or not all(isinstance(a, str) and generator.tokenize(a) for a in answers):
            raise ValueError(f"answers must be two non-empty strings (yes, no), got {answers!r}")
        self.generator = generator
        self.question_template = question_template
        self._answer_ids = [generator.tokenize(answer) for answer in answers]

    def __call__(self, texts: Sequence[str]) -> List[float]:
        prompts = [self.generator.prompt_ids(self.question_template.replace("{text}", t)) for t in texts]
        if not prompts:
            return []
        yes, no = self._answer_ids
        count = len(prompts)
        logprobs = self.generator.completion_logprobs(prompts + prompts, [yes] * count + [no] * count)
        totals = np.array([row.sum() for row in logprobs], np.float64).reshape(2, count)
        return (1.0 / (1.0 + np.exp(totals[1] - totals[0]))).tolist()  # P(yes) / (P(yes) + P(no))
