"""The fault proxy for ``expunge chaos``: a real moto S3 server behind it, boto3 and s3fs in front."""

from __future__ import annotations

import http.client
import io
import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from expunge.pipelines.fault_proxy import FaultProxy, FaultSchedule, RequestInfo, _read_chunked, decide

pytestmark = pytest.mark.integration


def _client(endpoint: str, read_timeout: float = 5.0):
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},  # max_attempts=1 still retries once
        connect_timeout=2,
        read_timeout=read_timeout,
        s3={"addressing_style": "path"},
    )
    return boto3.client("s3", endpoint_url=endpoint, config=config)


@pytest.fixture
def proxy(s3_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server, FaultSchedule()) as running:
        yield running


# --- decisions, without sockets ------------------------------------------------------------


def _requests(n: int) -> list[RequestInfo]:
    kinds = [
        RequestInfo("GET", "/b/journal/1"),
        RequestInfo("PUT", "/b/data/2"),
        RequestInfo("DELETE", "/b/data/2", "versionId=v1", version_delete=True),
        RequestInfo("POST", "/b", "delete", version_delete=True),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


def test_the_same_seed_gives_the_same_decisions_and_another_seed_others():
    rates = {"cut": 0.2, "cut_after": 0.1, "slow": 0.1, "error_500": 0.1, "error_503": 0.1, "refuse_delete": 0.5}
    seq = _requests(400)

    def run(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [decide(rng, info, rates) for info in seq]

    assert run(11) == run(11)
    assert run(11) != run(12)
    kinds = run(11)
    assert set(kinds) == {"pass", "cut", "cut_after", "slow", "error_500", "error_503", "refuse_delete"}
    # refuse_delete only ever falls on a version delete
    assert all(info.version_delete for info, kind in zip(seq, kinds, strict=True) if kind == "refuse_delete")


def test_rates_are_respected_at_the_edges():
    rng = random.Random(0)
    deletes = [RequestInfo("DELETE", "/b/k", "versionId=1", version_delete=True)] * 50
    assert {decide(rng, d, {"refuse_delete": 1.0, "cut": 1.0}) for d in deletes} == {"refuse_delete"}
    assert {decide(rng, RequestInfo("GET", "/b/k"), {"refuse_delete": 1.0}) for _ in range(50)} == {"pass"}
    assert {decide(rng, RequestInfo("GET", "/b/k"), {}) for _ in range(50)} == {"pass"}
    assert {decide(rng, RequestInfo("GET", "/b/k"), {"error_503": 1.0}) for _ in range(50)} == {"error_503"}


def test_a_schedule_is_checked_and_matches_method_and_path():
    with pytest.raises(ValueError, match="unknown"):
        FaultSchedule(rates={"explode": 0.1})
    with pytest.raises(ValueError, match="sum"):
        FaultSchedule(rates={"cut": 0.6, "slow": 0.6})
    with pytest.raises(ValueError):
        FaultSchedule(rates={"cut": -0.1})
    FaultSchedule(rates={"cut": 0.5, "slow": 0.5, "refuse_delete": 1.0})  # refuse_delete is its own band
    only = FaultSchedule(methods=frozenset({"put"}), path_pattern=r"/journal/")
    assert only.matches(RequestInfo("PUT", "/b/store/journal/0001.json"))
    assert not only.matches(RequestInfo("GET", "/b/store/journal/0001.json"))
    assert not only.matches(RequestInfo("PUT", "/b/store/data/0001.parquet"))


def test_a_chunked_body_is_decoded_and_kept_as_sent():
    sent = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\n"
    raw, body = _read_chunked(io.BytesIO(sent + b"NEXT"))
    assert body == b"Wikipedia"
    assert raw == sent


def test_the_proxy_listens_on_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("http://127.0.0.1:1", host="0.0.0.0")
    with pytest.raises(ValueError, match="http://"):
        FaultProxy("https://127.0.0.1:1")


# --- through the proxy, against moto ---------------------------------------------------------


def test_requests_pass_through_on_keep_alive_connections(proxy, s3_bucket):
    s3 = _client(proxy.url)
    big = bytes(range(256)) * 4096  # 1 MiB, sent with Expect: 100-continue (a file-like body)
    s3.put_object(Bucket=s3_bucket, Key="a/small", Body=b"hello")
    s3.put_object(Bucket=s3_bucket, Key="a/big", Body=io.BytesIO(big))
    assert s3.get_object(Bucket=s3_bucket, Key="a/small")["Body"].read() == b"hello"
    assert s3.get_object(Bucket=s3_bucket, Key="a/big")["Body"].read() == big
    assert s3.head_object(Bucket=s3_bucket, Key="a/big")["ContentLength"] == len(big)
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="a/")
    assert [o["Key"] for o in listed["Contents"]] == ["a/big", "a/small"]
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=s3_bucket, Key="a/none")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    assert proxy.injected == {}


def test_a_chunked_request_passes_through(proxy, s3_bucket):
    host, port = proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("PUT", f"/{s3_bucket}/chunked", body=iter([b"part one, ", b"part two"]), encode_chunked=True)
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    conn.close()
    assert _client(proxy.url).get_object(Bucket=s3_bucket, Key="chunked")["Body"].read() == b"part one, part two"


