"""Soak an export served over REST and gRPC: concurrent mixed traffic, bad requests, memory, latency.

    python benchmarks/soak.py                                   # exports SmolLM2-135M first
    python benchmarks/soak.py --path saved_models/smollm2/1     # an existing version directory
    python benchmarks/soak.py --model random:tiny --requests 200 --json soak.json

The export is served by the test emulator of TF Serving (tests/serving_server.py: TF Serving's
session-based loader behind its REST and gRPC predict APIs) in a process of its own. CLIENTS
threads send mixed requests: every signature of the export, REST row and columnar forms and gRPC,
random valid parameters and batch sizes up to the largest batch bucket, empty, over-long,
odd-unicode and binary-garbage prompts, and INVALID_SHARE requests with one bad parameter.

Checks (each failure is listed in the report):
  * every valid request succeeds, with one output row per prompt, and its response equals the
    same request served alone afterwards (sampled rows are seeded, so a row's text depends only
    on its own inputs: concurrent requests never mix);
  * every invalid request gets an error status (HTTP 400 / gRPC INVALID_ARGUMENT) whose message
    names the bad parameter, and the same client's next request succeeds;
  * the server's resident memory after the run is within RSS_TOLERANCE of after the warmup.
Reports p50/p99 latency and throughput of the concurrent phase.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, NamedTuple, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "..", "tests", "serving_server.py")
CLIENTS = 8
INVALID_SHARE = 0.10
RSS_TOLERANCE = 0.05
TEXTS = ["The theory of relativity is", "Hello, my name is", "Once upon a time", "The sky is", "def f(x):"]
ODD = ["héllo wörld", "日本語のテキスト", "🙂‍↔️ emoji 👩‍👩‍👧", "e\u0301\u0301\u0301 combining",
       "\u202eRTL override", "zero\u200bwidth\u200djoiner", "\ufeffBOM first", "עברית ومعًا",
       "\x00nul\x01ctl", "tab\tnew\nline"]
# The per-row parameters a generate-like signature takes: a valid value, and (name, bad value, why).
_VALID = {
    "max_new_tokens": lambda rng, limit: rng.randint(1, limit),
    "do_sample": lambda rng, limit: rng.random() < 0.6,
    "temperature": lambda rng, limit: rng.choice([0.5, 0.8, 1.0, 1.3]),
    "top_k": lambda rng, limit: rng.choice([0, 1, 5, 40]),
    "top_p": lambda rng, limit: rng.choice([1.0, 0.9, 0.5]),
    "repetition_penalty": lambda rng, limit: rng.choice([1.0, 1.2, 0.9]),
    "seed": lambda rng, limit: rng.randint(0, 2**62),
    "logprobs": lambda rng, limit: rng.choice([0, 1, 5, 20]),
}
_INVALID = {  # out of range; the server's message must name the parameter
    "max_new_tokens": lambda limit: [0, -3, limit + 1],
    "temperature": lambda limit: [0.0, -1.0],  # with do_sample true
    "top_k": lambda limit: [-1],
    "top_p": lambda limit: [0.0, 1.5],
    "repetition_penalty": lambda limit: [0.0, -2.0],
    "logprobs": lambda limit: [-1, 21],
}
_DTYPES = {"max_new_tokens": np.int32, "do_sample": np.bool_, "temperature": np.float32, "top_k": np.int32,
           "top_p": np.float32, "repetition_penalty": np.float32, "seed": np.int64, "logprobs": np.int32}


class Request(NamedTuple):
    """One request: where it goes, its inputs (numpy), and for an invalid one the parameter at fault."""

    signature: str
    transport: str  # "grpc", "rest-rows" or "rest-columns"
    inputs: Dict[str, np.ndarray]
    bad: Optional[str] = None


class Outcome(NamedTuple):
    ok: bool
    response: object  # normalised response (JSON-able) or the error message
    seconds: float


# -- the export ---------------------------------------------------------------------------------
def read_export(path: str) -> dict:
    """The export's limits (tfgen_export.json) and each signature's input names."""
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(path, "assets.extra", "tfgen_export.json"), encoding="utf-8") as handle:
        metadata = json.load(handle)
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as handle:
        proto.ParseFromString(handle.read())
    signatures = {name: sorted(sig.inputs) for name, sig in proto.meta_graphs[0].signature_def.items()
                  if not name.startswith("__")}
    return dict(metadata, inputs=signatures)


# -- traffic ------------------------------------------------------------------------------------
def _prompt(rng: random.Random, max_prompt_tokens: int) -> bytes:
    kind = rng.random()
    if kind < 0.08:
        return b""
    if kind < 0.16:  # over-long: the export keeps its last max_prompt_tokens tokens
        return (" ".join(rng.choice(TEXTS) for _ in range(max_prompt_tokens))).encode()
    if kind < 0.30:
        return rng.choice(ODD).encode("utf-8")
    if kind < 0.40:  # binary garbage, mostly not UTF-8
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 24)))
    return rng.choice(TEXTS).encode()


def make_request(rng: random.Random, export: dict, invalid: bool) -> Request:
    """A random request to a random signature; `invalid` breaks one parameter."""
    signatures = export["inputs"]
    per_row = sorted(name for name, inputs in signatures.items() if "max_new_tokens" in inputs)
    if invalid:  # only per-row parameters can be out of range
        name = rng.choice(per_row)
    else:
        name = rng.choice(sorted(signatures))
    batch = rng.randint(1, max(export["batch_buckets"]))
    limit, max_prompt = export["max_new_tokens"], export["max_prompt_tokens"]
    inputs: Dict[str, np.ndarray] = {}
    for key in signatures[name]:
        if key == "prompt":
            inputs[key] = np.array([_prompt(rng, max_prompt) for _ in range(batch)], dtype=object)
        elif key in _VALID:
            inputs[key] = np.array([_VALID[key](rng, limit) for _ in range(batch)], _DTYPES[key])
        elif key == "stop":
            stops = [[rng.choice(["", ".", "\n", " the", "ing"]) for _ in range(2)] for _ in range(batch)]
            inputs[key] = np.array([[s.encode() for s in row] for row in stops], dtype=object)
        elif key == "input_ids":
            length = rng.randint(1, max_prompt + 4)
            inputs[key] = np.array([[rng.randrange(export["vocab_size"]) for _ in range(length)]
                                    for _ in range(batch)], np.int32)
            mask = np.ones([batch, length], np.int32)
            for row in range(batch):  # left padding: the first `pad` slots are not real tokens
                mask[row, :rng.randint(0, length - 1)] = 0
            inputs["attention_mask"] = mask
        elif key == "attention_mask":
            continue
        else:
            raise ValueError(f"soak: signature {name} has input {key!r} this script does not know")
    transport = rng.choice(["grpc", "rest-rows", "rest-columns"])
    if not invalid:
        return Request(name, transport, inputs)
    bad = rng.choice(sorted(set(_INVALID) & set(inputs)))
    value = rng.choice(_INVALID[bad](limit))
    row = rng.randrange(batch)
    inputs[bad] = inputs[bad].copy()
    inputs[bad][row] = value
    if bad == "temperature":
        inputs["do_sample"] = inputs["do_sample"].copy()
        inputs["do_sample"][row] = True
    return Request(name, transport, inputs, bad=bad)


# -- clients ------------------------------------------------------------------------------------
def _json_value(value):
    """numpy -> TF Serving's JSON: strings as text when UTF-8, else {"b64": ...}."""
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value] if value.ndim else _json_value(value.item())
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, np.generic):
        return value.item()
    return value


