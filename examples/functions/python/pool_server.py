#!/usr/bin/env python3
"""A warm HTTP endpoint for the `pool` dispatcher: POST {"input": ..., "metadata": ...}.

Answers {"reversed": <the input text reversed>, "executionId": <X-Execution-Id>}.
Usage: python3 examples/functions/python/pool_server.py [port]   (default 9090)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response (headers and body buffered, flushed after the handler) and no
    # Nagle: otherwise the body waits for the client's delayed ACK of the headers, ~40 ms per
    # call on a kept-alive connection.
    wbufsize = -1
    disable_nagle_algorithm = True

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        data = request.get("input")
        text = data["text"] if isinstance(data, dict) else str(data)
        body = json.dumps({"reversed": text[::-1], "executionId": self.headers.get("x-execution-id")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 9090
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"pool endpoint listening on http://127.0.0.1:{port}", flush=True)
server.serve_forever()
