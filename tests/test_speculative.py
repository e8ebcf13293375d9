"""Speculative decoding (`tfgen.decoding.speculative`): the same tokens as plain decoding, in fewer passes.

References: plain greedy/sampling decoding of the same model (`sampling.loop`, itself checked
against Hugging Face in test_engine_exact.py), and for the sampled distribution the model's own
next-token probabilities from an eager full forward pass, warped in numpy (top-k, softmax). The
tiny random models repeat themselves, so prompt lookup finds proposals; a draft of other random
weights gets most rejected (the correction path), the model as its own draft gets all accepted.
"""
import numpy as np
import pytest
import tensorflow as tf

import tfgen
from tfgen.decoding import speculative
from tfgen.decoding.params import left_pad
from tfgen.models.base import full_forward
from test_engine_sampling import chi2_pvalue

PROMPTS = [
    [464, 3290, 3332, 319, 262, 2603, 13, 383, 3290, 3332, 319, 262],  # "The cat sat on the mat. The cat ..."
    [1212, 318, 257, 1332],
    [40, 588, 20, 11, 20, 11, 20, 11, 20, 11],
]
# Per-row sampling parameters; top_k 1 makes row 1 greedy.
MIXED = dict(do_sample=True, top_k=[20, 1, 0], top_p=[1.0, 1.0, 0.9], temperature=[0.7, 1.0, 1.2],
             seed=[1, 2, 3])


def _same(plain, spec):
    """Token-identical rows, equal counts, and the same log-probabilities (a wider pass may round
    differently in the last bits)."""
    assert plain.num_generated.tolist() == spec.num_generated.tolist()
    prompt = plain.sequences.shape[1] - plain.scores.shape[1]
    for row, count in enumerate(plain.num_generated):
        expected = plain.sequences[row, :prompt + count].tolist()
        assert spec.sequences[row, :prompt + count].tolist() == expected, f"row {row}"
        np.testing.assert_allclose(plain.scores[row, :count], spec.scores[row, :count], atol=2e-4)


@pytest.fixture(scope="module")
def batch(tiny):
    return left_pad(PROMPTS, tiny.lm.pad_token_id)


@pytest.mark.parametrize("options", [
    dict(),
    dict(repetition_penalty=[1.3, 1.0, 1.6], no_repeat_ngram_size=3, min_new_tokens=[6, 0, 3],
         presence_penalty=[0.5, 0.0, 0.0], frequency_penalty=[0.0, 0.3, 0.0]),
    MIXED,
    dict(MIXED, repetition_penalty=1.2, max_new_tokens=[30, 7, 19]),
], ids=["greedy", "processors", "sampling", "sampling+processors"])
def test_prompt_lookup_equals_plain_decoding_gpt2(tiny, batch, options):
    """Greedy and sampled rows with their processors on: the tokens plain decoding gives (batch 3,
    prompts of three lengths, per-row parameters), in fewer passes where proposals match."""
    ids, mask = batch
    plain_greedy = not options
    options = dict(dict(max_new_tokens=30), **options)
    plain = tiny.generate_ids(ids, mask, **options)
    spec = tiny.generate_ids(ids, mask, speculative="prompt_lookup", num_speculative_tokens=4, **options)
    _same(plain, spec)
    stats = spec.speculation
    assert stats is not None and plain.speculation is None
    assert (stats.accepted <= stats.proposed).all()
    assert (stats.forward_passes <= spec.num_generated).all()
    # Every pass commits its accepted proposals plus one token.
    assert (spec.num_generated <= stats.forward_passes + stats.accepted).all()
    if plain_greedy:
        assert stats.tokens_per_pass > 1.0  # the repeating rows accept proposals


