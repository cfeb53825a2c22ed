"""Both ends of the WebSocket tests (tests/it/websocket.rs), on the real `websockets` library.

`peer.py serve --key KEY` is the upstream: a WebSocket server on 127.0.0.1:0 that prints its
port, then one JSON line per event (`connect`, `refused`, `closed`) on stdout. It accepts a
handshake only when it carries `X-Api-Key: KEY` and `?key=KEY` (what the proxy injects), else
answers 401. Paths: `/echo` echoes every message; the text `leak` gets the key back in a text and
a binary message; `close:CODE` makes the server close with CODE and a reason quoting the key;
`/silent` sends nothing and waits for the close. With `--tls-cert/--tls-key` it serves `wss`.

`peer.py client SCENARIO URL [--origin O] [--bearer KEY]` is the client: it talks to the proxy and
prints one JSON object with what it saw.
"""

import argparse
import json
import sys


def emit(**event):
    print(json.dumps(event), flush=True)


async def serve(key, cert=None, private_key=None):
    import asyncio
    from http import HTTPStatus
    from urllib.parse import parse_qs, urlsplit

    from websockets.asyncio.server import serve as ws_serve

    def check(connection, request):
        query = parse_qs(urlsplit(request.path).query)
        header_ok = request.headers.get("X-Api-Key") == key
        query_ok = query.get("key") == [key]
        event = dict(
            path=urlsplit(request.path).path,
            header_ok=header_ok,
            query_ok=query_ok,
            upgrade=request.headers.get("Upgrade"),
            extensions=request.headers.get("Sec-WebSocket-Extensions"),
            protocols=request.headers.get("Sec-WebSocket-Protocol"),
            # What a caller's own credentials would look like here: the proxy must strip them.
            authorization=request.headers.get("Authorization"),
            token=request.headers.get("X-Secretproxy-Token"),
        )
        if not (header_ok and query_ok):
            emit(event="refused", **event)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong key\n")
        emit(event="connect", **event)
        return None

    async def handler(ws):
        path = urlsplit(ws.request.path).path
        try:
            if path == "/silent":
                await ws.wait_closed()
            else:
                async for message in ws:
                    if message == "leak":
                        await ws.send(f"you sent the key {key}, keep it safe")
                        await ws.send(b"\x00" + key.encode() + b"\xff")
                    elif isinstance(message, str) and message.startswith("close:"):
                        await ws.close(int(message[6:]), f"done with {key}")
                        break
                    else:
                        await ws.send(message)
        finally:
            await ws.wait_closed()
            received = ws.protocol.close_rcvd
            emit(
                event="closed",
                path=path,
                code=received.code if received else None,
                reason=received.reason if received else None,
            )

    tls = None
    if cert:
        import ssl

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, private_key)

    async with ws_serve(
        handler,
        "127.0.0.1",
        0,
        process_request=check,
        subprotocols=["chat.v1", "chat.v2"],
        ssl=tls,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


def client(scenario, url, origin, bearer=None):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    result = {}
    try:
        with connect(
            url,
            origin=origin,
            additional_headers={"Authorization": f"Bearer {bearer}"} if bearer else None,
            subprotocols=["chat.v1"],
            open_timeout=30,
            close_timeout=10,
        ) as ws:
            result["subprotocol"] = ws.subprotocol
            result["extensions"] = [type(e).__name__ for e in ws.protocol.extensions]
            if scenario == "frames":
                ws.send("hello")
                result["text"] = ws.recv(timeout=30)
                ws.send(b"\x00\x01binary\xff")
                result["binary"] = ws.recv(timeout=30).hex()
                ws.send("leak")
                result["leak_text"] = ws.recv(timeout=30)
                result["leak_binary"] = ws.recv(timeout=30).hex()
                result["pong"] = ws.ping(b"are you there").wait(30)
                ws.close(4001, "bye")
                result["close_code"] = ws.protocol.close_rcvd.code
            elif scenario == "server-close":
                ws.send("close:4002")
                try:
                    ws.recv(timeout=30)
                except ConnectionClosed as closed:
                    result["close_code"] = closed.rcvd.code
                    result["close_reason"] = closed.rcvd.reason
            elif scenario == "wait-close":
                print(json.dumps({"event": "open"}), flush=True)
                try:
                    ws.recv(timeout=60)
                except ConnectionClosed as closed:
                    result["close_code"] = closed.rcvd.code if closed.rcvd else None
                    result["close_reason"] = closed.rcvd.reason if closed.rcvd else None
            else:
                sys.exit(f"unknown scenario {scenario}")
    except InvalidStatus as refused:
        result["status"] = refused.response.status_code
        result["body"] = refused.response.body.decode("utf-8", "replace")
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("serve")
    server.add_argument("--key", required=True)
    server.add_argument("--tls-cert", help="serve wss with this PEM certificate")
    server.add_argument("--tls-key", help="the certificate's PEM private key")
    run = sub.add_parser("client")
    run.add_argument("scenario")
    run.add_argument("url")
    run.add_argument("--origin")
    run.add_argument("--bearer", help="send this client key as `Authorization: Bearer`")
    args = parser.parse_args()
    if args.command == "serve":
        import asyncio

        asyncio.run(serve(args.key, args.tls_cert, args.tls_key))
    else:
        client(args.scenario, args.url, args.origin, args.bearer)


if __name__ == "__main__":
    main()
