"""Batch generation with Apache Beam (tfgen.beam, `tfgen batch`) on the DirectRunner.

The pipelines run random:tiny, which `tfgen.load("random:tiny", seed=0)` builds with the same
weights in every process, so what the Beam workers write can be compared with the in-test
generator's `generate`.
"""
import json

import pytest

pytest.importorskip("apache_beam")

from tfgen import beam as tfgen_beam  # noqa: E402
from tfgen.cli import main  # noqa: E402

MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]

# Prompts stay under 8 tokens (one prompt bucket) and max_new_tokens <= 8 (one step bucket), so
# each process compiles few programs.
GOOD = [
    {"id": "g1", "prompt": "The theory of relativity is"},
    {"id": "g2", "prompt": "Hello", "max_new_tokens": 3},
    {"id": "g3", "prompt": "", "meta": {"source": "empty prompt starts from BOS"}},
    {"id": "g4", "prompt": "Once upon a time", "repetition_penalty": 1.3},
    {"id": "s1", "prompt": "The sky is", "do_sample": True, "seed": 7, "temperature": 0.7},
    {"id": "s2", "prompt": "The sky is", "do_sample": True, "seed": 8, "top_k": 5, "max_new_tokens": 4},
    {"id": "s3", "prompt": "In the beginning", "do_sample": True, "seed": 9, "top_p": 0.5,
     "temperature": 1.5},
    {"id": "s4", "prompt": "My name is", "do_sample": True, "seed": 10, "top_k": 0, "temperature": None},
]
BAD = {  # id -> (line, expected words of the reason)
    "b1": ('{"id": "b1", "prompt": "x", "top_p": 1.5}', "top_p must be <= 1.0"),
    "b2": ('{"id": "b2", "text": "no prompt here"}', "no prompt"),
    "b3": ('{"id": "b3", "prompt": "x", "do_sample": true, "temperature": 0}', "temperature must be > 0"),
    "b4": ('{"id": "b4", "prompt": "x", "max_new_tokens": 2.5}', "max_new_tokens must be an integer"),
    "b5": (json.dumps({"id": "b5", "prompt": "hello " * 1020}), "exceeds the model's context"),
    "b6": ('{"id": "b6", "prompt": 42}', "prompt must be a string"),
}
NOT_JSON = "this line is not JSON {"


def _write_input(path, rows, bad_lines=()):
    lines = [json.dumps(row) for row in rows] + list(bad_lines)
    path.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n", encoding="utf-8")  # one blank line


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected(generator, row, default_new_tokens):
    params = {k: v for k, v in row.items() if k not in ("id", "prompt", "meta") and v is not None}
    params.setdefault("max_new_tokens", default_new_tokens)
    return generator.generate(row["prompt"], **params)


def test_pipeline_two_workers_every_line_once_and_per_row_params(tiny, tmp_path):
    """`tfgen batch` with 2 worker processes: each input line lands once in results or dead letters;
    greedy rows equal `generate`, sampled rows equal `generate` alone with their own seed and
    parameters, and bad lines carry their reason."""
    source, output = tmp_path / "prompts.jsonl", tmp_path / "results.jsonl"
    _write_input(source, GOOD, [line for line, _ in BAD.values()] + [NOT_JSON])
    status = main(["batch", "--input", str(source), "--output", str(output), "--model", "random:tiny",
                   "--batch-size", "4", "--max-new-tokens", "6", "--no-progress", "--json"] + MULTI_PROCESS)
    assert status == 0

    results, dead = _read(output), _read(tmp_path / "results.dead.jsonl")
    ids = [row["id"] for row in results] + \
        [json.loads(d["line"])["id"] for d in dead if d["line"] != NOT_JSON]
    assert sorted(ids) == sorted([row["id"] for row in GOOD] + list(BAD))
    assert len(results) + len(dead) == len(GOOD) + len(BAD) + 1

    by_id = {row["id"]: row for row in results}
    for row in GOOD:
        out = by_id[row["id"]]
        for key, value in row.items():  # the input's fields are kept as they were
            assert out[key] == value
        assert out["text"] == _expected(tiny, row, 6), row["id"]
        assert out["text"] == row["prompt"] + out["completion"]
        assert 1 <= out["num_tokens"] <= row.get("max_new_tokens", 6)
    assert by_id["s1"]["text"] != by_id["s2"]["text"]

    reasons = {json.loads(d["line"])["id"] if d["line"] != NOT_JSON else "nj": d["error"] for d in dead}
    for key, (_, words) in BAD.items():
        assert words in reasons[key], (key, reasons[key])
    assert reasons["nj"].startswith("not JSON")


