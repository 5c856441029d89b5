"""A seeded, HTTP-aware fault proxy for S3 traffic on loopback (for ``expunge chaos``).

    schedule = FaultSchedule(rates={"cut": 0.05, "slow": 0.05, "refuse_delete": 1.0}, seed=11)
    with FaultProxy("http://127.0.0.1:9000", schedule) as proxy:
        ...  # point boto3/s3fs at proxy.url; read proxy.injected afterwards

Each request (HTTP/1.1, keep-alive, ``Expect: 100-continue``, Content-Length or chunked bodies)
is read whole, then :func:`decide` picks one kind with the schedule's seeded generator:

- ``pass``: forwarded upstream, the response relayed;
- ``cut``: the client connection is closed before forwarding (the request never happened);
- ``cut_after``: forwarded, then the connection is closed before the response (it did happen);
- ``slow``: held ``slow_seconds``, then passed;
- ``refuse_delete``: only version deletes (``DELETE ?versionId=`` and a multi-object delete
  naming a VersionId) are answered as S3 answers under a policy denying
  ``s3:DeleteObjectVersion``: 403 AccessDenied, or 200 with one AccessDenied per object for a
  multi-object delete (every object of the batch), never forwarded;
- ``error_500`` / ``error_503``: 500 InternalError / 503 SlowDown, never forwarded.

Requests on parallel connections reach :func:`decide` in arrival order, so a schedule is
deterministic for a given seed and request order. Bodies are buffered in memory. Standard library only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import re
import socket
import threading
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Self
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

__all__ = ["FAULT_KINDS", "FaultProxy", "FaultSchedule", "RequestInfo", "decide"]

logger = logging.getLogger(__name__)

FAULT_KINDS = ("cut", "cut_after", "slow", "refuse_delete", "error_500", "error_503")
_ERRORS = {
    "error_500": ("500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "error_503": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    "refuse_delete": ("403 Forbidden", "AccessDenied", "Access Denied"),
}
_HOP = {"connection", "keep-alive", "proxy-connection", "expect"}
_LINE = 65536
_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class RequestInfo:
    """What a decision may look at: the method, the unquoted path, the raw query, a version delete."""

    method: str
    path: str
    query: str = ""
    version_delete: bool = False


@dataclass(frozen=True)
class FaultSchedule:
    """Per-request fault probabilities, seeded.

    ``refuse_delete`` is the probability that a version delete is refused; the other rates are
    per matching request and sum to at most 1. Only requests whose method is in ``methods``
    (empty: any) and whose unquoted path matches ``path_pattern`` (``re.search``; None: any) are
    drawn for; each drawn request takes exactly one number from the generator.
    """

    rates: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    slow_seconds: float = 0.5
    methods: frozenset[str] = frozenset()
    path_pattern: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {FAULT_KINDS}")
        if any(not 0.0 <= rate <= 1.0 for rate in self.rates.values()):
            raise ValueError(f"rates must lie in [0, 1]: {dict(self.rates)}")
        if sum(rate for kind, rate in self.rates.items() if kind != "refuse_delete") > 1.0 + 1e-9:
            raise ValueError(f"rates other than refuse_delete sum past 1: {dict(self.rates)}")
        if self.slow_seconds < 0:
            raise ValueError("slow_seconds must be >= 0")
        object.__setattr__(self, "rates", dict(self.rates))
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

    def matches(self, info: RequestInfo) -> bool:
        if self.methods and info.method.upper() not in self.methods:
            return False
        return self.path_pattern is None or re.search(self.path_pattern, info.path) is not None


def decide(rng: random.Random, info: RequestInfo, rates: Mapping[str, float]) -> str:
    """The kind for one request: one draw; a version delete's refuse band comes first."""
    draw = rng.random()
    refuse = rates.get("refuse_delete", 0.0) if info.version_delete else 0.0
    if draw < refuse:
        return "refuse_delete"
    if refuse:
        draw = (draw - refuse) / (1.0 - refuse)
    edge = 0.0
    for kind in FAULT_KINDS:
        if kind != "refuse_delete":
            edge += rates.get(kind, 0.0)
            if draw < edge:
                return kind
    return "pass"


