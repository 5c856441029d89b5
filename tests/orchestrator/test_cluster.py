"""A local-folder store is refused on a multi-node cluster (pure check, no Ray)."""

from __future__ import annotations

import pytest

from expunge.orchestrator.cluster import is_local_storage, require_shared_storage
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


def test_a_gcs_address_in_ipv6_brackets_is_probed_as_an_address():
    # A loopback head started by `expunge serve` is reached at [::ffff:127.0.0.1]:PORT; the brackets
    # made the probe look up a host named "[::ffff:127.0.0.1]", so `serve` took its head for dead.
    import socket

    from expunge.orchestrator.cluster import gcs_answers

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert gcs_answers(f"127.0.0.1:{port}")
        assert gcs_answers(f"[::ffff:127.0.0.1]:{port}")
