"""SavedModel export: layout, fresh-process loading, signatures against the engine, serving request forms."""
import json
import os
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

import tfgen
from tfgen.decoding.params import left_pad
from tfgen.export import ExportError, serving_files

MAX_PROMPT = 16
MAX_NEW = 8
EXPORT_ARGS = dict(max_prompt_tokens=MAX_PROMPT, max_new_tokens=MAX_NEW, num_beams=2, num_return_sequences=2,
                   batch_buckets=(1, 4), prompt_buckets=(MAX_PROMPT,),
                   strategies="greedy,sample,beam,stop,logprobs")
EXPORT_LOG = []  # what the module's export printed on stderr


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    import contextlib
    import io

    root = tmp_path_factory.mktemp("saved_models")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        version_dir = tfgen.export_saved_model(tiny, str(root / "tiny"), progress=True, **EXPORT_ARGS)
    EXPORT_LOG.append(stderr.getvalue())
    return version_dir


@pytest.fixture(scope="module")
def served(exported):
    """The export loaded as TF Serving loads it (session-based loader), in this process."""
    from tfgen.export.serving_loader import SessionModel

    return SessionModel(exported)


def _texts(values):
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in np.asarray(values).reshape(-1).tolist()]


def test_layout_and_operator_files(exported):
    model_dir = os.path.dirname(exported)
    assert os.path.basename(exported) == "1"
    assert os.path.isfile(os.path.join(exported, "saved_model.pb"))
    assert os.path.isfile(os.path.join(exported, serving_files.WARMUP_FILE))
    assert sorted(n for n in os.listdir(model_dir) if not n.isdigit()) == [
        "batching_parameters.txt", "models.config", "serve.sh"]
    batching = open(os.path.join(model_dir, "batching_parameters.txt")).read()
    assert [int(line.split(":")[1]) for line in batching.splitlines()
            if line.startswith("allowed_batch_sizes")] == [1, 4]
    assert "max_batch_size { value: 4 }" in batching
    config = open(os.path.join(model_dir, "models.config")).read()
    assert 'name: "tiny"' in config and os.path.abspath(model_dir) in config
    serve = open(os.path.join(model_dir, "serve.sh")).read()
    for flag in ("--xla_cpu_compilation_enabled=true", "--enable_batching=true", "--model_config_file=",
                 "--batching_parameters_file=", "--rest_api_port=8501"):
        assert flag in serve


def test_progress_bar_and_step_lines(exported):
    log = EXPORT_LOG[0]
    for step in ("[1/4] tracing", "[2/4] saving", "[3/4] validating", "[4/4] moving", "exported "):
        assert step in log
    assert "[ok] warmup serving_default batch 4" in log  # the validator's checks, forwarded line by line
    # tqdm's bar: "export tiny: 100%|...| n/n" once every step is done.
    final = [part for part in log.replace("\r", "\n").splitlines() if part.startswith("export tiny:")][-1]
    done, total = final.split("|")[2].split()[0].split("/")
    assert "100%" in final and done == total and int(total) >= 4 + 2 + 1


def test_metadata_file_states_the_limits(exported, tiny):
    with open(os.path.join(exported, serving_files.METADATA_FILE), encoding="utf-8") as handle:
        metadata = json.load(handle)
    assert metadata["model"] == tiny.name and metadata["random_weights"] is True
    assert sorted(metadata["signatures"]) == [
        "beam", "generate", "generate_ids", "generate_logprobs", "generate_stop", "serving_default"]
    assert "8 stop strings" in metadata["stop"]["checked_in_loop"]
    assert (metadata["max_prompt_tokens"], metadata["max_new_tokens"]) == (MAX_PROMPT, MAX_NEW)
    assert metadata["batch_buckets"] == [1, 4] and metadata["prompt_buckets"] == [MAX_PROMPT]
    assert metadata["beam"] == {"num_beams": 2, "num_return_sequences": 2}
    assert metadata["special_token_ids"]["eos"] == tiny.model.config.eos_token_id
    assert "left-truncated" in metadata["prompt_policy"]


