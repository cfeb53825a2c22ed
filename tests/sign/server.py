#!/usr/bin/env python3
"""An upstream that checks secretproxy's request signatures independently, for its tests.

SigV4 is recomputed with botocore (SigV4Auth, or S3SigV4Auth for service s3) over the request as
received: the raw path and query, the headers the Authorization header lists in SignedHeaders,
and the x-amz-date timestamp. A hashed payload is checked against the body received. HMAC
schemes are recomputed with Python's hmac, one endpoint per scheme:

  ANY /aws/<path>        SigV4 (service and region from the credential scope)
  ANY /binance/<path>    Binance: timestamp + signature query parameters, X-MBX-APIKEY
  ANY /coinbase/<path>   Coinbase Exchange: CB-ACCESS-* headers, base64 key and signature
  ANY /okx/<path>        OKX: OK-ACCESS-* headers, RFC 3339 timestamps, base64 signature
  ANY /b2b/<path>        a SHA-512 scheme: X-Signature over method, path, timestamp, body hash

Each answers 200 with JSON {"ok": true, "bytes", "sha256", ...} when the signature is right and
403 {"ok": false, "error"} when not. Chunked request bodies are read. Secrets come from the
environment (never argv): SIGV4_ACCESS_KEY_ID, SIGV4_SECRET, SIGV4_TOKEN (optional), HMAC_KEY,
HMAC_SECRET (base64 for coinbase), HMAC_PASSPHRASE. The first line on stdout is the port.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ENV = os.environ


def fresh(seconds):
    return abs(time.time() - seconds) < 120


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks), True
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(length) if length else b""), False

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        body, chunked = self.read_body()
        info = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "chunked": chunked}
        route = self.path.split("/")[1] if "/" in self.path else ""
        check = {
            "aws": self.check_sigv4,
            "binance": self.check_binance,
            "coinbase": self.check_coinbase,
            "okx": self.check_okx,
            "b2b": self.check_b2b,
        }.get(route)
        error = check(body, info) if check else "unknown scheme"
        if error:
            self.answer(403, {"ok": False, "error": error, **info})
        else:
            self.answer(200, {"ok": True, "target": self.path, **info})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

    # --- AWS SigV4, recomputed by botocore -------------------------------------------------
    def check_sigv4(self, body, info):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "no SigV4 Authorization header"
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        access_key, date, region, service, terminator = fields["Credential"].split("/")
        if access_key != ENV["SIGV4_ACCESS_KEY_ID"] or terminator != "aws4_request":
            return "unknown access key id"
        signed = fields["SignedHeaders"].split(";")
        for required in ("host", "x-amz-date", "x-amz-content-sha256"):
            if required not in signed:
                return f"{required} is not signed"
        amz_date = self.headers["x-amz-date"]
        if not amz_date.startswith(date):
            return "x-amz-date is not the credential date"
        stamp = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
        if not fresh(stamp):
            return "x-amz-date is stale"
        token = ENV.get("SIGV4_TOKEN")
        if token and (self.headers.get("x-amz-security-token") != token or "x-amz-security-token" not in signed):
            return "the session token is missing or unsigned"
        payload = self.headers["x-amz-content-sha256"]
        if payload == "UNSIGNED-PAYLOAD":
            if service != "s3":
                return "UNSIGNED-PAYLOAD on a service that needs the hash"
        elif payload != hashlib.sha256(body).hexdigest():
            return "x-amz-content-sha256 is not the body's hash"
        headers = {name: self.headers[name] for name in signed}
        request = AWSRequest(method=self.command, url=f"http://{self.headers['Host']}{self.path}", headers=headers, data=body)
        request.context["timestamp"] = amz_date
        credentials = Credentials(access_key, ENV["SIGV4_SECRET"], token)
        signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(credentials, service, region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        info["service"] = service
        info["payload"] = payload
        info["signed_headers"] = signed
        if not hmac.compare_digest(expected, fields["Signature"]):
            return "signature mismatch"
        return None

    # --- HMAC schemes ----------------------------------------------------------------------
    def check_binance(self, body, info):
        if self.headers.get("X-MBX-APIKEY") != ENV["HMAC_KEY"]:
            return "X-MBX-APIKEY missing"
        path, _, query = self.path.partition("?")
        signed, sep, signature = query.rpartition("&signature=")
        if not sep:
            return "no signature parameter (it must come last)"
        params = dict(parse_qsl(signed))
        if not fresh(int(params.get("timestamp", "0")) / 1000):
            return "timestamp missing or stale"
        expected = hmac.new(ENV["HMAC_SECRET"].encode(), signed.encode() + body, hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, signature) else "signature mismatch"

    def coinbase_like(self, prefix, key, timestamp_ok, body):
        if self.headers.get(f"{prefix}-KEY") != ENV["HMAC_KEY"] or self.headers.get(f"{prefix}-PASSPHRASE") != ENV["HMAC_PASSPHRASE"]:
            return "key or passphrase missing"
        timestamp = self.headers.get(f"{prefix}-TIMESTAMP", "")
        if not timestamp_ok(timestamp):
            return "timestamp missing or stale"
        message = (timestamp + self.command + self.path).encode() + body
        expected = base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()
        return None if hmac.compare_digest(expected, self.headers.get(f"{prefix}-SIGN", "")) else "signature mismatch"

    def check_coinbase(self, body, info):
        def ok(timestamp):
            return timestamp.isdigit() and fresh(int(timestamp))
        return self.coinbase_like("CB-ACCESS", base64.b64decode(ENV["HMAC_SECRET"]), ok, body)

    def check_okx(self, body, info):
        def ok(timestamp):
            try:
                parsed = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
            except ValueError:
                return False
            return len(timestamp) == 24 and fresh(parsed.timestamp())
        return self.coinbase_like("OK-ACCESS", ENV["HMAC_SECRET"].encode(), ok, body)

    def check_b2b(self, body, info):
        timestamp = self.headers.get("X-Timestamp", "")
        if not (timestamp.isdigit() and fresh(int(timestamp) / 1000)):
            return "timestamp missing or stale"
        path = self.path.partition("?")[0]
        message = f"{self.command}\n{path}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        expected = "v1=" + hmac.new(ENV["HMAC_SECRET"].encode(), message, hashlib.sha512).hexdigest()
        return None if hmac.compare_digest(expected, self.headers.get("X-Signature", "")) else "signature mismatch"


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
