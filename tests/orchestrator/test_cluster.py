"""A local-folder store is refused on a multi-node cluster (pure check, no Ray)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from expunge.orchestrator.cluster import gcs_answers, is_local_storage, require_shared_storage
from expunge.orchestrator.errors import ConfigError

LOCAL = ["./expunge-store", "/srv/store", "store", "file:///srv/store", "FILE:///srv/store", "local:///srv/store"]
SHARED = ["s3://bucket/prefix", "s3a://bucket/prefix", "S3://bucket"]


@pytest.mark.parametrize("uri", LOCAL)
def test_a_local_folder_on_several_nodes_is_refused_with_the_fix(uri):
    with pytest.raises(ConfigError, match=r"not shared between the 3 nodes.*use an s3:// storage URI"):
        require_shared_storage(uri, alive_nodes=3)


@pytest.mark.parametrize("uri", LOCAL + SHARED)
def test_any_store_is_fine_on_one_node(uri):
    require_shared_storage(uri, alive_nodes=1)


@pytest.mark.parametrize("uri", SHARED)
def test_s3_is_fine_on_several_nodes(uri):
    require_shared_storage(uri, alive_nodes=2)
    assert not is_local_storage(uri)


@pytest.mark.parametrize("uri", LOCAL)
def test_local_paths_and_file_urls_are_local(uri):
    assert is_local_storage(uri)


class _Listener:
    """A TCP server on loopback that answers each connection with ``reply`` (None: reads and says nothing)."""

    def __init__(self, reply: bytes | None, trickle_s: float = 0.0) -> None:
        self.trickle_s = trickle_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                if self.reply is None:
                    time.sleep(1.5)
                for byte in self.reply or b"":  # one byte at a time, slowly when asked to
                    conn.sendall(bytes([byte]))
                    time.sleep(self.trickle_s)

    def close(self) -> None:
        self.sock.close()


GRPC_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # what a gRPC server answers first


def test_a_gcs_address_in_ipv6_brackets_is_probed_as_an_address():
    # A loopback head started by `expunge serve` is reached at [::ffff:127.0.0.1]:PORT; the brackets
    # made the probe look up a host named "[::ffff:127.0.0.1]", so `serve` took its head for dead.
    listener = _Listener(GRPC_SETTINGS)
    try:
        assert gcs_answers(f"127.0.0.1:{listener.port}")
        assert gcs_answers(f"[::ffff:127.0.0.1]:{listener.port}")
    finally:
        listener.close()


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"", None], ids=["http", "closes", "silent"])
def test_a_listener_that_is_not_a_gcs_is_not_taken_for_one(reply):
    # An HTTP server at the address (the service's API port given as the Ray address) passed a
    # connect-only probe, and ray.init then retried it for minutes.
    listener = _Listener(reply)
    try:
        assert not gcs_answers(f"127.0.0.1:{listener.port}", timeout_s=0.5)
    finally:
        listener.close()


def test_a_server_that_trickles_its_answer_is_given_one_deadline():
    # Adversarial review: the timeout applied to each read, so a server sending one byte a second
    # held the probe for many seconds.
    # Each byte comes within the timeout, the whole answer does not: a deadline per read accepted it.
    listener = _Listener(GRPC_SETTINGS, trickle_s=0.3)
    try:
        assert not gcs_answers(f"127.0.0.1:{listener.port}", timeout_s=0.8)
    finally:
        listener.close()


@pytest.mark.parametrize(("value", "connect_only"), [("1", True), ("true", True), ("0 ", False), ("no", False)])
def test_ray_use_tls_is_read_as_ray_reads_it(value, connect_only, monkeypatch):
    monkeypatch.setenv("RAY_USE_TLS", value)
    listener = _Listener(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        assert gcs_answers(f"127.0.0.1:{listener.port}", timeout_s=0.5) is connect_only
    finally:
        listener.close()


def test_the_real_gcs_of_a_ray_cluster_answers(ray_cluster):
    import ray

    address = ray.get_runtime_context().gcs_address
    assert gcs_answers(address)
