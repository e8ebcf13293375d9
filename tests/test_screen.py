"""Best of n (`complete(best_of=..., scorer=...)`) and generate-and-screen (`tfgen.screen`).

References: the default scorer against numpy's mean log-softmax over Hugging Face's own forward
pass of the same weights; the screening and the CLI against `profanity_check.predict_prob`
called directly on the same samples; the zero-shot judge against the same forward pass. Every
generation is one prompt of under 8 tokens, 4 samples and at most 16 steps: one compiled program.
"""
import json
import re
import sys

import numpy as np
import pytest

import tfgen
from tfgen import cli
from tfgen.screening import JudgeClassifier, ProfanityClassifier, ScreenResult

PROMPT = "He told her"
SAMPLES = 4
SAMPLING = dict(do_sample=True, top_k=26, max_new_tokens=8)


def predict_prob():
    """alt-profanity-check's own entry point (tests using it skip when the [screen] extra is missing)."""
    module = pytest.importorskip("profanity_check",
                                 reason="needs alt-profanity-check: pip install tfgen[screen]")
    return module.predict_prob


def hf_log_softmax(generator, ids):
    """float64 [len(ids), vocab]: log-softmax of Hugging Face's TF GPT-2 logits for one unpadded row."""
    logits = generator.model(np.asarray([ids], np.int32)).logits.numpy()[0].astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def candidates(generator, seed):
    """The SAMPLES sampled candidates of PROMPT as ids (through generate_ids) and as texts."""
    prompt = generator.prompt_ids(PROMPT)
    result = generator.generate_ids([prompt], num_return_sequences=SAMPLES, seed=seed, **SAMPLING)
    new = [result.sequences[row, len(prompt):len(prompt) + count].tolist()
           for row, count in enumerate(result.num_generated)]
    return prompt, new, [PROMPT + generator.detokenize(ids) for ids in new]


# -- best of n ----------------------------------------------------------------------------------
def test_completion_logprobs_equal_a_full_forward_pass(tiny):
    prompt, completion = tiny.prompt_ids(PROMPT), tiny.tokenize(" to go home now")
    got = tiny.completion_logprobs([prompt, prompt[-1:]], [completion, completion[:2]])
    reference = hf_log_softmax(tiny, prompt + completion)
    expected = [reference[len(prompt) - 1 + i, token] for i, token in enumerate(completion)]
    np.testing.assert_allclose(got[0], expected, atol=1e-4)
    short = hf_log_softmax(tiny, prompt[-1:] + completion[:2])  # a second, shorter row: left padding
    np.testing.assert_allclose(got[1], [short[0, completion[0]], short[1, completion[1]]], atol=1e-4)


def test_best_of_keeps_the_highest_mean_log_probability(tiny):
    prompt, new, texts = candidates(tiny, seed=3)
    assert len(set(texts)) == SAMPLES, "need distinct candidates"
    means = []
    for ids in new:
        log_probs = hf_log_softmax(tiny, prompt + ids)
        means.append(np.mean([log_probs[len(prompt) - 1 + i, t] for i, t in enumerate(ids)]))
    order = np.argsort(-np.asarray(means), kind="stable")
    best = tiny.complete([PROMPT], best_of=SAMPLES, num_return_sequences=2, seed=3, **SAMPLING)
    assert [c.text for c in best] == [texts[order[0]], texts[order[1]]]
    assert tiny.generate(PROMPT, best_of=SAMPLES, seed=3, **SAMPLING) == texts[order[0]]
    ranked = tiny.complete([PROMPT], num_return_sequences=SAMPLES, scorer=None, best_of=SAMPLES, seed=3,
                           **SAMPLING)  # best_of == n: all kept, best first
    assert [c.text for c in ranked] == [texts[i] for i in order]


def test_best_of_with_a_custom_scorer(tiny):
    first, second = candidates(tiny, seed=5)[2][:2], candidates(tiny, seed=6)[2][:2]
    calls = []

    def vowels(batch):
        calls.append(list(batch))
        return [sum(ch in "aeiou" for ch in text) + len(text) / 1000 for text in batch]

    best = tiny.complete([PROMPT, PROMPT], best_of=2, num_return_sequences=1, scorer=vowels, seed=[5, 6],
                         **SAMPLING)  # 2 prompts x 2 candidates: the batch of the other tests
    assert calls == [first + second]  # one call, the full texts of every candidate of both prompts
    assert [c.text for c in best] == [group[int(np.argmax(vowels(group)))] for group in (first, second)]


@pytest.mark.parametrize("options, message", [
    (dict(best_of=0), "best_of must be a positive integer"),
    (dict(best_of=2.0), "best_of must be a positive integer"),
    (dict(best_of=True), "best_of must be a positive integer"),
    (dict(best_of=2, num_return_sequences=3), "n) = 3 is larger than best_of=2"),
    (dict(best_of=2, do_sample=False), "need do_sample=True"),
])
def test_best_of_rejects_bad_counts(tiny, options, message):
    options = {**SAMPLING, **options}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny.complete([PROMPT], **options)


