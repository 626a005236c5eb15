"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1, for tests.

`FakeOpenAI(reply)` serves `POST /v1/chat/completions`; `reply(request_json)` returns the
assistant text, or (text, finish_reason). `fail_first=[429, 503]` answers the first requests with those statuses.
Every request is recorded in `.requests`. Use as a context manager: the server stops on exit.
"""

import http.server
import json
import threading
import time
from typing import Callable, Sequence


class FakeOpenAI:

  def __init__(self, reply: Callable[[dict], str], fail_first: Sequence[int] = (),
               retry_after: str | None = None, delay_s: float = 0.0):
    self.reply = reply
    self.fail_first = list(fail_first)
    self.retry_after = retry_after
    self.delay_s = delay_s
    self.requests: list[dict] = []
    self.headers: list[dict] = []
    self.max_in_flight = 0
    self.in_flight = 0  # requests being handled now (the handler updates it)
    self.lock = threading.Lock()  # guards the fields the handler threads update
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
          server.requests.append(body)
          server.headers.append(dict(self.headers))
          status = server.fail_first.pop(0) if server.fail_first else 200
          server.in_flight += 1
          server.max_in_flight = max(server.max_in_flight, server.in_flight)
        # A request stops counting as in flight before its response is written: the client can
        # send its next request as soon as it reads the response, possibly before a `finally`
        # here would run, which made the count one too high now and then.
        time.sleep(server.delay_s)
        with server.lock:
          server.in_flight -= 1
        if self.path != "/v1/chat/completions":
          return self._send(404, {"error": {"message": f"no route {self.path}"}})
        if status != 200:
          return self._send(status, {"error": {"message": "scripted failure"}})
        content = server.reply(body)
        content, finish = content if isinstance(content, tuple) else (content, "stop")
        self._send(200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                         "model": body.get("model"), "choices": [{
                             "index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": content}}]})

      def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429 and server.retry_after is not None:
          self.send_header("Retry-After", server.retry_after)
        self.end_headers()
        self.wfile.write(data)

      def log_message(self, *args):
        del args  # Keep test output quiet.

    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._httpd.daemon_threads = True
    self.api_base = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join(timeout=5)
