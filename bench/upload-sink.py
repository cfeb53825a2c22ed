#!/usr/bin/env python3
"""Upstream for `bench/run.sh --upload`: reads each request body to the end, throws it away,
and answers {"received": N}. Supports Content-Length and chunked bodies. Answers 401 when the
Authorization header is not the expected one, so the bench also proves the proxy injected it.

usage: upload-sink.py PORT TOKEN      (listens on 127.0.0.1 only)
"""
import http.server
import json
import sys

PORT = int(sys.argv[1])
EXPECTED = "Bearer " + sys.argv[2]
CHUNK = 1 << 20


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep quiet
        pass

    def _reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drain(self, remaining):
        n = 0
        while remaining > 0:
            data = self.rfile.read(min(remaining, CHUNK))
            if not data:
                raise ConnectionError("body ended early")
            n += len(data)
            remaining -= len(data)
        return n

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            n = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return n
                n += self._drain(size)
                self.rfile.readline()  # CRLF after the chunk
        return self._drain(int(self.headers.get("Content-Length", "0") or 0))

    def _handle(self):
        received = self._read_body()
        if self.headers.get("Authorization") != EXPECTED:
            self._reply(401, {"error": "missing or wrong Authorization", "received": received})
        else:
            self._reply(200, {"ok": True, "received": received})

    do_GET = do_POST = do_PUT = _handle


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Sink).serve_forever()