def test_counters_and_blank_lines(tiny, tmp_path):
    """run_batch returns the job's counters: ok, dead_letter, blank (in-process runner)."""
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(source, GOOD[:2], [NOT_JSON])
    handler = tfgen_beam.TFGenModelHandler("random:tiny", max_batch_size=2)
    counts = tfgen_beam.run_batch(str(source), str(output), handler, progress=False, max_new_tokens=4)
    assert counts == {"ok": 2, "dead_letter": 1, "blank": 1}
    for row, out in zip(GOOD[:2], sorted(_read(output), key=lambda r: r["id"])):
        assert out["text"] == _expected(tiny, row, 4)


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory):
    import tfgen

    root = tmp_path_factory.mktemp("exports") / "tiny"
    return tfgen.export_saved_model(tiny, str(root), strategies="greedy,sample", max_prompt_tokens=8,
                                    max_new_tokens=4, batch_buckets=(1,), prompt_buckets=(8,),
                                    validate=False, progress=False)


def test_saved_model_handler(tiny, tiny_export, tmp_path):
    """The export's `generate` signature in the workers: same text as `generate`; rows it cannot
    serve (over the export's max_new_tokens, beam search) become dead letters."""
    rows = [
        {"id": 1, "prompt": "The theory of relativity is"},  # the export's limit: 4 new tokens
        {"id": 2, "prompt": "Hello", "max_new_tokens": 2},
        {"id": 3, "prompt": "The sky is", "do_sample": True, "seed": 5, "temperature": 0.8, "top_k": 20},
    ]
    bad = ['{"id": 4, "prompt": "x", "max_new_tokens": 5}', '{"id": 5, "prompt": "x", "num_beams": 2}']
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(source, rows, bad)
    handler = tfgen_beam.SavedModelHandler(tiny_export)
    # The export's batch buckets are (1,).
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 1}
    counts = tfgen_beam.run_batch(str(source), str(output), handler, progress=False)
    assert counts == {"ok": 3, "dead_letter": 2, "blank": 1}
    by_id = {row["id"]: row for row in _read(output)}
    for row in rows:
        assert by_id[row["id"]]["text"] == _expected(tiny, row, 4)
    reasons = {json.loads(d["line"])["id"]: d["error"] for d in _read(tmp_path / "out.dead.jsonl")}
    assert "max_new_tokens must be <= 4" in reasons[4]
    assert "num_beams" in reasons[5]


def _fake_export(path, **metadata):
    """A version directory holding only assets.extra/tfgen_export.json (what the handler reads
    at construction; nothing here loads it)."""
    from tfgen.export.serving_files import METADATA_FILE

    target = path / METADATA_FILE
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(metadata), encoding="utf-8")
    return str(path)


def test_saved_model_handler_limits_from_export_metadata(tmp_path):
    """Batch size and max_new_tokens come from tfgen_export.json (no batching_parameters.txt)."""
    version = _fake_export(tmp_path / "m" / "1", max_new_tokens=4, batch_buckets=[1, 2],
                           signatures=["serving_default", "generate_ids", "generate"])
    handler = tfgen_beam.SavedModelHandler(version)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 2}
    assert handler.max_new_tokens == 4
    assert tfgen_beam.SavedModelHandler(version, max_batch_size=1).batch_elements_kwargs() == \
        {"min_batch_size": 1, "max_batch_size": 1}
    rows = [tfgen_beam.parse_row('{"prompt": "x", "max_new_tokens": 5}'),
            tfgen_beam.parse_row('{"prompt": "x", "num_beams": 2}')]
    out = handler.run_inference(rows, model=None)  # refused before the model is called
    assert "max_new_tokens must be <= 4" in out[0]["error"] and "num_beams" in out[1]["error"]


def test_saved_model_handler_without_export_metadata(tmp_path):
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"tfgen_export\.json.*[Rr]e-export"):
        tfgen_beam.SavedModelHandler(str(version))
    broken = _fake_export(tmp_path / "b" / "1")  # a JSON object without the limits
    with pytest.raises(ValueError, match=r"tfgen_export\.json.*[Rr]e-export"):
        tfgen_beam.SavedModelHandler(broken)
    greedy_only = _fake_export(tmp_path / "g" / "1", max_new_tokens=4, batch_buckets=[1],
                               signatures=["serving_default", "generate_ids"])
    with pytest.raises(ValueError, match="no 'generate' signature"):
        tfgen_beam.SavedModelHandler(greedy_only)