def broken_scorer(texts):
    raise RuntimeError("model server down")


@pytest.mark.parametrize("scorer, message", [
    (broken_scorer, "scorer 'broken_scorer' raised RuntimeError: model server down"),
    (lambda texts: [1.0], "scorer '<lambda>' returned 1 scores for 4 texts"),
    (lambda texts: ["high"] * len(texts), "scorer '<lambda>' must return one number per text"),
    (lambda texts: None, "scorer '<lambda>' must return one number per text"),
    (lambda texts: [float("nan")] * len(texts), "scorer '<lambda>' returned NaN"),
])
def test_best_of_rejects_a_bad_scorer(tiny, scorer, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as raised:
        tiny.complete([PROMPT], best_of=SAMPLES, scorer=scorer, seed=1, **SAMPLING)
    if scorer is broken_scorer:
        assert isinstance(raised.value.__cause__, RuntimeError)
    with pytest.raises(TypeError, match="scorer must be None"):
        tiny.complete([PROMPT], best_of=2, scorer="length", **SAMPLING)


def test_completion_logprobs_rejects_bad_rows(tiny):
    with pytest.raises(ValueError, match="one entry per row"):
        tiny.completion_logprobs([[1, 2]], [[3], [4]])
    with pytest.raises(ValueError, match="row 0: the prompt and the completion need at least one token"):
        tiny.completion_logprobs([[1, 2]], [[]])
    with pytest.raises(ValueError, match=r"row 1: token ids must be in \[0, 50257\)"):
        tiny.completion_logprobs([[1], [2]], [[3], [50257]])


# -- classifiers ----------------------------------------------------------------------------------
def test_profanity_classifier_is_predict_prob():
    reference = predict_prob()
    texts = ["have a lovely day", "go to hell, you idiot", "He told her the truth", "what the fuck"]
    scores = ProfanityClassifier()(texts)
    np.testing.assert_allclose(scores, reference(texts), rtol=0, atol=1e-12)
    assert scores[0] < 0.5 < scores[1] and scores[3] > 0.5  # the classifier itself, not random numbers


def test_profanity_classifier_names_the_extra_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # makes `import profanity_check` fail
    with pytest.raises(ImportError, match=r"pip install tfgen\[screen\]"):
        ProfanityClassifier()


def test_judge_classifier_is_p_yes_over_p_yes_plus_no(tiny):
    judge = JudgeClassifier(tiny)
    texts = ["have a lovely day", "go to hell"]
    yes, no = tiny.tokenize(" Yes"), tiny.tokenize(" No")
    assert len(yes) == len(no) == 1
    expected = []
    for text in texts:
        ids = tiny.prompt_ids(f'Is the following text offensive, rude or toxic? Answer Yes or No.\n\n'
                              f'Text: "{text}"\nAnswer:')
        last = hf_log_softmax(tiny, ids)[-1]
        expected.append(np.exp(last[yes[0]]) / (np.exp(last[yes[0]]) + np.exp(last[no[0]])))
    np.testing.assert_allclose(judge(texts), expected, atol=1e-4)
    with pytest.raises(ValueError, match="question_template must be a string containing"):
        JudgeClassifier(tiny, "Is it rude?")


# -- screening --------------------------------------------------------------------------------------
def test_screen_keeps_and_drops_by_the_classifiers_own_scores(tiny):
    reference = predict_prob()
    _, _, texts = candidates(tiny, seed=4)
    scores = reference(texts)
    threshold = float(np.median(scores))  # both sides non-empty
    below = tfgen.screen(tiny, PROMPT, classifier=ProfanityClassifier(), num_samples=SAMPLES,
                         threshold=threshold, keep="below", seed=4, **SAMPLING)
    flagged = tfgen.screen(tiny, PROMPT, classifier=ProfanityClassifier(), num_samples=SAMPLES,
                           threshold=threshold, keep="flagged", seed=4, **SAMPLING)
    assert isinstance(below, ScreenResult)
    assert [s.text for s in below.samples] == texts
    np.testing.assert_allclose([s.score for s in below.samples], scores, atol=1e-12)
    assert below.texts == [t for t, s in zip(texts, scores) if s < threshold]
    assert flagged.texts == [t for t, s in zip(texts, scores) if s >= threshold]
    assert below.dropped == len(flagged.texts) > 0 and flagged.dropped == len(below.texts) > 0
    np.testing.assert_allclose(flagged.scores, [s for s in scores if s >= threshold], atol=1e-12)


@pytest.mark.parametrize("options, error, message", [
    (dict(num_samples=0), ValueError, "num_samples must be a positive integer"),
    (dict(threshold=1.5), ValueError, r"threshold must be a number in \[0, 1\]"),
    (dict(keep="above"), ValueError, "keep must be 'below'"),
    (dict(num_return_sequences=2), ValueError, "give num_samples, not num_return_sequences"),
    (dict(classifier="profanity"), TypeError, "classifier must be a callable"),
    (dict(classifier=lambda texts: [2.0] * len(texts)), ValueError,
     r"classifier '<lambda>' must return scores in \[0.0, 1.0\]"),
    (dict(classifier=broken_scorer), ValueError, "classifier 'broken_scorer' raised RuntimeError"),
])
def test_screen_rejects_bad_input(tiny, options, error, message):
    options = {"classifier": lambda texts: [0.0] * len(texts), "num_samples": SAMPLES, "seed": 1,
               **SAMPLING, **options}
    with pytest.raises(error, match=message):
        tfgen.screen(tiny, PROMPT, **options)


# -- the command line ---------------------------------------------------------------------------------
@pytest.fixture
def cli_on_tiny(tiny, monkeypatch, capsys):
    """main(argv) -> (status, stdout, stderr) with --model random:tiny as the session's model."""
    monkeypatch.setattr(tfgen, "load", lambda spec=None, **options: tiny)

    def run(*argv):
        status = cli.main(["generate", PROMPT, "--model", "random:tiny", *argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run


SCREEN_FLAGS = ("--screen", "--num-samples", str(SAMPLES), "--top-k", "26", "--max-new-tokens", "8",
                "--seed", "4")


def test_cli_screen_prints_the_kept_samples_and_the_dropped_count(tiny, cli_on_tiny):
    reference = predict_prob()
    _, _, texts = candidates(tiny, seed=4)
    scores = reference(texts)
    threshold = float(np.median(scores))
    flagged = [(t, s) for t, s in zip(texts, scores) if s >= threshold]
    status, out, err = cli_on_tiny(*SCREEN_FLAGS, "--screen-threshold", repr(threshold), "--screen-keep",
                                   "flagged")
    assert status == 0 and "random (untrained) weights" in err
    shown = [line for line in out.splitlines() if line.startswith("[")]
    assert shown == [f"[{s:.4f}] {t}" for t, s in flagged]
    assert out.splitlines()[-1] == (f"kept {len(flagged)} of {SAMPLES} samples scoring at or above "
                                    f"{threshold:g} (profanity), dropped {SAMPLES - len(flagged)}")
    status, out, _ = cli_on_tiny(*SCREEN_FLAGS, "--screen-threshold", repr(threshold), "--json")
    assert status == 0
    row = json.loads(out)
    kept = [(t, s) for t, s in zip(texts, scores) if s < threshold]
    assert [k["text"] for k in row["kept"]] == [t for t, _ in kept]
    np.testing.assert_allclose([k["score"] for k in row["kept"]], [s for _, s in kept], atol=1e-12)
    assert all(k["text"] == PROMPT + k["completion"] for k in row["kept"])
    assert {key: row[key] for key in ("prompt", "dropped", "num_samples", "keep")} == dict(
        prompt=PROMPT, dropped=SAMPLES - len(kept), num_samples=SAMPLES, keep="below")


def test_cli_best_of(tiny, cli_on_tiny):
    status, out, _ = cli_on_tiny("--best-of", str(SAMPLES), "--do-sample", "--top-k", "26",
                                 "--max-new-tokens", "8", "--seed", "3")
    assert status == 0
    assert out == tiny.generate(PROMPT, best_of=SAMPLES, seed=3, **SAMPLING) + "\n"


@pytest.mark.parametrize("argv, message", [
    (("--screen-keep", "flagged"), "--screen-keep: only with --screen"),
    (("--screen", "--num-return-sequences", "2"), "does not combine with --num-return-sequences"),
    (("--screen", "--stream"), "does not combine with --stream"),
    (("--screen", "--screen-threshold", "2"), r"--screen-threshold must be in \[0, 1\]"),
    (("--screen", "--num-samples", "0"), "--num-samples must be >= 1"),
    (("--best-of", "0"), "--best-of must be >= 1"),
    (("--screen", "--screen-keep", "above"), "invalid choice: 'above'"),
])
def test_cli_screen_rejects_bad_options_before_loading(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(tfgen, "load", lambda *a, **k: pytest.fail("loaded a model for a bad command line"))
    status = cli.main(["generate", PROMPT, *argv])
    _, err = capsys.readouterr()
    assert status == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_cli_keep_rules_are_the_librarys():
    from tfgen.cli.options import SCREEN_KEEP_RULES
    from tfgen.screening import KEEP_RULES

    assert SCREEN_KEEP_RULES == KEEP_RULES
