"""Apache Beam under failures: every input line once in the results or the dead letters, counted.

The handler is tfgen's `TFGenModelHandler` with its model swapped for a stand-in that answers
instantly and fails on purpose: each batch holding a "flaky" row fails the first times it is
called (a transient error: the handler must call it again), rows marked POISON fail every call
(a permanent error: only that row may become a dead letter), rows marked DOWN keep failing
transiently (retried to the end, then a dead letter). The pipeline runs on the DirectRunner with
four worker threads, with the parse-time dead letters (not JSON, bad parameters) mixed in.
"""
import collections
import json
import threading

import pytest

pytest.importorskip("apache_beam")

from tfgen import beam as tfgen_beam  # noqa: E402

WORKERS = ["--runner=DirectRunner", "--direct_num_workers=4", "--direct_running_mode=multi_threading"]
ROWS = 240
FLAKY_FAILURES = 2  # calls of a batch with a flaky row that fail before one succeeds (retries=2)


class _Model:
    """What `TFGenModelHandler` uses of a TextGenerator, answering `complete` with the prompt
    reversed; failures as described in the module docstring."""

    vocab_size = 1000

    class lm:  # noqa: N801 (the attribute's name on a TextGenerator)
        max_positions = 64

    def __init__(self):
        self.calls = collections.Counter()  # batch (its prompts) -> calls so far
        self.lock = threading.Lock()

    def prompt_ids(self, text):
        return list(range(len(text.split()) + 1))

    def complete(self, prompts, **params):
        with self.lock:
            self.calls[tuple(prompts)] += 1
            calls = self.calls[tuple(prompts)]
        if any("DOWN" in p for p in prompts):
            raise tfgen_beam.TransientError("model server unavailable")
        if any("flaky" in p for p in prompts) and calls <= FLAKY_FAILURES:
            raise ConnectionError(f"connection reset (call {calls})")
        if any("POISON" in p for p in prompts):
            raise RuntimeError("the model cannot take this row")
        from tfgen.generator import Completion

        return [Completion(p, p[::-1], len(p)) for p in prompts]


class FaultyHandler(tfgen_beam.TFGenModelHandler):
    def load_model(self):
        return _Model()


def _lines():
    """(lines, expected): id -> "ok" or the words its dead letter's error must hold."""
    lines, expected = [], {}
    for i in range(ROWS):
        row = {"id": i, "prompt": f"row {i}"}
        if i % 7 == 3:
            row["prompt"] += " flaky"
            expected[i] = "ok"
        elif i % 31 == 5:
            row["prompt"] += " POISON"
            expected[i] = "RuntimeError: the model cannot take this row"
        elif i % 53 == 11:
            row["prompt"] += " DOWN"
            expected[i] = "TransientError: model server unavailable (still failing after 3 attempts)"
        elif i % 41 == 17:
            row["top_p"] = 2.0
            expected[i] = "top_p must be <= 1.0"
        else:
            expected[i] = "ok"
        lines.append(json.dumps(row))
    lines.insert(50, "not JSON {")
    lines.insert(120, "")
    return lines, expected


def test_every_line_once_in_results_or_dead_letters_with_retries(tmp_path):
    lines, expected = _lines()
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    handler = FaultyHandler(max_batch_size=8, min_batch_size=1, retries=2, retry_delay=0.01)
    counts = tfgen_beam.run_batch(str(source), str(output), handler, dead_letter=str(dead),
                                  pipeline_args=WORKERS, progress=False, max_new_tokens=4)

    results = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    dead_letters = [json.loads(line) for line in dead.read_text(encoding="utf-8").splitlines()]
    seen = collections.Counter([row["id"] for row in results])
    not_json = [d for d in dead_letters if d["line"] == "not JSON {"]
    for letter in dead_letters:
        if letter["line"] != "not JSON {":
            seen[json.loads(letter["line"])["id"]] += 1
    assert sorted(seen) == list(range(ROWS)) and set(seen.values()) == {1}, "each row exactly once"
    assert len(not_json) == 1 and not_json[0]["error"].startswith("not JSON")

    for row in results:
        assert expected[row["id"]] == "ok", row
        assert row["completion"] == row["prompt"][::-1] and row["text"] == row["prompt"] + row["completion"]
    for letter in dead_letters:
        if letter is not_json[0]:
            continue
        row = json.loads(letter["line"])
        assert expected[row["id"]] != "ok" and expected[row["id"]] in letter["error"], letter

    assert counts["ok"] == len(results) == sum(v == "ok" for v in expected.values())
    assert counts["dead_letter"] == len(dead_letters) == ROWS + 1 - len(results)
    assert counts["blank"] == 1
    assert counts["ok"] + counts["dead_letter"] + counts["blank"] == len(lines)
    # Retries: each batch with a flaky row twice (its 2 failures); each DOWN row's batch twice, then
    # the DOWN row alone twice more; how rows fall into batches is the runner's, so bounds.
    down_rows = sum(expected[i].startswith("TransientError") for i in expected)
    assert FLAKY_FAILURES + 2 * down_rows <= counts["retries"] <= 2 * ROWS


def test_retry_settings_are_checked():
    with pytest.raises(ValueError, match="retries"):
        FaultyHandler(retries=-1)
    with pytest.raises(ValueError, match="retry_delay"):
        FaultyHandler(retry_delay="soon")


def test_isolating_rows_after_a_permanent_failure_keeps_the_good_rows():
    """Without a runner: a batch with one bad row gives one dead letter and the rest generated."""
    handler = FaultyHandler(max_batch_size=8, retries=FLAKY_FAILURES, retry_delay=0.0)
    model = _Model()
    batch = [tfgen_beam.parse_row(json.dumps({"id": i, "prompt": p}))
             for i, p in enumerate(["a", "b POISON", "c flaky", "d"])]
    outputs = handler.run_inference(batch, model)
    assert [o.get("error") for o in outputs] == [None, "RuntimeError: the model cannot take this row", None,
                                                 None]
    assert [o["completion"] for o in outputs if "error" not in o] == ["a", "ykalf c", "d"]
    # One retry too few: the flaky row alone is retried to the end and dead-lettered with its error.
    short = FaultyHandler(max_batch_size=8, retries=FLAKY_FAILURES - 1, retry_delay=0.0)
    outputs = short.run_inference(batch, _Model())
    assert outputs[2]["error"] == (f"ConnectionError: connection reset (call {FLAKY_FAILURES}) "
                                   f"(still failing after {FLAKY_FAILURES} attempts)")
    assert "error" not in outputs[0] and "error" not in outputs[3]
