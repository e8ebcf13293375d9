"""A short soak of a tiny export behind the TF Serving emulator (benchmarks/soak.py, fewer requests).

150 mixed requests from 8 concurrent clients over REST (row and columnar forms) and gRPC, to every
signature, with empty, over-long, odd-unicode and binary-garbage prompts and 10% invalid
parameters. Each valid response must equal the same request served alone, each invalid one an
error naming its parameter followed by a working request, and the server's memory must hold.
"""
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import soak  # noqa: E402  (benchmarks/soak.py)

REQUESTS = 150
# xla=False: the soak is about the serving path (tokenizer, padding, checks, both front ends), and
# the graph-mode loop skips XLA's per-bucket compiles, which dominate a CPU test's time.
EXPORT_ARGS = dict(max_prompt_tokens=16, max_new_tokens=8, num_beams=2, num_return_sequences=2,
                   batch_buckets=(1, 4), prompt_buckets=(16,), strategies="greedy,sample,beam,stop,logprobs",
                   xla=False, validate=False, progress=False)


@pytest.fixture(scope="module")
def export_path(tiny, tmp_path_factory):
    import tfgen

    return tfgen.export_saved_model(tiny, str(tmp_path_factory.mktemp("soak") / "tiny"), **EXPORT_ARGS)


def test_traffic_is_mixed_as_specified(export_path):
    """The plan covers what the soak promises: every signature and transport, batches up to the
    largest bucket, each kind of odd prompt, and about 10% invalid requests."""
    export = soak.read_export(export_path)
    rng = random.Random(0)
    plan = [soak.make_request(rng, export, invalid=rng.random() < soak.INVALID_SHARE)
            for _ in range(REQUESTS)]
    assert {r.signature for r in plan} == set(export["inputs"]) == {
        "serving_default", "generate_ids", "generate", "generate_stop", "beam", "generate_logprobs"}
    assert {r.transport for r in plan} == {"grpc", "rest-rows", "rest-columns"}
    batches = {len(next(iter(r.inputs.values()))) for r in plan}
    assert max(batches) == 4 and 1 in batches
    prompts = [p for r in plan if "prompt" in r.inputs for p in r.inputs["prompt"]]
    assert b"" in prompts
    assert any(len(p) > 200 for p in prompts)  # over-long
    assert any(max(p, default=0) >= 0x80 and _utf8(p) for p in prompts)  # odd unicode
    assert any(not _utf8(p) for p in prompts)  # binary garbage
    invalid = [r for r in plan if r.bad]
    assert 5 <= len(invalid) <= 30 and all(r.bad in r.inputs for r in invalid)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_soak_tiny_export(export_path):
    report = soak.soak(export_path, requests=REQUESTS, clients=8, seed=0)
    print({k: v for k, v in report.items() if k != "failures"})
    assert report["failures"] == []
    assert report["valid"] >= 100 and report["invalid"] >= 5
    assert abs(report["rss_drift"]) <= soak.RSS_TOLERANCE