def test_warmup_records_cover_every_signature_and_bucket(exported):
    from tfgen.export.serving_loader import warmup_records

    seen = {(r.model_spec.signature_name, r.inputs[next(iter(r.inputs))].tensor_shape.dim[0].size)
            for r in warmup_records(exported)}
    signatures = ("serving_default", "generate", "generate_ids", "beam", "generate_stop", "generate_logprobs")
    assert seen == {(s, b) for s in signatures for b in (1, 4)}


def test_only_core_and_tensorflow_text_ops(served):
    from tfgen.export.serving_loader import audit_ops

    audit = audit_ops(served)
    assert audit["ok"], audit
    assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & set(audit["ops"])
    assert set(audit["tensorflow_text_ops"]) <= {"RegexSplitWithOffsets"}


def test_greedy_text_equals_engine(served, tiny):
    prompts = ["The theory of relativity is", "Hello, my name is", "", "Grüße aus Köln — 東京 🙂"]
    out = served.run("serving_default", {"prompt": np.array([p.encode() for p in prompts], dtype=object)})
    expected = tiny.generate(prompts, max_new_tokens=MAX_NEW)
    assert _texts(out["text"]) == expected
    completions = tiny.generate(prompts, max_new_tokens=MAX_NEW, return_full_text=False)
    assert _texts(out["completion"]) == completions
    ids = [tiny.tokenize(p) or [50256] for p in prompts]
    lengths = [tiny.generate_ids([i], max_new_tokens=MAX_NEW).num_generated[0] for i in ids]
    assert out["num_tokens"].tolist() == lengths


def test_long_prompts_are_left_truncated(served, tiny):
    prompt = " ".join(["word"] * 40)
    ids = tiny.tokenize(prompt)
    assert len(ids) > MAX_PROMPT
    out = served.run("serving_default", {"prompt": np.array([prompt.encode()], dtype=object)})
    kept = tiny.generate_ids([ids[-MAX_PROMPT:]], max_new_tokens=MAX_NEW)
    new = kept.sequences[0, MAX_PROMPT:MAX_PROMPT + kept.num_generated[0]]
    assert _texts(out["completion"]) == [tiny.decode([t for t in new if t != 50256])]
    assert _texts(out["text"]) == [prompt + tiny.decode([t for t in new if t != 50256])]


def _row_params(inputs, row):
    """The Python API's keyword arguments for row `row` of a `generate`-style request."""
    params = dict(max_new_tokens=int(inputs["max_new_tokens"][row]))
    if inputs["do_sample"][row]:
        params.update(do_sample=True, temperature=float(inputs["temperature"][row]),
                      top_k=int(inputs["top_k"][row]), top_p=float(inputs["top_p"][row]),
                      repetition_penalty=float(inputs["repetition_penalty"][row]),
                      seed=int(inputs["seed"][row]))
    return params


def test_generate_signature_mixed_rows(served, tiny):
    prompts = ["The theory of relativity is", "Once upon a time", "The theory of relativity is", "Hi"]
    inputs = dict(
        prompt=np.array([p.encode() for p in prompts], dtype=object),
        max_new_tokens=np.array([8, 3, 8, 5], np.int32),
        do_sample=np.array([False, True, True, True]),
        temperature=np.array([1.0, 0.7, 1.3, 1.0], np.float32),
        top_k=np.array([0, 20, 0, 5], np.int32),
        top_p=np.array([1.0, 0.9, 1.0, 0.8], np.float32),
        repetition_penalty=np.array([1.0, 1.0, 1.2, 1.0], np.float32),
        seed=np.array([0, 11, 12, 13], np.int64),
    )
    out = served.run("generate", inputs)
    for row, prompt in enumerate(prompts):
        params = _row_params(inputs, row)
        alone = tiny.generate(prompt, **params)
        assert _texts(out["text"])[row] == alone, (row, params)
        assert out["num_tokens"][row] <= inputs["max_new_tokens"][row]


def _find_cut(text, stops):
    """Independent reference: the text before the earliest occurrence of any non-empty stop string."""
    positions = [text.find(s) for s in stops if s and s in text]
    return text[:min(positions)] if positions else text