def test_draft_models_equal_plain_decoding(tiny, batch):
    """A draft with other weights (most proposals rejected) and the model as its own draft (every
    proposal accepted: k + 1 tokens per pass) give plain greedy's and sampling's tokens."""
    ids, mask = batch
    other = tfgen.load("random:tiny", seed=1)
    for options in (dict(max_new_tokens=25), dict(MIXED, max_new_tokens=25)):
        plain = tiny.generate_ids(ids, mask, **options)
        for draft in (other, tiny):
            spec = tiny.generate_ids(ids, mask, speculative=draft, num_speculative_tokens=3, **options)
            _same(plain, spec)
    spec = tiny.generate_ids(ids, mask, speculative=tiny, num_speculative_tokens=3, max_new_tokens=25)
    assert (spec.speculation.accepted == spec.speculation.proposed).all()
    assert (spec.speculation.forward_passes <= 1 + -(-24 // 4) + 1).all()


@pytest.fixture(scope="module")
def unfused(tiny):
    """random:tiny's weights decoding without XLA (programs trace in seconds, not compile in a minute)."""
    return tfgen.TextGenerator(tiny.model, tiny.tokenizer, xla=False)


def test_rules_stop_strings_and_eos_lists(unfused):
    """Bad words, suppressed tokens, logit bias, a list of EOS ids and stop strings end and steer
    rows exactly as in plain decoding."""
    gen = unfused
    prompts = ["The cat sat on the mat. The cat sat on the", "1, 2, 1, 2, 1, 2,", "Hello"]
    plain_first = gen.complete(prompts, max_new_tokens=24)
    # EOS: two ids, the first taken from plain greedy's output of row 0 so that row ends early.
    text0 = gen.tokenize(plain_first[0].completion)
    eos = [text0[5], 50256]
    options = dict(max_new_tokens=24, eos_token_id=eos, bad_words_ids=[[text0[2]], [262, 3797]],
                   suppress_tokens=[13], begin_suppress_tokens=[text0[0]], logit_bias={11: 2.0},
                   stop=[plain_first[1].completion[3:6] or ","])
    plain = gen.complete(prompts, **options)
    spec = gen.complete(prompts, speculative="prompt_lookup", **options)
    assert [c.completion for c in spec] == [c.completion for c in plain]
    assert [c.num_tokens for c in spec] == [c.num_tokens for c in plain]
    assert gen.last_speculation is not None and gen.last_speculation.tokens_per_pass >= 1.0


def test_llama_adapter_prompt_lookup_and_draft(tmp_path):
    """The Llama adapter (a tiny random GGUF, grouped-query attention): greedy with processors and
    sampling, prompt lookup and a draft of its own weights, equal to plain decoding."""
    import gguf

    from test_llama import SMOL, write_tiny_gguf
    from tfgen import cache as tfgen_cache

    path = tmp_path / "tiny-llama.gguf"
    write_tiny_gguf(path, gguf.GGUFReader(SMOL))
    with tfgen_cache.redirected(str(tmp_path / "cache")):
        llama = tfgen.load(f"gguf:{path}", xla=False)
    rng = np.random.default_rng(3)
    rows = [list(rng.integers(5, llama.vocab_size, 4)) * 3, list(rng.integers(5, llama.vocab_size, 7))]
    ids, mask = left_pad(rows, llama.lm.pad_token_id)
    for options in (dict(repetition_penalty=1.1, no_repeat_ngram_size=4),
                    dict(do_sample=True, top_k=10, seed=[5, 6])):
        plain = llama.generate_ids(ids, mask, max_new_tokens=20, **options)
        for proposer in ("prompt_lookup", llama):
            _same(plain, llama.generate_ids(ids, mask, max_new_tokens=20, speculative=proposer,
                                            num_speculative_tokens=3, **options))


def test_sampling_follows_the_target_distribution(small_vocab):
    """The first three sampled tokens over 1920 seeds against the model's exact joint probability
    p(t1) p(t2 | t1) p(t3 | t1 t2) under top-k 3 (Pearson's chi-square), and against a wrong one.
    t3 comes from the pass that scored t2 when prompt lookup proposed t2, from the next one when
    the proposal was rejected: both paths are in the sample."""
    gen = tfgen.TextGenerator(small_vocab.model, small_vocab.tokenizer, xla=False)
    # The model's own greedy text, which ends repeating a token: prompt lookup's proposals are then
    # often, not always, what the model samples.
    prompt = gen.generate_ids([[10, 20]], max_new_tokens=6, ignore_eos=True).sequences[0].tolist()
    top_k, temperature = 3, 0.9

    def next_probs(rows):
        ids = np.asarray(rows, np.int32)
        hidden, _ = full_forward(gen.lm, ids, np.ones_like(ids))
        logits = gen.lm.logits(hidden[:, -1]).numpy().astype(np.float64) / temperature
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        probs = np.exp(np.where(logits >= kth, logits - logits.max(axis=-1, keepdims=True), -np.inf))
        return probs / probs.sum(axis=-1, keepdims=True)

    joint = {(): 1.0}
    for _ in range(3):  # extend every history by each of its top-k next tokens
        histories = list(joint)
        probs = next_probs([prompt + list(h) for h in histories])
        joint = {h + (int(t),): joint[h] * probs[i, t] for i, h in enumerate(histories)
                 for t in np.flatnonzero(probs[i])}
    counts = dict.fromkeys(joint, 0)
    proposed = accepted = 0
    for call in range(30):
        result = gen.generate_ids([prompt] * 64, max_new_tokens=4, do_sample=True, top_k=top_k,
                                  temperature=temperature, seed=list(range(call * 64, call * 64 + 64)),
                                  speculative=speculative.PromptLookup(pass_exponent=0.0), ignore_eos=True)
        proposed += int(result.speculation.proposed.sum())
        accepted += int(result.speculation.accepted.sum())
        for row in result.sequences[:, len(prompt):len(prompt) + 3].tolist():
            counts[tuple(row)] += 1
    assert 0 < accepted < proposed  # both the accepted and the rejected path ran
    keys = sorted(joint)
    observed = np.array([counts[key] for key in keys])
    probs = np.array([joint[key] for key in keys])
    pvalue, bins = chi2_pvalue(observed, probs)
    assert pvalue > 1e-3, f"chi-square p = {pvalue:.2e} over {bins} bins"
    assert chi2_pvalue(observed, np.full_like(probs, 1.0 / len(probs)))[0] < 1e-3


def test_bad_input(tiny, small_vocab):
    for k in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match="num_speculative_tokens must be an integer in 1..16"):
            tiny.generate("Hi", speculative="prompt_lookup", num_speculative_tokens=k)
    with pytest.raises(ValueError, match="vocabulary .96 tokens. differs"):
        tiny.generate("Hi", speculative=small_vocab)
    with pytest.raises(ValueError, match="vocabulary .96 tokens. differs"):
        tiny.generate("Hi", speculative=speculative.DraftModel(small_vocab.lm, pass_exponent=0.0))
    for bad in (-0.5, float("nan"), float("inf"), "0.45", True):
        with pytest.raises(ValueError, match="pass_exponent must be a finite number >= 0"):
            tiny.generate("Hi", speculative=speculative.PromptLookup(pass_exponent=bad))
    with pytest.raises(ValueError, match="DraftModel.pass_exponent must be"):
        tiny.generate("Hi", speculative=speculative.DraftModel(tiny.lm, pass_exponent=-1.0))
    for sizes in ((0, 3), (3, 2), (2.0, 3)):
        with pytest.raises(ValueError, match="1 <= min_ngram <= max_ngram"):
            tiny.generate("Hi", speculative=speculative.PromptLookup(min_ngram=sizes[0], max_ngram=sizes[1]))
    with pytest.raises(ValueError, match="not beam search"):
        tiny.generate("Hi", speculative="prompt_lookup", num_beams=2)
    with pytest.raises(ValueError, match="'prompt_lookup' or a draft TextGenerator"):
        tiny.generate("Hi", speculative="ngram")
    with pytest.raises(TypeError, match="'prompt_lookup' or a draft TextGenerator"):
        tiny.generate("Hi", speculative=3)
    with pytest.raises(ValueError, match="num_speculative_tokens needs speculative"):
        tiny.generate("Hi", num_speculative_tokens=3)


def test_stream_falls_back_to_plain_decoding(tiny):
    prompt = "The cat sat on the mat. The cat"
    text = "".join(tiny.stream(prompt, max_new_tokens=8, speculative="prompt_lookup"))
    assert text == tiny.generate(prompt, max_new_tokens=8, return_full_text=False)


def test_cli_flags(capsys, monkeypatch, unfused):
    from tfgen import cli

    monkeypatch.setattr(tfgen, "load", lambda spec=None, **options: unfused)
    prompt = "The cat sat on the mat. The cat sat on the"
    status = cli.main(["generate", prompt, "--max-new-tokens", "12", "--speculative", "prompt_lookup",
                       "--num-speculative-tokens", "3", "--verbose"])
    out, err = capsys.readouterr()
    assert status == 0 and out == unfused.generate(prompt, max_new_tokens=12) + "\n"
    assert "tokens per model pass" in err
    for argv, message in ((["--num-speculative-tokens", "3"], "only with --speculative"),
                          (["--speculative", "prompt_lookup", "--draft-model", "random:tiny"], "not both"),
                          (["--speculative", "prompt_lookup", "--num-speculative-tokens", "40"], "1..16"),
                          (["--speculative", "prompt_lookup", "--num-beams", "2"], "--num-beams")):
        assert cli.main(["generate", prompt, *argv]) == 2
        assert message in capsys.readouterr().err


def test_export_signature_equals_greedy(unfused):
    """The `speculative` export strategy's greedy_speculative signature: serving_default's text."""
    import tensorflow as tf

    module = unfused.graph_module(max_prompt_tokens=16, max_new_tokens=16, batch_buckets=(4,),
                                  prompt_buckets=(16,), xla=False)
    prompts = tf.constant(["The cat sat on the mat. The cat sat on the", "1, 2, 1, 2, 1, 2,", "Hello"])
    spec, greedy = module.greedy_speculative_text(prompts), module.greedy_text(prompts)
    assert spec["completion"].numpy().tolist() == greedy["completion"].numpy().tolist()
    assert (spec["num_tokens"].numpy() == greedy["num_tokens"].numpy()).all()
    assert (spec["forward_passes"].numpy() <= spec["num_tokens"].numpy()).all()
    assert "greedy_speculative" in module.signatures(["speculative"])


def test_draft_widths():
    assert speculative.draft_widths(1) == (0, 1)
    assert speculative.draft_widths(4) == (0, 1, 2, 4)
    assert speculative.draft_widths(16) == (0, 1, 8, 16)


def _expected_width(wanted, running, rate, widths, exponent):
    """numpy, from the definition: tokens committed on average per unit of pass cost."""
    batch = len(wanted)
    best, best_width = running.sum() / batch ** exponent, 0
    for width in widths:
        n = np.minimum(wanted, width)
        gained = [sum(r ** i for i in range(1, m + 1)) for r, m in zip(rate, n)]
        value = float(np.sum(running * (1.0 + np.asarray(gained)))) / (batch * (width + 1)) ** exponent
        if value > best * (1 + 1e-6):
            best, best_width = value, width
    return best_width


def test_pass_width_gives_the_most_tokens_per_cost():
    """`worth_it` against the same choice in numpy over random rows; exponent 0 checks every
    proposal (the widest pass anyone wants); a lone weak proposal at batch 4 is not worth a pass."""
    rng = np.random.default_rng(0)
    widths = speculative.draft_widths(8)[1:]
    for _ in range(60):
        batch = int(rng.integers(1, 9))
        wanted = rng.integers(0, 9, batch)
        running = rng.random(batch) < 0.8
        rate = rng.random(batch)
        exponent = float(rng.choice([0.2, 0.45, 0.8]))
        got = speculative.worth_it(tf.constant(wanted, tf.int32), tf.constant(running),
                                   tf.constant(rate, tf.float32), widths, exponent)
        assert int(got) == _expected_width(wanted, running.astype(float), rate, widths, exponent)
        widest = speculative.worth_it(tf.constant(wanted, tf.int32), tf.constant(running),
                                      tf.constant(rate, tf.float32), widths, 0.0)
        assert min(int(widest), wanted.max()) == wanted.max()

    def width(wanted, rate):
        return int(speculative.worth_it(tf.constant(wanted), tf.constant([True] * len(wanted)),
                                        tf.constant(rate), widths, speculative.PASS_EXPONENT))

    assert width([1, 0, 0, 0], [0.5] * 4) == 0  # one row's retry would cost the other three
    assert width([1], [0.5]) == 1
    assert width([8], [0.95]) == 8 and width([8], [0.5]) < 8