def _header(headers: Headers, name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


def _read_head(reader: BinaryIO) -> tuple[str, Headers] | None:
    """The start line and headers, or None at a clean end of the stream."""
    line = reader.readline(_LINE)
    while line in (b"\r\n", b"\n"):  # stray blank lines between messages are allowed
        line = reader.readline(_LINE)
    if not line:
        return None
    headers: Headers = []
    while True:
        raw = reader.readline(_LINE)
        if not raw:
            raise ConnectionError("the stream ended inside a header block")
        if raw in (b"\r\n", b"\n"):
            return line.decode("latin-1").rstrip("\r\n"), headers
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))


def _read_exact(reader: BinaryIO, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ConnectionError(f"the stream ended after {len(data)} of {size} body bytes")
    return data


def _read_chunked(reader: BinaryIO) -> tuple[bytes, bytes]:
    """A chunked body: (the bytes as sent, framing included; the decoded body)."""
    raw, body = bytearray(), bytearray()
    while True:
        line = reader.readline(_LINE)
        raw += line
        size = int(line.split(b";")[0].strip() or b"x", 16)  # "x": a bare line is malformed
        if size == 0:
            while (trailer := reader.readline(_LINE)) not in (b"\r\n", b"\n", b""):
                raw += trailer
            raw += b"\r\n"
            return bytes(raw), bytes(body)
        data = _read_exact(reader, size)
        raw += data + reader.readline(_LINE)
        body += data


def _read_body(reader: BinaryIO, headers: Headers, until_close: bool) -> tuple[bytes, bytes]:
    """(raw, decoded) per Transfer-Encoding or Content-Length; else empty, or to the end if ``until_close``."""
    if "chunked" in (_header(headers, "transfer-encoding") or "").lower():
        return _read_chunked(reader)
    length = _header(headers, "content-length")
    if length is not None:
        data = _read_exact(reader, int(length))
        return data, data
    data = reader.read() if until_close else b""
    return data, data


def _xml(code: str, message: str) -> bytes:
    rid = uuid.uuid4().hex[:16].upper()
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}</Message>'
        f"<RequestId>{rid}</RequestId><HostId>expunge-fault-proxy</HostId></Error>"
    ).encode()


def _multi_delete_refusal(body: bytes) -> bytes:
    """A DeleteResult refusing every object of a multi-object delete, as S3 does per key (HTTP 200)."""
    errors = ""
    for obj in (el for el in ET.fromstring(body).iter() if el.tag.endswith("Object")):
        fields = {child.tag.rsplit("}", 1)[-1]: escape(child.text or "") for child in obj}
        version = f"<VersionId>{fields['VersionId']}</VersionId>" if "VersionId" in fields else ""
        errors += f"<Error><Key>{fields.get('Key', '')}</Key>{version}<Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult xmlns="{_NS}">{errors}</DeleteResult>'.encode()


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: Headers
    raw_body: bytes
    info: RequestInfo