def test_generate_stop_signature_cuts_and_ends_rows(served, tiny):
    prompts = ["The theory of relativity is", "Once upon a time", "Hello", "Hi"]
    # Stop strings taken from each row's own unstopped greedy continuation, so they do occur.
    full = tiny.generate(prompts, max_new_tokens=MAX_NEW, return_full_text=False)
    stop = [[full[0][3:6], ""], [full[1][-2:], "never-there"], ["", ""], ["x" * 40, full[3][:2]]]
    batch = len(prompts)
    inputs = dict(
        prompt=np.array([p.encode() for p in prompts], dtype=object),
        max_new_tokens=np.full([batch], MAX_NEW, np.int32), do_sample=np.zeros([batch], bool),
        temperature=np.ones([batch], np.float32), top_k=np.zeros([batch], np.int32),
        top_p=np.ones([batch], np.float32), repetition_penalty=np.ones([batch], np.float32),
        seed=np.zeros([batch], np.int64),
        stop=np.array([[s.encode() for s in row] for row in stop], dtype=object),
    )
    out = served.run("generate_stop", inputs)
    completions = _texts(out["completion"])
    for row, prompt in enumerate(prompts):
        assert completions[row] == _find_cut(full[row], stop[row]), row
        assert _texts(out["text"])[row] == prompt + completions[row]
        # The row ended inside the loop exactly where the Python API ends it.
        api = tiny.generate_ids([tiny.tokenize(prompt)], max_new_tokens=MAX_NEW,
                                stop=[s for s in stop[row] if s])
        assert out["num_tokens"][row] == api.num_generated[0], row
    assert out["num_tokens"][0] < MAX_NEW  # "ended early" is visible in the counts


def test_generate_logprobs_signature_equals_the_python_api(served, tiny):
    """Per-token log-probabilities and alternatives as `generate_ids(..., logprobs=K)` returns them
    for the same rows (checked against a full forward pass in tests/test_logprobs.py)."""
    prompts = ["The theory of relativity is", "Once upon a time", "Hi"]
    logprobs = [3, 0, 5]
    inputs = dict(
        prompt=np.array([p.encode() for p in prompts], dtype=object),
        max_new_tokens=np.array([MAX_NEW, 3, 5], np.int32), do_sample=np.array([False, True, True]),
        temperature=np.array([1.0, 0.7, 1.2], np.float32), top_k=np.array([0, 20, 0], np.int32),
        top_p=np.array([1.0, 1.0, 0.9], np.float32), repetition_penalty=np.array([1.0, 1.2, 1.0], np.float32),
        seed=np.array([0, 11, 12], np.int64), logprobs=np.array(logprobs, np.int32))
    out = served.run("generate_logprobs", inputs)
    width = max(logprobs)
    assert out["top_ids"].shape[2] == width and out["token_ids"].shape[1] == out["num_tokens"].max()
    for row, prompt in enumerate(prompts):
        params = _row_params(inputs, row)
        api = tiny.generate_ids([tiny.tokenize(prompt)], logprobs=width, **params)
        count = int(api.num_generated[0])
        assert out["num_tokens"][row] == count
        new = api.sequences[0, -api.scores.shape[1]:][:count]
        np.testing.assert_array_equal(out["token_ids"][row, :count], new)
        assert (out["token_ids"][row, count:] == -1).all()
        np.testing.assert_allclose(out["token_logprobs"][row, :count], api.scores[0, :count], atol=1e-5)
        k = logprobs[row]
        np.testing.assert_array_equal(out["top_ids"][row, :count, :k], api.top_ids[0, :count, :k])
        np.testing.assert_allclose(out["top_logprobs"][row, :count, :k], api.top_logprobs[0, :count, :k],
                                   atol=1e-5)
        assert (out["top_ids"][row, :, k:] == -1).all() and (out["top_ids"][row, count:] == -1).all()
        texts = [t.decode() for t in out["token_texts"][row, :count]]
        assert texts == [tiny.decode([t]) for t in new]