def test_s3fs_works_through_the_proxy(proxy, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": proxy.url}, skip_instance_cache=True)
    fs.pipe(f"{s3_bucket}/x/one", b"1" * 10_000)
    assert fs.cat(f"{s3_bucket}/x/one") == b"1" * 10_000
    assert fs.ls(f"{s3_bucket}/x", detail=False) == [f"{s3_bucket}/x/one"]


def test_refuse_delete_refuses_only_version_deletes_and_the_versions_stay(proxy, s3_server, s3_versioned_bucket):
    direct, s3 = _client(s3_server), _client(proxy.url)
    version = s3.put_object(Bucket=s3_versioned_bucket, Key="k", Body=b"v1")["VersionId"]
    proxy.set_schedule(FaultSchedule(rates={"refuse_delete": 1.0}))

    batch = s3.delete_objects(
        Bucket=s3_versioned_bucket, Delete={"Objects": [{"Key": "k", "VersionId": version}], "Quiet": True}
    )
    assert [(e["Key"], e["VersionId"], e["Code"]) for e in batch["Errors"]] == [("k", version, "AccessDenied")]
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=s3_versioned_bucket, Key="k", VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert direct.get_object(Bucket=s3_versioned_bucket, Key="k", VersionId=version)["Body"].read() == b"v1"

    # a plain delete (a delete marker) and a batch without versions pass: no DeleteObjectVersion
    s3.delete_object(Bucket=s3_versioned_bucket, Key="k")
    s3.delete_objects(Bucket=s3_versioned_bucket, Delete={"Objects": [{"Key": "k"}]})
    assert proxy.injected == {"refuse_delete": 2}
    versions = direct.list_object_versions(Bucket=s3_versioned_bucket)
    assert [v["VersionId"] for v in versions["Versions"]] == [version]
    assert len(versions["DeleteMarkers"]) == 2


def test_cut_closes_the_connection_before_forwarding(proxy, s3_bucket):
    s3 = _client(proxy.url)
    proxy.set_schedule(FaultSchedule(rates={"cut": 1.0}))
    with pytest.raises(ConnectionClosedError):
        s3.put_object(Bucket=s3_bucket, Key="never", Body=b"x")
    proxy.pause()
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0  # the request never reached S3
    assert proxy.injected == {"cut": 1}


def test_cut_after_forwarding_loses_only_the_response(proxy, s3_bucket):
    s3 = _client(proxy.url)
    proxy.set_schedule(FaultSchedule(rates={"cut_after": 1.0}))
    with pytest.raises(ConnectionClosedError):
        s3.put_object(Bucket=s3_bucket, Key="landed", Body=b"x")
    proxy.pause()
    assert s3.get_object(Bucket=s3_bucket, Key="landed")["Body"].read() == b"x"  # it happened anyway
    assert proxy.injected == {"cut_after": 1}


def test_slow_delays_and_can_time_a_client_out(proxy, s3_bucket):
    proxy.set_schedule(FaultSchedule(rates={"slow": 1.0}, slow_seconds=0.4))
    began = time.monotonic()
    _client(proxy.url).head_bucket(Bucket=s3_bucket)
    assert time.monotonic() - began >= 0.4
    with pytest.raises(ReadTimeoutError):
        _client(proxy.url, read_timeout=0.1).head_bucket(Bucket=s3_bucket)
    assert proxy.injected == {"slow": 2}


@pytest.mark.parametrize(
    ("kind", "status", "code"), [("error_500", 500, "InternalError"), ("error_503", 503, "SlowDown")]
)
def test_server_errors_are_s3_errors(proxy, s3_bucket, kind, status, code):
    s3 = _client(proxy.url)
    proxy.set_schedule(FaultSchedule(rates={kind: 1.0}))
    with pytest.raises(ClientError) as failed:
        s3.get_object(Bucket=s3_bucket, Key="any")
    assert failed.value.response["Error"]["Code"] == code
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    with pytest.raises(ClientError):  # a HEAD gets the status without a body, the connection stays usable
        s3.head_bucket(Bucket=s3_bucket)
    proxy.pause()
    s3.head_bucket(Bucket=s3_bucket)
    assert proxy.injected == {kind: 2}


def test_a_seeded_mix_is_reproducible_end_to_end_and_counted(s3_server, s3_bucket):
    schedule = FaultSchedule(
        rates={"cut": 0.2, "cut_after": 0.1, "error_500": 0.15, "error_503": 0.15}, seed=7, methods=frozenset({"GET"})
    )

    def run() -> tuple[list[str], dict[str, int]]:
        outcomes = []
        with FaultProxy(s3_server, schedule) as proxy:
            s3 = _client(proxy.url)
            s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x")  # a PUT: never matched
            for _ in range(30):
                try:
                    s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read()
                    outcomes.append("ok")
                except ClientError as exc:
                    outcomes.append(exc.response["Error"]["Code"])
                except ConnectionClosedError:
                    outcomes.append("closed")
            return outcomes, proxy.injected

    first, injected = run()
    assert (first, injected) == run()
    assert injected["cut"] + injected["cut_after"] == first.count("closed")
    assert injected["error_500"] == first.count("InternalError")
    assert injected["error_503"] == first.count("SlowDown")
    assert sum(injected.values()) + first.count("ok") == 30
    assert len(injected) == 4


def test_stop_closes_idle_keep_alive_connections(s3_server, s3_bucket):
    proxy = FaultProxy(s3_server).start()
    host, port = proxy.url.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)), timeout=5)
    began = time.monotonic()
    proxy.stop()
    assert idle.recv(1) == b""  # closed by the proxy, not left hanging
    assert time.monotonic() - began < 2
    idle.close()


class _Framings(BaseHTTPRequestHandler):
    """An upstream that answers chunked (/chunked) or delimited by closing (/close)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        else:
            self.protocol_version = "HTTP/1.0"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_chunked_and_close_delimited_responses_are_relayed_on_one_keep_alive_connection():
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Framings)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}") as proxy:
            host, port = proxy.url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            for path, body in [("/chunked", b"abcdefg"), ("/close", b"until the end"), ("/chunked", b"abcdefg")]:
                conn.request("GET", path)
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, body)
                assert not response.will_close
            conn.close()
    finally:
        upstream.shutdown()
        upstream.server_close()