class Client:
    """One client's connections: an HTTP opener and a gRPC channel to the served model."""

    def __init__(self, name: str, rest_port: int, grpc_port: int):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.name = name
        self.url = f"http://127.0.0.1:{rest_port}/v1/models/{name}:predict"
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def send(self, request: Request) -> Outcome:
        start = time.perf_counter()
        if request.transport == "grpc":
            ok, response = self._grpc(request)
        else:
            ok, response = self._rest(request)
        return Outcome(ok, response, time.perf_counter() - start)

    def _rest(self, request: Request):
        if request.transport == "rest-rows":
            batch = len(next(iter(request.inputs.values())))
            keys = sorted(request.inputs)
            if len(keys) == 1:
                instances = _json_value(request.inputs[keys[0]])
            else:
                instances = [{k: _json_value(request.inputs[k][i]) for k in keys} for i in range(batch)]
            body = {"signature_name": request.signature, "instances": instances}
        else:
            body = {"signature_name": request.signature,
                    "inputs": {k: _json_value(v) for k, v in request.inputs.items()}}
        data = json.dumps(body).encode()
        http = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(http, timeout=600) as reply:
                return True, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return False, f"HTTP {error.code}: {json.loads(error.read()).get('error')}"

    def _grpc(self, request: Request):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        proto = predict_pb2.PredictRequest()
        proto.model_spec.name = self.name
        proto.model_spec.signature_name = request.signature
        for key, value in request.inputs.items():
            proto.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        try:
            response = self.stub.Predict(proto, timeout=600)
        except grpc.RpcError as error:
            return False, f"gRPC {error.code().name}: {error.details()}"
        return True, {k: _json_value(tf.make_ndarray(v)) for k, v in sorted(response.outputs.items())}

    def close(self):
        self.channel.close()