def test_over_long_row_is_a_dead_letter_and_the_rest_run_in_one_call(tiny, monkeypatch):
    """An over-long row is refused up front: the good rows of the batch still run as one
    `complete` call (not one by one) and give what `generate` gives."""
    calls = []
    complete = tiny.complete

    def counting(prompts, *args, **kwargs):
        calls.append(list(prompts))
        return complete(prompts, *args, **kwargs)

    monkeypatch.setattr(tiny, "complete", counting)
    good = [{"prompt": "Hello", "max_new_tokens": 3}, {"prompt": "The sky is", "max_new_tokens": 4},
            {"prompt": "Once upon a time", "max_new_tokens": 2, "stop": ["zzz"]}]
    lines = [json.dumps(good[0]), json.dumps({"prompt": "hello " * 1020, "max_new_tokens": 8}),
             json.dumps(good[1])]
    batch = [tfgen_beam.parse_row(line) for line in lines]
    out = tfgen_beam.TFGenModelHandler("random:tiny", max_batch_size=4).run_inference(batch, tiny)
    assert calls == [["Hello", "The sky is"]]
    assert "exceeds the model's context" in out[1]["error"] and out[1]["line"] == lines[1]
    for row, result in zip(good, (out[0], out[2])):
        assert result["text"] == tiny.generate(row["prompt"], max_new_tokens=row["max_new_tokens"])
    # A different stop list is a different call.
    calls.clear()
    out = tfgen_beam.TFGenModelHandler("random:tiny", max_batch_size=4).run_inference(
        [tfgen_beam.parse_row(json.dumps(row)) for row in good], tiny)
    assert sorted(calls) == [["Hello", "The sky is"], ["Once upon a time"]]
    assert out[2]["text"] == tiny.generate("Once upon a time", max_new_tokens=2, stop=["zzz"])


def test_parse_row():
    parse = tfgen_beam.parse_row
    assert parse("   ") is None
    good = parse('\ufeff{"prompt": "hi", "seed": null, "top_k": 3, "x": 1}', {"top_k": 50, "do_sample": True})
    assert good["params"] == {"top_k": 3, "do_sample": True} and good["fields"]["x"] == 1
    assert parse(b'{"prompt": "\xff"}')["error"].startswith("not UTF-8")
    assert parse("[1, 2]")["error"] == "not a JSON object: got a JSON list"
    assert "takes one value per row" in parse('{"prompt": "a", "temperature": [1, 2]}')["error"]
    assert parse('{"prompt": "a", "stop": ["."]}')["params"] == {"stop": ["."]}
    assert "error" not in parse('{"prompt": "a", "colour": "red"}')  # other fields pass through
    assert parse({"prompt": "a", "top_p": 0})["error"] == "top_p must be > 0.0, got 0"


def test_handler_arguments():
    with pytest.raises(ValueError, match="batch buckets"):
        tfgen_beam.TFGenModelHandler("random:tiny", max_batch_size=3)
    assert tfgen_beam.TFGenModelHandler("random:tiny").batch_elements_kwargs() == \
        {"min_batch_size": 8, "max_batch_size": 8}
    assert tfgen_beam.default_dead_letter_path("out/results.jsonl") == "out/results.dead.jsonl"
    with pytest.raises(TypeError, match="unknown generation parameter"):
        tfgen_beam.GenerateText(tfgen_beam.TFGenModelHandler("random:tiny"), colour="red")


@pytest.mark.parametrize("argv, words", [
    (["--input", "missing.jsonl", "--output", "o.jsonl"], "does not exist"),
    (["--input", "{src}", "--output", "o.jsonl", "--top-p", "2"], "top_p must be <= 1.0"),
    (["--input", "{src}", "--output", "o.jsonl", "--model", "random:nope"], "unknown random model"),
    (["--input", "{src}", "--output", "o.jsonl", "--model", "random:tiny", "--saved-model", "x"], "not both"),
    (["--input", "{src}", "--output", "o.jsonl", "--workers", "2", "--runner", "DataflowRunner"],
     "DirectRunner"),
])
def test_cli_errors(tmp_path, capsys, argv, words):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n')
    assert main(["batch"] + [a.replace("{src}", str(source)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0]


def test_cli_hands_unknown_flags_to_beam():
    from tfgen.cli import build_parser

    args = build_parser().parse_args(["batch", "--input", "a", "--output", "b", "--project", "p",
                                      "--temp_location=gs://t", "--max-new-tokens", "3", "--region", "r"])
    assert args.pipeline_args == ["--project", "p", "--temp_location=gs://t", "--region", "r"]
    assert args.max_new_tokens == 3
