"""A local TF Serving stand-in for the tests: an export's REST and gRPC predict APIs on localhost.

The export is loaded with TF Serving's session-based loader and requests are answered as TF
Serving answers them (`tfgen.export.serving_loader`), so the README's client examples can run
against an export without a TensorFlow Serving binary.
"""
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfgen.export.serving_loader import SessionModel, grpc_predict, rest_predict


def serve(path: str, name: str, rest_port: int = 8501, grpc_port: int = 8500, host: str = "127.0.0.1"):
    """Listen on localhost with TF Serving's REST and gRPC predict APIs. Returns (http, grpc) servers."""
    model = SessionModel(path)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            prefix = f"/v1/models/{name}"
            if not (self.path == prefix + ":predict" or self.path.startswith(prefix + "/versions/")):
                return self._reply(404, {"error": f"unknown path {self.path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with lock:
                    answer = rest_predict(model, body)
                self._reply(200, answer)
            except Exception as error:  # TF Serving answers errors as {"error": ...}
                self._reply(400, {"error": str(error).splitlines()[0] if str(error) else repr(error)})

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
                with lock:
                    return grpc_predict(model, request)
            except Exception as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error).splitlines()[0])

    http_server = ThreadingHTTPServer((host, rest_port), Handler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), grpc_server)
    grpc_server.add_insecure_port(f"{host}:{grpc_port}")
    grpc_server.start()
    return http_server, grpc_server
