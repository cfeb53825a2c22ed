#!/usr/bin/env python3
"""An OAuth2 authorization server and protected API for secretproxy's tests, built on Authlib.

The token endpoint is Authlib's own client-credentials grant (client authentication, form
parsing, token responses and errors are the library's, not ours); the API under /api/ is guarded
by Authlib's ResourceProtector with a bearer validator, so an expired or revoked token gets the
library's 401. Test-only endpoints count what happened:

  POST /token              client_credentials (client_secret_basic, or _post with --auth post)
  ANY  /api/echo           200 with the Authorization header it got, to test scrubbing
  ANY  /api/<path>         200 with the method, path and request body
  ANY  /always401/<path>   401 for every request (a token that is never good enough)
  POST /admin/revoke       revokes every token issued so far
  GET  /stats              {"mints", "tokens", "refused_clients", "api_ok", "api_401", "last_form"}

Usage: server.py --client-id ID [--expires-in SECONDS] [--auth basic|post] [--port N]
The client secret comes from $OAUTH2_CLIENT_SECRET (never argv). The first line printed on stdout
is the port.
"""

import argparse
import os
import sys
import threading
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

LOCK = threading.Lock()
STATS = {"mints": 0, "tokens": [], "refused_clients": 0, "api_ok": 0, "api_401": 0, "last_form": {}}
TOKENS = {}


class Client(ClientMixin):
    def __init__(self, client_id, client_secret, auth_method):
        self.client_id = client_id
        self.client_secret = client_secret
        self.auth_method = auth_method

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        ok = client_secret == self.client_secret
        if not ok:
            with LOCK:
                STATS["refused_clients"] += 1
        return ok

    def check_endpoint_auth_method(self, method, endpoint):
        return method == self.auth_method

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"


class Token(TokenMixin):
    def __init__(self, client_id, scope, expires_in):
        self.client_id = client_id
        self.scope = scope
        self.expires_in = expires_in
        self.issued_at = time.time()
        self.revoked = False

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self):
        return self.revoked


class ClientCredentials(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class Validator(BearerTokenValidator):
    def authenticate_token(self, token_string):
        with LOCK:
            return TOKENS.get(token_string)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--expires-in", type=int, default=3600)
    parser.add_argument("--auth", choices=["basic", "post"], default="basic")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mint-delay-ms", type=int, default=0)
    args = parser.parse_args()
    client = Client(args.client_id, os.environ["OAUTH2_CLIENT_SECRET"], f"client_secret_{args.auth}")

    app = Flask(__name__)
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": args.expires_in}

    def query_client(client_id):
        return client if client_id == client.client_id else None

    def save_token(token, req):
        with LOCK:
            STATS["mints"] += 1
            STATS["tokens"].append(token["access_token"])
            TOKENS[token["access_token"]] = Token(client.client_id, token.get("scope", ""), token["expires_in"])

    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_grant(ClientCredentials)
    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(Validator())

    @app.post("/token")
    def token():
        with LOCK:
            STATS["last_form"] = {k: v for k, v in request.form.items() if k != "client_secret"}
        if args.mint_delay_ms:
            time.sleep(args.mint_delay_ms / 1000)
        return server.create_token_response()

    def guarded(view):
        protected = require_oauth()(view)

        def wrapper(*a, **kw):
            try:
                response = app.make_response(protected(*a, **kw))
            except Exception:
                # Authlib refuses a missing, expired or revoked token by raising its 401.
                with LOCK:
                    STATS["api_401"] += 1
                raise
            with LOCK:
                STATS["api_ok"] += 1
            return response

        wrapper.__name__ = view.__name__
        return wrapper

    @app.route("/api/echo", methods=["GET", "POST"])
    @guarded
    def echo():
        return jsonify(authorization=request.headers.get("Authorization", ""))

    @app.route("/api/<path:path>", methods=["GET", "POST", "PUT", "DELETE"])
    @guarded
    def api(path):
        return jsonify(ok=True, method=request.method, path=path, body=request.get_data(as_text=True))

    @app.route("/always401/<path:path>", methods=["GET", "POST"])
    def always401(path):
        with LOCK:
            STATS["api_401"] += 1
        return jsonify(error="invalid_token"), 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}

    @app.post("/admin/revoke")
    def revoke():
        with LOCK:
            for issued in TOKENS.values():
                issued.revoked = True
        return jsonify(revoked=len(TOKENS))

    @app.get("/stats")
    def stats():
        with LOCK:
            return jsonify(STATS)

    http = make_server("127.0.0.1", args.port, app, threaded=True)
    print(http.port, flush=True)
    sys.stdout.close()
    http.serve_forever()


if __name__ == "__main__":
    main()
