"""A small OpenAI-compatible chat-completions server on loopback, shared by the build and judge tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    """A small OpenAI-compatible chat-completions server on loopback, answering with a real model.

    ``fail`` is a list of HTTP status codes returned to the first requests, in order.
    """

    def __init__(self, backend, fail=(), delay: float = 0.0):
        self.backend, self.fail, self.delay = backend, list(fail), delay
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    status = server.fail.pop(0) if server.fail else 200
                if status != 200:
                    payload = json.dumps({"error": {"message": f"scripted {status}"}}).encode()
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "0")
                else:
                    time.sleep(server.delay)
                    if self.path != "/v1/chat/completions":
                        self.send_response(404)
                        self.end_headers()
                        return
                    msgs = body["messages"]
                    system = next((m["content"] for m in msgs if m["role"] == "system"), None)
                    user = [m["content"] for m in msgs if m["role"] == "user"][-1]
                    with server.lock:  # one generation at a time on the CPU
                        out = server.backend.generate([user], system=system, max_new_tokens=body["max_tokens"])[0]
                    payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                          "choices": [{"index": 0, "finish_reason": out.finish_reason,
                                                       "message": {"role": "assistant", "content": out.text}}]}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # serve a model by hand: python -m tests.chatserver --model smollm2-135m --port 8765
    import argparse

    from safeedit.build.generators import LocalHFGenerator

    parser = argparse.ArgumentParser(description="OpenAI-compatible loopback server answering with a local model")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = ChatServer(LocalHFGenerator(args.model))
    server.httpd.server_close()
    server.httpd = ThreadingHTTPServer(("127.0.0.1", args.port), server.httpd.RequestHandlerClass)
    print(f"serving {args.model} at http://127.0.0.1:{args.port}/v1", flush=True)
    server.httpd.serve_forever()
