"""A local TF Serving stand-in for the tests: an export's REST and gRPC predict APIs on localhost.

The export is loaded with TF Serving's session-based loader and requests are answered as TF
Serving answers them (`tfgen.export.serving_loader`), so the README's client examples can run
against an export without a TensorFlow Serving binary. Requests run concurrently, as TF Serving
runs them (without its batcher): each is its own `Session.run` on the one loaded graph.

As a script it serves until killed, in a process of its own (the soak measures its memory):

    python tests/serving_server.py saved_models/tiny/1 tiny --rest-port 0 --grpc-port 0
    # prints "serving REST_PORT GRPC_PORT" once both front ends listen
"""
import argparse
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfgen.export.serving_loader import SessionModel, grpc_predict, rest_predict


def serve(path: str, name: str, rest_port: int = 8501, grpc_port: int = 8500, host: str = "127.0.0.1"):
    """Listen on localhost with TF Serving's REST and gRPC predict APIs. Returns (http, grpc) servers."""
    model = SessionModel(path)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            prefix = f"/v1/models/{name}"
            if not (self.path == prefix + ":predict" or self.path.startswith(prefix + "/versions/")):
                return self._reply(404, {"error": f"unknown path {self.path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                answer = rest_predict(model, body)
                self._reply(200, answer)
            except Exception as error:  # TF Serving answers errors as {"error": ...}
                self._reply(400, {"error": _first_line(error)})

        def _reply(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
            try:
                return grpc_predict(model, request)
            except Exception as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _first_line(error))

    http_server = ThreadingHTTPServer((host, rest_port), Handler)
    http_server.daemon_threads = True
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), grpc_server)
    # Port 0 picks a free port; both bound ports are kept on the servers for the caller.
    grpc_server.port = grpc_server.add_insecure_port(f"{host}:{grpc_port}")
    http_server.port = http_server.server_address[1]
    grpc_server.start()
    return http_server, grpc_server


def _first_line(error: Exception) -> str:
    """The error as TF Serving states it: the op's own message (say "assertion failed: [top_p must
    be > 0 and <= 1]"), without what TensorFlow's Python session adds around it: a "Graph
    execution error:" header, the "Detected at node" stack, the [[{{node ...}}]] line after it."""
    text = getattr(error, "message", None) or str(error)
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("Graph execution error"):
        lines = [line for line in lines[1:]
                 if not line[0].isspace() and not line.startswith("Detected at node")]
    return lines[0].strip() if lines else repr(error)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serve an export's REST and gRPC predict APIs on localhost.")
    parser.add_argument("path", help="the version directory, e.g. saved_models/tiny/1")
    parser.add_argument("name", help="the model name in the REST path /v1/models/NAME:predict")
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--grpc-port", type=int, default=8500)
    args = parser.parse_args(argv)
    http_server, grpc_server = serve(args.path, args.name, args.rest_port, args.grpc_port)
    print(f"serving {http_server.port} {grpc_server.port}", flush=True)
    grpc_server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
