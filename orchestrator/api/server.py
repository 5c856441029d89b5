"""Running the HTTP API in the service's process: uvicorn on a background thread, loopback by default.

``HttpServer.start`` binds ``service.host:service.port`` (HTTPS with ``tls_cert``/``tls_key``)
and returns once it listens, or raises ``ConfigError`` when the address is taken or the TLS files
do not load. uvicorn's own access log is off: the API writes its own (``expunge.access``), which
never holds a raw path.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time

import uvicorn

from expunge.orchestrator.api.app import build_app
from expunge.orchestrator.api.tokens import TokenStore
from expunge.orchestrator.config import ServiceConfig
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.service.core import ErasureService

__all__ = ["HttpServer", "exposure_warning"]

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 30.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def exposure_warning(config: ServiceConfig) -> str | None:
    """What to warn about when the API is exposed beyond loopback without TLS (pure); None otherwise.

    Only an explicit ``--host``/``service.host`` exposes it: bearer tokens would then cross the
    network in clear text.
    """
    if config.host in _LOOPBACK or config.tls_cert is not None:
        return None
    return (
        f"the HTTP API listens on {config.host} without TLS: bearer tokens are readable on the network; give "
        "--tls-cert/--tls-key, or keep --host 127.0.0.1 behind a TLS-terminating proxy (docs/security.md)"
    )


class HttpServer:
    """The API of one ``ErasureService`` on one address; ``url`` is where it really listens."""

    def __init__(self, service: ErasureService, config: ServiceConfig) -> None:
        self.config = config
        self.tokens = TokenStore(service.coordinator.store, config.token_cache_s)
        self.app = build_app(service, self.tokens)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.socket: socket.socket | None = None  # the listening socket, once started
        self.url = ""

    def start(self) -> str:
        """Bind and serve on a daemon thread; returns the URL (``http(s)://host:port``).

        Raises:
            ConfigError: the port is taken, the host is not an address of this machine, or the TLS files do not load.
        """
        config = self.config
        if config.tls_cert is not None:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(config.tls_cert, config.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"service.tls_cert/tls_key ({config.tls_cert}, {config.tls_key}) do not load: {exc}; give a PEM "
                    "certificate and its key"
                ) from None
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose ``proto`` says
        # TCP, and without it every answer waits ~40 ms for the client's delayed ACK (Nagle), since
        # uvicorn writes the headers and the body separately (measured: 44 ms -> 0.3 ms a call).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError as exc:
            sock.close()
            why = "is taken by another program" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
            raise ConfigError(
                f"the HTTP API's address {config.host}:{config.port} {why}: choose another with --port (or "
                "service.port), or --host (service.host)"
            ) from None
        sock.listen(128)
        self.socket = sock
        sock.set_inheritable(True)
        port = sock.getsockname()[1]
        scheme = "https" if config.tls_cert else "http"
        host = f"[{config.host}]" if ":" in config.host else config.host
        url = f"{scheme}://{host}:{port}"
        self.app.state.base_url = config.public_url or url  # before the first request can arrive
        uv = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key,
            timeout_keep_alive=30,
            lifespan="off",
        )
        # Off for good: its lines hold raw paths (an idempotency key, a ticket) and client addresses.
        logging.getLogger("uvicorn.access").disabled = True
        server = uvicorn.Server(uv)
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="expunge-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the HTTP API did not start on {config.host}:{port}; see the service's log")
            time.sleep(0.02)
        self.url = url
        log.info("HTTP API listening on %s", self.url)
        if (warning := exposure_warning(config)) is not None:
            log.warning("%s", warning)
        return self.url

    def stop(self) -> None:
        """Stop serving (open connections are closed)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
