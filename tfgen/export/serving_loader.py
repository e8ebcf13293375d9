"""What TF Serving does with an export, reproduced with TensorFlow alone (no tfgen, no transformers).

No TensorFlow Serving binary can be installed everywhere tfgen is tested, so this module does its
part with what TF ships: it loads the SavedModel with the session-based loader TF Serving uses
(`tf.compat.v1.saved_model.loader.load`), with only tensorflow and tensorflow-text ops
registered; audits the graph's ops; decodes REST bodies (row "instances" and columnar "inputs"
forms) and gRPC `PredictRequest` protos into the signature's inputs the way TF Serving does; and
replays the warmup records. The tests' local server (tests/serving_server.py) answers REST and
gRPC requests with `rest_predict` and `grpc_predict`.

Warm starts: with TensorFlow's persistent XLA cache (TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR,
read when TensorFlow loads) a process loads the executables another one compiled, but only when the
HLO it lowers is byte for byte the same: the cache key is a hash of the HLO module, names included.
Grappler, which a session runs on the graph and its functions before XLA sees them, names the
constants it duplicates in an order that changes from process to process (measured: 3 of ~5900 HLO
lines differed between two loads of one export, so every process missed). `SessionModel(path,
grappler=False)` (`--no-grappler`) loads with Grappler off (`disable_meta_optimizer`), which TF
Serving does through the session config of its `--platform_config_file` (serving_files.py); then
every process lowers the same HLO and the cache hits. XLA still optimizes the compiled program.

This file imports nothing from tfgen: `tfgen validate` runs it as a script in a fresh process.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tensorflow-text ops, as TF Serving links them)

FORBIDDEN_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


class SessionModel:
    """A SavedModel loaded the TF1 way, as TF Serving's SavedModelBundle does."""

    def __init__(self, path: str, grappler: bool = True):
        self.path = path
        self.graph = tf.Graph()
        config = tf.compat.v1.ConfigProto()
        config.graph_options.rewrite_options.disable_meta_optimizer = not grappler
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        with self.graph.as_default():
            self.meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        self.signatures = dict(self.meta.signature_def)

    def inputs(self, signature: str) -> dict:
        return {k: v for k, v in self._signature(signature).inputs.items()}

    def outputs(self, signature: str) -> dict:
        return {k: v for k, v in self._signature(signature).outputs.items()}

    def _signature(self, name: str):
        if name not in self.signatures:
            raise KeyError(f"no signature {name!r}; the model has {sorted(self.signatures)}")
        return self.signatures[name]

    def run(self, signature: str, inputs: dict) -> dict:
        """Feed numpy inputs by signature input name; returns numpy outputs by name."""
        spec = self._signature(signature)
        missing = set(spec.inputs) - set(inputs)
        extra = set(inputs) - set(spec.inputs)
        if missing or extra:
            raise ValueError(f"signature {signature!r} takes inputs {sorted(spec.inputs)}; "
                             f"missing {sorted(missing)}, unexpected {sorted(extra)}")
        feed = {spec.inputs[k].name: inputs[k] for k in spec.inputs}
        names = sorted(spec.outputs)
        values = self.session.run([spec.outputs[k].name for k in names], feed_dict=feed)
        return dict(zip(names, values))

    def ops(self) -> set:
        graph_def = self.meta.graph_def
        ops = {node.op for node in graph_def.node}
        for function in graph_def.library.function:
            ops |= {node.op for node in function.node_def}
        return ops


def audit_ops(model: SessionModel) -> dict:
    """The graph's ops; which are forbidden (Python callbacks) or not registered here."""
    from tensorflow.python.framework import op_def_registry

    ops = model.ops()
    unknown = sorted(op for op in ops if op_def_registry.get(op) is None)
    forbidden = sorted(ops & FORBIDDEN_OPS)
    text_ops = sorted(op for op in ops if _op_library(op) == "tensorflow_text")
    return {"ops": sorted(ops), "forbidden": forbidden, "unregistered": unknown,
            "tensorflow_text_ops": text_ops, "ok": not unknown and not forbidden}


def _op_library(op: str) -> str:
    return "tensorflow_text" if op in _TEXT_OPS else "tensorflow"


