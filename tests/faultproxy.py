"""A small fault-injecting HTTP proxy for the object-store tests: it listens on 127.0.0.1 in front
of moto's S3 server and passes requests through, except those its rules pick out, which it
answers with an error status, forwards and then hangs up on (the request took effect, the client
never hears so: an ambiguous write), or resets without forwarding.

    with FaultProxy(upstream) as proxy:
        proxy.add(Rule("PUT", r"/_lock\\.json$", "drop_response"))       # the first lock PUT
        proxy.add(Rule("PUT", r"/masks/", "status", status=500, times=3))  # the first 3 mask PUTs
        ... use proxy.url as the endpoint ...
    proxy.log  # (method, path, what happened) per request

Bounded: it serves at most `max_requests` requests, every socket has a timeout, and it stops by
itself after `lifetime_s` (a test that hangs cannot leave it running). It runs in threads of the
test process; child processes (the CLI, Ray workers) reach it over loopback.
"""
from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import urlsplit

ACTIONS = ("status", "drop_response", "reset")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
SOCKET_TIMEOUT_S = 30.0  # client and upstream sockets: a stuck peer never holds a thread for long


@dataclass
class Rule:
    """Requests whose method and path match: the first `skip` pass, the next `times` get `action`,
    later ones pass again. `path` is a regex searched in the request target (`/bucket/key?query`);
    `header`, when given, must be present in the request (e.g. "If-None-Match" picks the lock's
    conditional create)."""

    method: str  # "PUT", "GET", "HEAD", ... or "*"
    path: str
    action: str  # one of ACTIONS
    times: int = 1
    skip: int = 0
    status: int = 500
    header: Optional[str] = None
    seen: int = field(default=0, init=False)  # matching requests so far
    acted: int = field(default=0, init=False)  # requests this rule acted on

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {ACTIONS}")
        self._regex = re.compile(self.path)

    def claim(self, method: str, target: str, headers: http.client.HTTPMessage) -> bool:
        """Count a request; True when this rule acts on it. Called under the proxy's lock."""
        if self.method not in ("*", method) or not self._regex.search(target):
            return False
        if self.header is not None and self.header not in headers:
            return False
        self.seen += 1
        if self.skip < self.seen <= self.skip + self.times:
            self.acted += 1
            return True
        return False


class FaultProxy:
    """The proxy; a context manager. `url` is its endpoint (http://127.0.0.1:PORT)."""

    def __init__(self, upstream: str, *, max_requests: int = 5000, lifetime_s: float = 600.0):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.max_requests = max_requests
        self.lifetime_s = lifetime_s
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []  # (method, target, "pass" | action | "refused")
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: Optional[threading.Thread] = None
        self._timer: Optional[threading.Timer] = None

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)  # stops by itself, whatever the test does
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def count(self, method: str, pattern: str, what: Optional[str] = None) -> int:
        """Requests logged with this method, a target matching `pattern` and (if given) outcome."""
        regex = re.compile(pattern)
        with self._lock:
            return sum(1 for m, t, w in self.log
                       if m == method and regex.search(t) and (what is None or w == what))

    # -- called by the handler threads ----------------------------------------------------
    def decide(self, method: str, target: str, headers: http.client.HTTPMessage) -> Optional[Rule]:
        """The rule acting on this request (None: pass it through); logs the request."""
        with self._lock:
            if len(self.log) >= self.max_requests:
                self.log.append((method, target, "refused"))
                return Rule("*", "", "reset")  # past the bound: every connection is cut
            rule = next((r for r in self.rules if r.claim(method, target, headers)), None)
            self.log.append((method, target, rule.action if rule else "pass"))
            return rule

    def forward(self, method: str, target: str, headers: list[tuple[str, str]],
                body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=SOCKET_TIMEOUT_S)
        try:
            conn.request(method, target, body=body if body or method in ("PUT", "POST") else None,
                         headers=dict(headers))
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
        timeout = SOCKET_TIMEOUT_S

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet, the log list says it
            pass

        def do_GET(self) -> None:
            self._serve()

        do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        def _serve(self) -> None:
            body = self._body()
            rule = proxy.decide(self.command, self.path, self.headers)
            if rule is not None and rule.action == "reset":
                self._reset()
                return
            if rule is not None and rule.action == "status":
                self._answer(rule.status, "Injected", [("Content-Type", "application/xml")],
                             _error_xml(rule.status))
                return
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
            if body and not any(k.lower() == "content-length" for k, _ in headers):
                headers.append(("Content-Length", str(len(body))))
            status, reason, out_headers, data = proxy.forward(self.command, self.path, headers, body)
            if rule is not None:  # drop_response: it took effect upstream; the client hears nothing
                self._reset()
                return
            self._answer(status, reason, [(k, v) for k, v in out_headers if k.lower() not in HOP_BY_HOP], data)

        def _body(self) -> bytes:
            """The request body (Content-Length or chunked; a chunked one is forwarded de-chunked)."""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response_only(status, reason)
            has_length = False
            for key, value in headers:
                has_length |= key.lower() == "content-length"
                self.send_header(key, value)
            if not has_length:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()

        def _reset(self) -> None:
            """Cut the connection without an answer (SO_LINGER 0: no lingering data either)."""
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def _error_xml(status: int) -> bytes:
    code = {500: "InternalError", 503: "SlowDown"}.get(status, "InternalError")
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by the test proxy</Message><RequestId>fault</RequestId></Error>").encode()