class FaultProxy:
    """A threaded HTTP proxy on loopback in front of one ``http://`` S3 endpoint (see the module doc)."""

    def __init__(
        self,
        upstream: str,
        schedule: FaultSchedule | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
            raise ValueError(f"the fault proxy listens on loopback only, not {host!r}")
        self._upstream = (parts.hostname, parts.port or 80)
        self._address = (host, port)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._schedule = schedule or FaultSchedule()
        self._rng = random.Random(self._schedule.seed)
        self._paused = False
        self._injected: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._clients: set[socket.socket] = set()
        self._acceptor: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def injected(self) -> dict[str, int]:
        """Faults injected so far, by kind (a snapshot)."""
        with self._lock:
            return dict(self._injected)

    def set_schedule(self, schedule: FaultSchedule) -> None:
        """Replace the schedule and reseed the generator with its seed; resumes if paused."""
        with self._lock:
            self._schedule, self._rng, self._paused = schedule, random.Random(schedule.seed), False

    def pause(self) -> None:
        """Pass every request (and draw nothing) until :meth:`resume` or :meth:`set_schedule`."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def start(self) -> Self:
        listener = socket.create_server(self._address)
        listener.settimeout(0.1)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy-accept", daemon=True)
        self._acceptor.start()
        logger.info("fault proxy on %s -> http://%s:%d", self.url, *self._upstream)
        return self

    def stop(self) -> None:
        """Stop accepting and close every client connection (their threads then end on their own)."""
        self._stopping.set()
        if self._acceptor is not None:  # first: no client arrives after it
            self._acceptor.join(timeout=5)
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            _shut(client)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._clients.add(client)
            threading.Thread(target=self._serve, args=(client,), name="fault-proxy-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while not self._stopping.is_set():
                request = self._read_request(reader, client)
                if request is None or not self._handle(client, request):
                    break
        except (OSError, ValueError, ET.ParseError) as exc:
            logger.debug("fault proxy: client connection ended: %s", exc)
        finally:
            with self._lock:
                self._clients.discard(client)
            reader.close()
            _shut(client)

    def _read_request(self, reader: BinaryIO, client: socket.socket) -> _Request | None:
        head = _read_head(reader)
        if head is None:
            return None
        line, headers = head
        method, target, version = line.split(" ", 2)
        if (_header(headers, "expect") or "").lower() == "100-continue":
            client.sendall(f"{version} 100 Continue\r\n\r\n".encode("latin-1"))
        raw, body = _read_body(reader, headers, until_close=False)
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        version_delete = (method == "DELETE" and "versionId" in query) or (
            method == "POST" and "delete" in query and b"VersionId>" in body
        )
        info = RequestInfo(method, unquote(parts.path), parts.query, version_delete)
        return _Request(method, target, version, headers, raw, info)

    def _decide(self, info: RequestInfo) -> tuple[str, FaultSchedule]:
        with self._lock:
            schedule = self._schedule
            kind = "pass"
            if not self._paused and schedule.matches(info):
                kind = decide(self._rng, info, schedule.rates)
            if kind != "pass":
                self._injected[kind] += 1
        return kind, schedule

    def _handle(self, client: socket.socket, request: _Request) -> bool:
        """Serve one request; False when the client connection is to be closed."""
        kind, schedule = self._decide(request.info)
        if kind != "pass":
            logger.info("fault proxy: %s on %s %s", kind, request.method, request.target)
        keep = (_header(request.headers, "connection") or "").lower() != "close" and request.version == "HTTP/1.1"
        if kind == "cut":
            return False
        if kind in _ERRORS:
            status, code, message = _ERRORS[kind]
            refused_batch = kind == "refuse_delete" and request.method == "POST"
            body = _multi_delete_refusal(request.raw_body) if refused_batch else _xml(code, message)
            return self._respond(client, request, "200 OK" if refused_batch else status, _xml_headers(body), body, keep)
        if kind == "slow" and self._stopping.wait(schedule.slow_seconds):
            return False
        try:
            status, headers, body = self._forward(request)
        except OSError as exc:
            logger.warning("fault proxy: upstream http://%s:%d failed: %s", *self._upstream, exc)
            body = _xml("BadGateway", f"upstream failed: {exc}")
            return self._respond(client, request, "502 Bad Gateway", _xml_headers(body), body, False)
        return kind != "cut_after" and self._respond(client, request, status, headers, body, keep)

    def _respond(
        self, client: socket.socket, req: _Request, status: str, headers: Headers, body: bytes, keep: bool
    ) -> bool:
        lines = [f"{req.version} {status}", *(f"{k}: {v}" for k, v in headers if k.lower() not in _HOP)]
        lines.append("Connection: " + ("keep-alive" if keep else "close"))
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        client.sendall(head if req.method == "HEAD" else head + body)
        return keep

    def _forward(self, request: _Request) -> tuple[str, Headers, bytes]:
        """Send the request upstream on a fresh connection; (status, headers, body as framed by headers)."""
        with socket.create_connection(self._upstream, timeout=self._timeout) as upstream:
            lines = [f"{request.method} {request.target} {request.version}"]
            lines += [f"{k}: {v}" for k, v in request.headers if k.lower() not in _HOP] + ["Connection: close"]
            upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.raw_body)
            with upstream.makefile("rb") as reader:
                status = 100
                while status < 200:  # 1xx (100 Continue) is informational: read on
                    head = _read_head(reader)
                    if head is None:
                        raise ConnectionError("upstream closed the connection without a response")
                    status_line, headers = head
                    status = int(status_line.split(" ", 2)[1])
                if request.method == "HEAD" or status in (204, 304):
                    return status_line.split(" ", 1)[1], headers, b""
                framed = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers)
                raw, _ = _read_body(reader, headers, until_close=True)
                if not framed:  # close-delimited: frame it for a keep-alive client
                    headers.append(("Content-Length", str(len(raw))))
                return status_line.split(" ", 1)[1], headers, raw


def _xml_headers(body: bytes) -> Headers:
    return [
        ("Content-Type", "application/xml"),
        ("Content-Length", str(len(body))),
        ("x-amz-request-id", uuid.uuid4().hex[:16].upper()),
    ]


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
