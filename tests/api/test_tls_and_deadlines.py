"""HTTPS with --tls-cert/--tls-key, a certificate that does not load, and the late-request warning."""

from __future__ import annotations

import datetime as dt
import logging

import httpx
import pytest

from expunge.orchestrator.api.server import HttpServer
from expunge.orchestrator.config import ServiceConfig
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.service.watch import DeadlineWatch
from tests.api.conftest import SUBJECTS, Served, serving


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


def test_the_api_serves_https_with_a_certificate(served: Served, tmp_path):
    cert, key = _self_signed(tmp_path)
    server = HttpServer(served.service, ServiceConfig(port=0, tls_cert=cert, tls_key=key))
    url = server.start()
    try:
        assert url.startswith("https://127.0.0.1:")
        assert (
            httpx.get(f"{url}/v1/healthz", verify=__import__("ssl").create_default_context(cafile=cert)).json()[
                "status"
            ]
            == "ok"
        )
        from expunge import Client

        with Client(url, None, verify=cert) as client:  # the light client, trusting this certificate
            assert client.health().status == "ok"
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https", "http") + "/v1/healthz")  # plain HTTP is not answered
    finally:
        server.stop()


def test_a_certificate_that_does_not_load_is_bad_input(served: Served, tmp_path):
    (tmp_path / "c.pem").write_text("not a certificate")
    server = HttpServer(
        served.service, ServiceConfig(port=0, tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "c.pem"))
    )
    with pytest.raises(ConfigError, match="do not load"):
        server.start()
    with pytest.raises(ValueError, match="go together"):
        ServiceConfig(tls_cert="c.pem")


def test_a_taken_port_is_bad_input_naming_the_fix(served: Served):
    port = int(served.url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match="--port"):
        HttpServer(served.service, ServiceConfig(port=port)).start()


def test_a_late_request_is_warned_about_once(tmp_path, caplog):
    with serving(tmp_path, window_ms=60_000) as served:
        received = (dt.datetime.now(dt.UTC) - dt.timedelta(days=45)).date().isoformat()
        request_id = served.service.submit([SUBJECTS[0]], None, None, "DESK-9", received)
        watch = DeadlineWatch(served.service.lifecycle, warn_days=7)
        caplog.set_level(logging.WARNING)
        first = watch.check(dt.datetime.now(dt.UTC))
        again = watch.check(dt.datetime.now(dt.UTC))
    assert len(first) == 1
    assert request_id in first[0]
    assert "DESK-9" in first[0]
    assert "late" in first[0]
    assert again == []
    assert any(r.levelno == logging.WARNING and request_id in r.getMessage() for r in caplog.records)
    assert SUBJECTS[0] not in caplog.text


def test_a_backlog_import_is_left_out_of_the_stage_latency(tmp_path):
    with serving(tmp_path, window_ms=0) as served:
        received = (dt.datetime.now(dt.UTC) - dt.timedelta(days=20)).date().isoformat()
        old = served.service.submit([SUBJECTS[1]], None, None, None, received)
        fresh = served.service.submit([SUBJECTS[2]])
        for request_id in (old, fresh):
            served.service.wait(request_id, "registered", timeout=120)
        latency = served.service.stats().latency
    assert latency["committed"].count == 1  # the fresh one only
    assert latency["committed"].sum < 3600


def test_by_default_the_api_binds_loopback_and_only_an_exposed_api_without_tls_is_warned_about(served: Served):
    from expunge.orchestrator.api.server import exposure_warning

    assert ServiceConfig().host == "127.0.0.1"
    assert served.url.startswith("http://127.0.0.1:")
    assert exposure_warning(ServiceConfig()) is None
    assert "without TLS" in (exposure_warning(ServiceConfig(host="0.0.0.0")) or "")
    assert exposure_warning(ServiceConfig(host="0.0.0.0", tls_cert="c.pem", tls_key="k.pem")) is None