def _rows(response) -> List[int]:
    """The leading dimension of every output of a response (all must equal the batch)."""
    if "predictions" in response:
        predictions = response["predictions"]
        return [len(predictions)]
    outputs = response.get("outputs", response)
    if not isinstance(outputs, dict):
        return [len(outputs)]
    return [len(value) for value in outputs.values()]


# -- the server ---------------------------------------------------------------------------------
class Server:
    """tests/serving_server.py in a subprocess; `rss()` is its resident memory in bytes."""

    def __init__(self, path: str, name: str):
        self.process = subprocess.Popen(
            [sys.executable, SERVER, path, name, "--rest-port", "0", "--grpc-port", "0"],
            stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().split()
        if len(line) != 3 or line[0] != "serving":
            self.process.kill()
            raise RuntimeError(f"the serving emulator did not start (said {line!r})")
        self.rest_port, self.grpc_port = int(line[1]), int(line[2])

    def rss(self) -> int:
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self):
        self.process.kill()
        self.process.wait()


# -- the soak -----------------------------------------------------------------------------------
def warmup_requests(export: dict) -> List[Request]:
    """Every signature at every batch bucket over gRPC, so the measured phase compiles nothing."""
    rng = random.Random(-1)
    requests = []
    for name in sorted(export["inputs"]):
        for batch in export["batch_buckets"]:
            while True:
                request = make_request(rng, export, invalid=False)
                if request.signature == name and len(next(iter(request.inputs.values()))) <= batch:
                    break
            requests.append(request._replace(transport="grpc"))
    return requests


