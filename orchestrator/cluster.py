"""What a job needs from the Ray cluster it runs on: storage every node can reach."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from expunge.orchestrator.errors import ConfigError

__all__ = ["absolute_folder", "alive_node_count", "gcs_answers", "is_local_storage", "require_shared_storage"]

#: URI schemes that name a folder of one machine (a URI without a scheme is a local path too).
_LOCAL_SCHEMES = frozenset({"file", "local"})


def is_local_storage(storage_uri: str) -> bool:
    """True for a local path (``./store``, ``/srv/store``) or a ``file://`` / ``local://`` URL."""
    if "://" not in storage_uri:
        return True
    return storage_uri.split("://", 1)[0].lower() in _LOCAL_SCHEMES


def absolute_folder(storage_uri: str) -> str:
    """A store URI as another process must be given it: a folder without a scheme made absolute here.

    ``~`` is expanded, as the store itself expands it (fsspec), and a relative folder is resolved
    against this process's working folder: Ray actors and the service run elsewhere (a cluster
    joined through ``RAY_ADDRESS`` runs them in its own working folder). URLs are kept as they are.
    """
    if "://" in storage_uri:
        return storage_uri
    return str(Path(storage_uri).expanduser().resolve())


def require_shared_storage(storage_uri: str, alive_nodes: int) -> None:
    """Refuse a local-folder store on a cluster of more than one node.

    Shard actors run on any node and each writes its checkpoints where it runs: with a local
    folder, nodes would see different stores (and an erasure could miss copies on another node).

    Args:
        storage_uri: the job's ``storage.uri``.
        alive_nodes: alive nodes of the cluster the job runs on (``alive_node_count()``).

    Raises:
        ConfigError: ``storage_uri`` is local and ``alive_nodes > 1``.
    """
    if alive_nodes > 1 and is_local_storage(storage_uri):
        raise ConfigError(
            f"storage {storage_uri!r} is a local folder, which is not shared between the {alive_nodes} nodes of "
            "this Ray cluster; use an s3:// storage URI (storage.uri or --storage) that every node can reach, "
            "or run on a single-node cluster"
        )


def alive_node_count() -> int:
    """Alive nodes of the Ray cluster this process is connected to (``ray.init`` must have run)."""
    import ray

    nodes: list[dict[str, object]] = ray.nodes()  # type: ignore[no-untyped-call]
    return len([node for node in nodes if node.get("Alive")])


#: An HTTP/2 client's greeting (the connection preface and an empty SETTINGS frame); a gRPC server answers with its SETTINGS.
_HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04" + bytes(5)
_SETTINGS_FRAME = 0x04


def gcs_answers(address: str, timeout_s: float = 2.0) -> bool:
    """Whether a Ray GCS answers at ``host:port`` (``timeout_s`` at most per step).

    One TCP connect, then the HTTP/2 greeting: the GCS is a gRPC server and answers it with a
    SETTINGS frame, where another server (the HTTP API's port, a database) answers otherwise or
    not at all. Checked before ``ray.init``, which retries an address that is not a GCS for
    minutes. With ``RAY_USE_TLS`` on (``1`` or ``true``) the connect alone decides (the greeting
    would need TLS). Another gRPC server (a raylet's port) passes: ``ray.init`` then fails on its own.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s  # one deadline for the whole probe, however the server trickles
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s) as conn:
            if os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true"):  # as Ray reads it
                return True
            conn.sendall(_HTTP2_GREETING)
            head = b""
            while len(head) < 9:
                conn.settimeout(max(deadline - time.monotonic(), 0.001))
                if not (chunk := conn.recv(9 - len(head))):
                    break
                head += chunk
            return len(head) == 9 and head[3] == _SETTINGS_FRAME
    except (OSError, ValueError):
        return False


#: How a head ``expunge serve`` started on loopback spells its address (Ray's IPv4-mapped form).
MAPPED_LOOPBACK = "::ffff:127.0.0.1"


def client_address(address: str) -> str:
    """How Ray reaches ``address`` (``host:port``): a loopback head's ``127.0.0.1:PORT`` becomes ``[::ffff:127.0.0.1]:PORT``.

    ``ray.init`` turns 127.0.0.1 and localhost into the machine's network address, where a head
    ``serve`` started on loopback does not listen: given as ``serve``'s listening list shows it,
    such a head's address made a client retry for a minute and fail. Where the machine's address
    answers at that port (a head on every interface), Ray's own rewrite reaches it and
    ``address`` is kept, as is every other address (``auto``, ``ray://``, other hosts).
    """
    host, _, port = address.rpartition(":")
    if host.strip("[]") not in ("127.0.0.1", "localhost") or not port.isdigit():
        return address
    import ray.util

    machine = str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
    if gcs_answers(f"{f'[{machine}]' if ':' in machine else machine}:{port}"):
        return address
    return f"[{MAPPED_LOOPBACK}]:{port}"


def check_address(address: str | None) -> None:
    """Refuse a Ray address that is not ``host:port`` (a port 1-65535), ``ray://...``, ``auto`` or None.

    Raises:
        ConfigError: e.g. ``localhost:abc``, ``127.0.0.1:``, ``:6379`` (bad input, not an unreachable cluster).
    """
    if address is not None and address.lower().startswith(("http://", "https://")):
        raise ConfigError(
            f"{address!r} is an HTTP URL (the service's HTTP API, or Ray's dashboard), not a Ray address: give the "
            "Ray head's host:port as `expunge serve` prints it, e.g. [::ffff:127.0.0.1]:6379 (the URL is for HTTP "
            "clients)"
        )
    if address is None or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(
            f"the Ray address {address!r} is not host:port: give it as `expunge serve` prints it, e.g. "
            "[::ffff:127.0.0.1]:6379, 127.0.0.1:6379 or ray://HOST:10001"
        )