def test_generate_logprobs_rejects_bad_counts(served):
    inputs = dict(prompt=np.array([b"Hi"], dtype=object), max_new_tokens=np.array([2], np.int32),
                  do_sample=np.array([False]), temperature=np.ones([1], np.float32),
                  top_k=np.zeros([1], np.int32), top_p=np.ones([1], np.float32),
                  repetition_penalty=np.ones([1], np.float32), seed=np.zeros([1], np.int64))
    for bad, message in (([21], "logprobs: must be <= 20"), ([-1], "logprobs: must be >= 0"),
                         ([1, 2], "logprobs: one value per prompt")):
        with pytest.raises(Exception, match=message):
            served.run("generate_logprobs", dict(inputs, logprobs=np.array(bad, np.int32)))


def test_generate_stop_in_rest_row_form(served, tiny):
    from tfgen.export.serving_loader import rest_predict

    full = tiny.generate("Once upon a time", max_new_tokens=MAX_NEW, return_full_text=False)
    row = {"prompt": "Once upon a time", "max_new_tokens": MAX_NEW, "do_sample": False, "temperature": 1.0,
           "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "seed": 0, "stop": [full[2:4], "\n\n"]}
    answer = rest_predict(served, {"signature_name": "generate_stop",
                                   "instances": [row, dict(row, stop=["", ""])]})
    completions = [p["completion"] for p in answer["predictions"]]
    assert completions == [_find_cut(full, row["stop"]), full]


def test_generate_signature_rejects_bad_parameters(served):
    inputs = dict(
        prompt=np.array([b"Hi"], dtype=object), max_new_tokens=np.array([4], np.int32),
        do_sample=np.array([True]), temperature=np.array([0.0], np.float32), top_k=np.array([0], np.int32),
        top_p=np.array([1.0], np.float32), repetition_penalty=np.array([1.0], np.float32),
        seed=np.array([1], np.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature"):
        served.run("generate", inputs)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_new_tokens"):
        served.run("generate", dict(inputs, temperature=np.array([1.0], np.float32),
                                    max_new_tokens=np.array([MAX_NEW + 1], np.int32)))
    # generate_stop: the same checks, and one row of stop strings per prompt.
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature"):
        served.run("generate_stop", dict(inputs, stop=np.array([[b"."]], dtype=object)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="stop: one row of stop strings per prompt"):
        served.run("generate_stop", dict(inputs, temperature=np.array([1.0], np.float32),
                                         stop=np.array([[b"."], [b"!"]], dtype=object)))


def test_beam_signature_matches_engine(served, tiny):
    prompts = ["The theory of relativity is", "Hello"]
    out = served.run("beam", {"prompt": np.array([p.encode() for p in prompts], dtype=object)})
    assert out["text"].shape == (2, 2) and out["scores"].shape == (2, 2)
    expected = tiny.generate(prompts, max_new_tokens=MAX_NEW, num_beams=2, num_return_sequences=2)
    assert _texts(out["text"]) == expected
    ids, mask = left_pad([tiny.tokenize(p) for p in prompts], tiny.lm.pad_token_id)
    scores = tiny.generate_ids(ids, mask, max_new_tokens=MAX_NEW, num_beams=2, num_return_sequences=2).scores
    np.testing.assert_allclose(out["scores"].reshape(-1), scores, rtol=1e-4)


def test_each_program_is_one_stablehlo_module_per_bucket(exported):
    """The signatures call the engine's programs as StableHLO (XlaCallModule), one module per
    program and bucket; the decoding loop itself is not in the graph as TensorFlow ops (its
    in-place cache writes, XlaDynamicUpdateSlice, would be)."""
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(exported, "saved_model.pb"), "rb") as handle:
        graph = saved_model_pb2.SavedModel.FromString(handle.read()).meta_graphs[0].graph_def
    nodes = [node for function in graph.library.function for node in function.node_def]
    modules = {node.attr["module"].s for node in nodes if node.op == "XlaCallModule"}
    # greedy/sample/generate_ids share one program; stop, logprobs and beam have their own
    assert len(modules) == 4 * len(EXPORT_ARGS["batch_buckets"]) * len(EXPORT_ARGS["prompt_buckets"])
    assert "XlaDynamicUpdateSlice" not in {node.op for node in nodes}


def test_batch_past_the_largest_bucket_runs_in_chunks(served, tiny):
    """Buckets (1, 4): 9 prompts are padded to 12 and run as three batches of 4, with the same
    text as the engine; beam search (5 prompts: two chunks) too."""
    prompts = [f"Prompt number {i} says" for i in range(9)]
    out = served.run("serving_default", {"prompt": np.array([p.encode() for p in prompts], dtype=object)})
    assert _texts(out["text"]) == tiny.generate(prompts, max_new_tokens=MAX_NEW)
    out = served.run("beam", {"prompt": np.array([p.encode() for p in prompts[:5]], dtype=object)})
    assert out["text"].shape == (5, 2)
    assert _texts(out["text"]) == tiny.generate(prompts[:5], max_new_tokens=MAX_NEW, num_beams=2,
                                                num_return_sequences=2)


def test_generate_ids_signature(served, tiny):
    ids, mask = left_pad([tiny.tokenize("The theory of relativity is"), tiny.tokenize("Hi there")],
                         tiny.lm.pad_token_id)
    out = served.run("generate_ids", {"input_ids": ids, "attention_mask": mask})
    ref = tiny.generate_ids(ids, mask, max_new_tokens=MAX_NEW)
    width = ref.sequences.shape[1]
    np.testing.assert_array_equal(out["sequences"][:, :width], ref.sequences)
    np.testing.assert_array_equal(out["num_tokens"], ref.num_generated)


def test_fresh_process_tf_saved_model_load_and_saved_model_cli(exported, tiny):
    code = (
        "import sys, tensorflow as tf, tensorflow_text\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "out = m.signatures['serving_default'](prompt=tf.constant(['The theory of relativity is']))\n"
        "print(out['text'].numpy()[0].decode())\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code, exported], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == tiny.generate("The theory of relativity is",
                                                                   max_new_tokens=MAX_NEW)
    # saved_model_cli, with the tensorflow-text ops registered as TF Serving links them.
    cli = ("import sys, tensorflow_text\nfrom tensorflow.python.tools import saved_model_cli\n"
           "sys.argv = ['saved_model_cli'] + sys.argv[1:]\nsaved_model_cli.main()\n")
    result = subprocess.run(
        [sys.executable, "-c", cli, "run", "--dir", exported, "--tag_set", "serve", "--signature_def",
         "serving_default", "--input_exprs", "prompt=[b'Hello']"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hello" in result.stdout and "num_tokens" in result.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rest_and_grpc_clients_against_local_server(exported, tiny):
    """The README's client examples, against the emulator listening on localhost."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving_server import serve

    rest_port, grpc_port = _free_port(), _free_port()
    http_server, grpc_server = serve(exported, "tiny", rest_port=rest_port, grpc_port=grpc_port)
    try:
        def post(body):
            request = urllib.request.Request(f"http://127.0.0.1:{rest_port}/v1/models/tiny:predict",
                                             data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())

        expected = tiny.generate("The theory of relativity is", max_new_tokens=MAX_NEW)
        rows = post({"instances": ["The theory of relativity is"]})
        assert rows["predictions"][0]["text"] == expected
        columns = post({"signature_name": "serving_default",
                        "inputs": {"prompt": ["The theory of relativity is"]}})
        assert columns["outputs"]["text"] == [expected]
        sampled = post({"signature_name": "generate", "instances": [
            {"prompt": "The theory of relativity is", "max_new_tokens": 5, "do_sample": True,
             "temperature": 0.8, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.0, "seed": 7}]})
        assert sampled["predictions"][0]["text"] == tiny.generate(
            "The theory of relativity is", max_new_tokens=5, do_sample=True, temperature=0.8, top_k=40,
            top_p=0.95, seed=7)

        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tiny"
        request.model_spec.signature_name = "serving_default"
        request.inputs["prompt"].CopyFrom(tf.make_tensor_proto(["The theory of relativity is"]))
        response = stub.Predict(request, timeout=120)
        assert tf.make_ndarray(response.outputs["text"])[0].decode() == expected
        channel.close()
    finally:
        http_server.shutdown()
        grpc_server.stop(0)


def test_existing_version_is_not_overwritten(exported, tiny):
    model_dir = os.path.dirname(exported)
    with pytest.raises(ValueError, match="already exists"):
        tfgen.export_saved_model(tiny, model_dir, version=1, **EXPORT_ARGS)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_prompt_tokens=1000, max_new_tokens=100), "context"),
    (dict(strategies="greedy,nucleus"), "strategies"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
])
def test_bad_export_arguments(tiny, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfgen.export_saved_model(tiny, str(tmp_path / "m"), progress=False, **kwargs)
    assert not (tmp_path / "m").exists()


def test_interrupted_export_leaves_nothing(tiny, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from tfgen.export.module import GenerationModule

    monkeypatch.setattr(GenerationModule, "signatures", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tfgen.export_saved_model(tiny, str(tmp_path / "m"), strategies="greedy", max_prompt_tokens=8,
                                 max_new_tokens=4, batch_buckets=(1,), progress=False)
    assert not (tmp_path / "m").exists()


def test_failed_validation_leaves_nothing(tiny, tmp_path, monkeypatch):
    import tfgen.export.exporter as export

    monkeypatch.setattr(export, "run_validation", lambda *a, **k: {
        "ok": False, "checks": [{"check": "greedy text", "ok": False, "detail": "differs"}]})
    (tmp_path / "m").mkdir()
    with pytest.raises(ExportError, match="greedy text"):
        tfgen.export_saved_model(tiny, str(tmp_path / "m"), strategies="greedy", max_prompt_tokens=8,
                                 max_new_tokens=4, batch_buckets=(1,), progress=False)
    assert not (tmp_path / "m").exists() or os.listdir(tmp_path / "m") == []


def test_cli_validate_reports_ok(exported, capsys):
    from tfgen.cli import main

    assert main(["validate", exported, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ok"] and any(c["check"].startswith("warmup beam") for c in report["checks"])


def test_cli_export_writes_next_version(tmp_path, capsys):
    from tfgen.cli import main

    args = ["export", "random:tiny", "--name", "cli", "--out", str(tmp_path), "--strategies", "greedy",
            "--max-prompt-tokens", "8", "--max-new-tokens", "4", "--batch-buckets", "1", "--no-validate",
            "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[1/4] tracing" in captured.err  # progress on stderr by default
    first = json.loads(captured.out.strip().splitlines()[-1])
    assert first["path"] == os.path.join(str(tmp_path), "cli", "1")
    assert "--xla_cpu_compilation_enabled=true" in first["serve"]
    assert main(args + ["--no-progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["path"].endswith(os.path.join("cli", "2"))
    assert "[1/4]" not in captured.err and "export cli" not in captured.err
    assert main(args[:-2] + ["--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_graph_module_inside_the_callers_own_tf_function(tiny):
    module = tiny.graph_module(max_prompt_tokens=MAX_PROMPT, max_new_tokens=MAX_NEW, batch_buckets=(1, 4),
                               prompt_buckets=(MAX_PROMPT,))
    prompts = ["The theory of relativity is", "Hello, my name is", ""]

    @tf.function
    def complete(batch):
        return module.greedy_text(batch)["text"]

    assert _texts(complete(tf.constant(prompts))) == tiny.generate(prompts, max_new_tokens=MAX_NEW)
    mapped = tf.data.Dataset.from_tensor_slices(prompts[:2]).batch(2).map(
        lambda batch: module.greedy_text(batch)["completion"])
    expected = tiny.generate(prompts[:2], max_new_tokens=MAX_NEW, return_full_text=False)
    assert _texts(next(iter(mapped))) == expected
    # Per-row parameters: row 0 greedy with 2 tokens, row 1 sampled with 5.
    out = tf.function(module.generate_text)(
        tf.constant(prompts[:2]), max_new_tokens=tf.constant([2, 5]), do_sample=tf.constant([False, True]),
        temperature=tf.constant([1.0, 0.7]), top_k=tf.constant([0, 20]), top_p=tf.constant([1.0, 0.9]),
        repetition_penalty=tf.constant([1.0, 1.0]), seed=tf.constant([0, 3], tf.int64))
    assert _texts(out["completion"])[0] == tiny.generate(prompts[0], max_new_tokens=2, return_full_text=False)
    assert out["num_tokens"].numpy().tolist()[1] <= 5
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny.graph_module(max_new_tokens=0)