# Ops that tensorflow-text registers and the export may use (checked against the registry when
# the module is imported: anything else registered only after importing tensorflow_text counts too).
_TEXT_OPS = {"RegexSplitWithOffsets", "WhitespaceTokenizeWithOffsets", "WordpieceTokenizeWithOffsets",
             "SentencepieceOp", "SentencepieceTokenizeOp", "SentencepieceDetokenizeOp",
             "UnicodeScriptTokenizeWithOffsets"}


# -- TF Serving's JSON mapping ------------------------------------------------------------------
def _np_dtype(tensor_info):
    return tf.dtypes.as_dtype(tensor_info.dtype).as_numpy_dtype


def _json_value(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _to_array(value, tensor_info):
    dtype = _np_dtype(tensor_info)
    value = _json_value(value)
    if dtype == object:
        return np.array(value, dtype=object)
    return np.array(value, dtype=dtype)


def _to_json(value, name: str):
    """numpy output -> JSON value; strings as UTF-8 text, or {"b64": ...} for names ending in _bytes."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()

    def convert(item):
        if isinstance(item, bytes):
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(item).decode()}
            return item.decode("utf-8", errors="replace")  # JSON text must be UTF-8; exact bytes: gRPC
        if isinstance(item, list):
            return [convert(i) for i in item]
        return item

    return convert(value)


def rest_predict(model: SessionModel, body: dict) -> dict:
    """Answer a REST predict body as TF Serving does (row "instances" or columnar "inputs")."""
    signature = body.get("signature_name", "serving_default")
    spec = model.inputs(signature)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ValueError("'instances' must be a non-empty list")
        if all(isinstance(row, dict) and not set(row) <= {"b64"} for row in instances):
            inputs = {k: _to_array([row[k] for row in instances], spec[k]) for k in spec}
        elif len(spec) == 1:
            (key,) = spec
            inputs = {key: _to_array(instances, spec[key])}
        else:
            raise ValueError(f"instances must be objects with keys {sorted(spec)}")
        outputs = model.run(signature, inputs)
        rows = len(instances)
        if len(outputs) == 1:
            (name, value), = outputs.items()
            return {"predictions": _to_json(value, name)}
        return {"predictions": [{k: _to_json(v[i], k) for k, v in outputs.items()} for i in range(rows)]}
    if "inputs" in body:
        given = body["inputs"]
        if not isinstance(given, dict):
            if len(spec) != 1:
                raise ValueError(f"'inputs' must be an object with keys {sorted(spec)}")
            given = {next(iter(spec)): given}
        inputs = {k: _to_array(given[k], spec[k]) for k in spec if k in given}
        outputs = model.run(signature, inputs)
        if len(outputs) == 1:
            (name, value), = outputs.items()
            return {"outputs": _to_json(value, name)}
        return {"outputs": {k: _to_json(v, k) for k, v in outputs.items()}}
    raise ValueError("a predict body needs 'instances' or 'inputs'")


def grpc_predict(model: SessionModel, request):
    """Answer a tensorflow_serving.apis.predict_pb2.PredictRequest with a PredictResponse."""
    from tensorflow_serving.apis import predict_pb2

    signature = request.model_spec.signature_name or "serving_default"
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    outputs = model.run(signature, inputs)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    response.model_spec.signature_name = signature
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return response


def warmup_records(path: str):
    """The PredictRequests in assets.extra/tf_serving_warmup_requests."""
    from tensorflow_serving.apis import prediction_log_pb2

    target = os.path.join(path, WARMUP_FILE)
    if not os.path.isfile(target):
        return []
    requests = []
    for record in tf.compat.v1.io.tf_record_iterator(target):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        requests.append(log.predict_log.request)
    return requests


# -- TensorFlow's persistent XLA cache -------------------------------------------------------------
_CACHE_FLAG = "--tf_xla_persistent_cache_directory="


def xla_cache_directory():
    """The persistent XLA cache directory TensorFlow read from TF_XLA_FLAGS, or None."""
    for part in os.environ.get("TF_XLA_FLAGS", "").split():
        if part.startswith(_CACHE_FLAG):
            return part[len(_CACHE_FLAG):]
    return None


def xla_cache_entries(directory) -> int:
    """How many executables the directory holds (TensorFlow names them PREFIX__...__DEVICE.pb)."""
    try:
        return sum(name.endswith(".pb") for name in os.listdir(directory))
    except (OSError, TypeError):
        return 0


# -- validation ---------------------------------------------------------------------------------
def validate(path: str, expected: dict = None, log=print, grappler: bool = True) -> dict:
    """Check an export the way TF Serving would use it; returns a report with "ok".

    With a persistent XLA cache (TF_XLA_FLAGS) the report's "xla_cache" counts its executables
    before and after: on a writable cache, `compiled` is how many programs this process compiled.
    """
    from tensorflow_serving.apis import predict_pb2

    report = {"path": path, "checks": [], "ok": True}
    cache_dir = xla_cache_directory()
    entries_before = xla_cache_entries(cache_dir)

    def check(name, passed, detail=""):
        report["checks"].append({"check": name, "ok": bool(passed), "detail": detail})
        report["ok"] &= bool(passed)
        log(f"  [{'ok' if passed else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))

    start = time.perf_counter()
    model = SessionModel(path, grappler=grappler)
    check("load with the session-based SavedModel loader (tensorflow + tensorflow-text ops only)", True,
          f"{time.perf_counter() - start:.1f} s; signatures {sorted(model.signatures)}"
          + ("" if grappler else "; Grappler off"))
    audit = audit_ops(model)
    report["ops"] = audit
    detail = f"{len(audit['ops'])} op types; tensorflow-text: {audit['tensorflow_text_ops'] or 'none'}"
    if audit["forbidden"] or audit["unregistered"]:
        detail = f"forbidden {audit['forbidden']}, unregistered {audit['unregistered']}"
    check("ops are core TensorFlow or tensorflow-text, no Python callbacks", audit["ok"], detail)

    requests = warmup_records(path)
    check("warmup records present", bool(requests), f"{len(requests)} in {WARMUP_FILE}")
    for request in requests:
        signature = request.model_spec.signature_name
        batch = next(iter(request.inputs.values())).tensor_shape.dim[0].size
        began = time.perf_counter()
        try:
            response = grpc_predict(model, predict_pb2.PredictRequest.FromString(request.SerializeToString()))
            sizes = {tf.make_ndarray(v).shape[0] for v in response.outputs.values()}
            check(f"warmup {signature} batch {batch}", sizes == {batch},
                  f"{time.perf_counter() - began:.1f} s")
        except Exception as error:
            check(f"warmup {signature} batch {batch}", False, str(error).splitlines()[0])

    prompts = (expected or {}).get("prompts", ["Hello, my name is", ""])
    try:
        row = rest_predict(model, {"instances": prompts})
        columnar = rest_predict(model, {"signature_name": "serving_default", "inputs": {"prompt": prompts}})
        texts_row = [p["text"] for p in row["predictions"]]
        check("REST row form (instances)", len(texts_row) == len(prompts))
        check("REST columnar form (inputs)", columnar["outputs"]["text"] == texts_row)
        if expected and "greedy_texts" in expected:
            same = texts_row == expected["greedy_texts"]
            check("greedy text equals the in-process engine", same,
                  "" if same else f"export {texts_row!r} vs engine {expected['greedy_texts']!r}")
    except Exception as error:
        check("REST request forms", False, str(error).splitlines()[0])
    if cache_dir is not None:
        after = xla_cache_entries(cache_dir)
        read_only = "--tf_xla_persistent_cache_read_only=true" in os.environ.get("TF_XLA_FLAGS", "").split()
        compiled = None if read_only else after - entries_before  # a read-only cache keeps no count
        report["xla_cache"] = {"directory": cache_dir, "entries_before": entries_before,
                               "entries_after": after, "compiled": compiled}
        log(f"  XLA cache {cache_dir}: {entries_before} executables found, "
            + ("read-only" if read_only else f"{compiled} compiled and added"))
    return report


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Validate a tfgen export as TF Serving would load it.")
    parser.add_argument("path")
    parser.add_argument("--expected", help="JSON file with prompts and the engine's greedy texts")
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--no-grappler", action="store_true",
                        help="load with Grappler off, so that a persistent XLA cache hits across processes")
    args = parser.parse_args(argv)
    expected = None
    if args.expected:
        with open(args.expected, encoding="utf-8") as handle:
            expected = json.load(handle)
    try:
        report = validate(args.path, expected, grappler=not args.no_grappler)
    except Exception as error:
        detail = str(error).splitlines()[0] if str(error) else repr(error)
        report = {"path": args.path, "ok": False,
                  "checks": [{"check": "load", "ok": False, "detail": detail}]}
        print(f"  [FAIL] load: {report['checks'][0]['detail']}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
