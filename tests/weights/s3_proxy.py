"""A counting, throttling HTTP proxy on loopback, between the tools and the moto S3 server.

It forwards every request unchanged and records what the server was asked for and how many
body bytes it sent back per object key, so tests can count refetches. It can slow responses
down (to kill a process mid-file) and flip one byte of the next response for a key (corruption
in transit).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
_CHUNK = 64 * 1024


@dataclass
class Seen:
    method: str
    path: str
    query: str
    range: str | None
    status: int = 0
    body_bytes: int = 0


@dataclass
class ProxyState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[Seen] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_per_second: float | None = None
    corrupt_next: set[str] = field(default_factory=set)
    upload_delay_seconds: float = 0.0


class S3Proxy:
    """``with S3Proxy(upstream) as proxy: proxy.url`` then inspect ``proxy.requests``."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.state = ProxyState()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # what the tests read and set ---------------------------------------------------------

    def reset(self) -> None:
        with self.state.lock:
            self.state.requests.clear()
            self.state.served.clear()

    @property
    def requests(self) -> list[Seen]:
        with self.state.lock:
            return list(self.state.requests)

    def served(self, key_suffix: str) -> int:
        """Body bytes sent for GETs of the object whose path ends with ``key_suffix``."""
        with self.state.lock:
            return sum(n for path, n in self.state.served.items() if path.endswith(key_suffix))

    def gets(self, key_suffix: str) -> list[Seen]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(key_suffix)]

    def throttle(self, bytes_per_second: float | None) -> None:
        self.state.bytes_per_second = bytes_per_second

    def delay_uploads(self, seconds: float) -> None:
        """Hold each PUT this long before forwarding it (to stop a publisher mid-file)."""
        self.state.upload_delay_seconds = seconds

    def corrupt_next_get(self, key_suffix: str) -> None:
        with self.state.lock:
            self.state.corrupt_next.add(key_suffix)

    # the handler -------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen(self.command, unquote(parts.path), parts.query, self.headers["Range"])
                with proxy.state.lock:
                    proxy.state.requests.append(seen)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "PUT" and proxy.state.upload_delay_seconds:
                    time.sleep(proxy.state.upload_delay_seconds)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=60
                )
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    seen.status = response.status
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_HEADERS:
                            self.send_header(key, value)
                    self.send_header("Connection", "keep-alive")
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    self._stream(response, seen)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client went away (a killed warmer)
                finally:
                    upstream.close()

            def _stream(self, response: http.client.HTTPResponse, seen: Seen) -> None:
                corrupt = False
                if self.command == "GET" and response.status in {200, 206}:
                    with proxy.state.lock:
                        for suffix in list(proxy.state.corrupt_next):
                            if seen.path.endswith(suffix):
                                proxy.state.corrupt_next.discard(suffix)
                                corrupt = True
                started = time.monotonic()
                sent = 0
                while chunk := response.read(_CHUNK):
                    if corrupt:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                        corrupt = False
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    seen.body_bytes = sent
                    if self.command == "GET":
                        with proxy.state.lock:
                            proxy.state.served[seen.path] += len(chunk)
                    rate = proxy.state.bytes_per_second
                    if rate:
                        ahead = sent / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815

        return Handler