def soak(path: str, requests: int = 1000, clients: int = CLIENTS, seed: int = 0,
         invalid_share: float = INVALID_SHARE, log=print) -> dict:
    """Serve the export at `path`, run the traffic, check it; returns the report ("failures": [])."""
    export = read_export(path)
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) or "model"
    rng = random.Random(seed)
    plan = [make_request(rng, export, invalid=rng.random() < invalid_share) for _ in range(requests)]
    if plan and not plan[-1].bad is None:
        plan.append(make_request(rng, export, invalid=False))  # an invalid one is followed by a valid one
    failures: List[str] = []
    server = Server(path, name)
    try:
        started = time.perf_counter()
        warm_client = Client(name, server.rest_port, server.grpc_port)
        for request in warmup_requests(export):
            outcome = warm_client.send(request)
            if not outcome.ok:
                failures.append(f"warmup {request.signature}: {outcome.response}")
        for request in warmup_requests(export):  # a second pass: allocator pools reach their size
            warm_client.send(request._replace(transport="rest-columns"))
        rss_warm = server.rss()
        log(f"warm in {time.perf_counter() - started:.1f} s; server RSS {rss_warm / 2**20:.0f} MiB")

        # Each client takes its share of the plan in order, so an invalid request's successor is
        # the same client's next request.
        shares = [plan[i::clients] for i in range(clients)]
        results: List[List[Outcome]] = [[] for _ in range(clients)]

        def run_client(index: int):
            client = Client(name, server.rest_port, server.grpc_port)
            try:
                for request in shares[index]:
                    results[index].append(client.send(request))
            finally:
                client.close()

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(run_client, range(clients)))
        wall = time.perf_counter() - start
        rss_after = server.rss()
        if not server.alive():
            failures.append("the server died")

        latencies, valid, invalid, rows = [], 0, 0, 0
        for index in range(clients):
            for position, (request, outcome) in enumerate(zip(shares[index], results[index])):
                latencies.append(outcome.seconds)
                where = f"client {index} request {position} ({request.signature}, {request.transport})"
                if request.bad is None:
                    valid += 1
                    if not outcome.ok:
                        failures.append(f"{where}: valid request failed: {outcome.response}")
                        continue
                    batch = len(next(iter(request.inputs.values())))
                    rows += batch
                    if set(_rows(outcome.response)) != {batch}:
                        failures.append(f"{where}: {batch} prompts, outputs of "
                                        f"{_rows(outcome.response)} rows")
                    alone = warm_client.send(request)
                    if alone.response != outcome.response:
                        failures.append(f"{where}: differs from the same request served alone: "
                                        f"{outcome.response!r:.300} vs {alone.response!r:.300}")
                else:
                    invalid += 1
                    message = str(outcome.response)
                    if outcome.ok:
                        failures.append(f"{where}: invalid {request.bad} was accepted")
                    elif request.bad not in message or not message.startswith(("HTTP 400", "gRPC INVALID")):
                        failures.append(f"{where}: the error does not name {request.bad}: {message}")
                    following = results[index][position + 1] if position + 1 < len(results[index]) else None
                    if following is not None and shares[index][position + 1].bad is None and not following.ok:
                        failures.append(f"{where}: the request after the invalid one failed: "
                                        f"{following.response}")
        warm_client.close()
        drift = rss_after / rss_warm - 1
        if abs(drift) > RSS_TOLERANCE:
            failures.append(f"server RSS moved {drift:+.1%} (warm {rss_warm / 2**20:.0f} MiB, "
                            f"after {rss_after / 2**20:.0f} MiB; tolerance {RSS_TOLERANCE:.0%})")
    finally:
        server.stop()
    milliseconds = np.array(latencies) * 1000
    report = {
        "path": path, "model": export.get("model"), "requests": len(plan), "valid": valid,
        "invalid": invalid, "clients": clients, "signatures": sorted(export["inputs"]),
        "batch_buckets": export["batch_buckets"], "prompt_buckets": export["prompt_buckets"],
        "max_new_tokens": export["max_new_tokens"], "xla": export.get("xla"),
        "wall_s": round(wall, 2), "requests_per_s": round(len(plan) / wall, 2),
        "rows_per_s": round(rows / wall, 2),
        "latency_ms": {"p50": round(float(np.percentile(milliseconds, 50)), 1),
                       "p99": round(float(np.percentile(milliseconds, 99)), 1),
                       "max": round(float(milliseconds.max()), 1)},
        "rss_mib": {"warm": round(rss_warm / 2**20, 1), "after": round(rss_after / 2**20, 1)},
        "rss_drift": round(drift, 4), "failures": failures,
    }
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", help="an export's version directory (default: export --model first)")
    parser.add_argument("--model", default="smollm2-135m", help="what to export when --path is not given")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="of the export made here")
    parser.add_argument("--max-prompt-tokens", type=int, default=32, help="of the export made here")
    parser.add_argument("--batch-buckets", default="1,4", help="of the export made here")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        path = args.path
        if path is None:
            import tfgen

            path = tfgen.export_saved_model(
                tfgen.load(args.model), os.path.join(root, "soak"),
                strategies="greedy,sample,beam,stop,logprobs",
                max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                batch_buckets=[int(b) for b in args.batch_buckets.split(",")], num_beams=2)
        report = soak(path, args.requests, args.clients, args.seed)
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}, indent=1))
    for failure in report["failures"][:50]:
        print("FAIL", failure)
    print(f"{len(report['failures'])} failures")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
