"""gRPC over TLS, and mutual TLS, with certificates the test makes."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from genjobs.client import GenJobsClient
from genjobs.client.cli import app as cli
from genjobs.server.runtime import probe
from genjobs.v1 import jobs_pb2, jobs_pb2_grpc
from tests.harness import MongoServer, ServerThread, make_settings


@dataclass
class Certificates:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def make_certificates(folder: Path) -> Certificates:
    """Self-signed CA and two leaf certificates signed by it, written as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("genjobs test CA"))
        .issuer_name(_name("genjobs test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, san: list[x509.GeneralName]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert, key

    server, server_key = leaf(
        "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    client, client_key = leaf("genjobs test client", [x509.DNSName("client.test")])
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    # The chain a server serves: its certificate, then the CA's.
    (folder / "server.pem").write_bytes(server.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "client.pem").write_bytes(client.public_bytes(pem))
    return Certificates(
        folder / "ca.pem",
        folder / "server.pem",
        _write_key(server_key, folder / "server.key"),
        folder / "client.pem",
        _write_key(client_key, folder / "client.key"),
    )


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


@pytest.fixture
def tls_server(mongo: MongoServer, tmp_path: Path, certs: Certificates) -> Iterator[ServerThread]:
    settings = replace(
        make_settings(mongo.uri, tmp_path),
        tls_cert_file=str(certs.server_cert),
        tls_key_file=str(certs.server_key),
    )
    running = ServerThread(settings).start()
    yield running
    running.stop()


def test_client_and_cli_talk_tls_with_a_ca_file(tls_server: ServerThread, certs: Certificates) -> None:
    with GenJobsClient(tls_server.target, tls_server.token(), ca_file=str(certs.ca_cert)) as alice:
        job = alice.submit("topic", topic="Over TLS")
        assert alice.get(job.id).id == job.id
    result = CliRunner().invoke(
        cli,
        ["--target", tls_server.target, "--token", tls_server.token(), "--ca-file", str(certs.ca_cert), "ls"],
    )
    assert result.exit_code == 0, result.output
    assert job.id[:8] in result.output


def test_the_container_probe_speaks_tls(tls_server: ServerThread) -> None:
    settings = replace(tls_server.settings, port=tls_server.port)
    assert probe.check(settings)
    assert not probe.check(replace(settings, tls_cert_file="", tls_key_file=""), timeout=2)  # plaintext


def test_plaintext_and_untrusted_clients_are_refused(tls_server: ServerThread) -> None:
    for channel in (
        grpc.insecure_channel(tls_server.target),
        grpc.secure_channel(tls_server.target, grpc.ssl_channel_credentials()),  # system roots only
    ):
        with channel, pytest.raises(grpc.RpcError) as caught:
            jobs_pb2_grpc.JobServiceStub(channel).GetJob(
                jobs_pb2.GetJobRequest(id="0" * 24),
                metadata=(("authorization", f"Bearer {tls_server.token()}"),),
                timeout=5,
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(
    mongo: MongoServer, tmp_path: Path, certs: Certificates
) -> None:
    settings = replace(
        make_settings(mongo.uri, tmp_path),
        tls_cert_file=str(certs.server_cert),
        tls_key_file=str(certs.server_key),
        tls_client_ca_file=str(certs.ca_cert),
    )
    server = ServerThread(settings).start()
    try:
        roots = certs.ca_cert.read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            roots, certs.client_key.read_bytes(), certs.client_cert.read_bytes()
        )
        with GenJobsClient(
            server.target, server.token(), channel=grpc.secure_channel(server.target, with_cert)
        ) as ok:
            assert ok.submit("topic", topic="mTLS").id
        with GenJobsClient(server.target, server.token(), ca_file=str(certs.ca_cert), timeout=5) as refused:
            with pytest.raises(Exception) as caught:
                refused.submit("topic", topic="no client certificate")
            assert "UNAVAILABLE" in repr(caught.value) or "Unavailable" in type(caught.value).__name__
    finally:
        server.stop()


def test_a_certificate_without_its_key_is_refused(
    mongo: MongoServer, tmp_path: Path, certs: Certificates
) -> None:
    settings = replace(make_settings(mongo.uri, tmp_path), tls_cert_file=str(certs.server_cert))
    with pytest.raises(SystemExit, match="go together"):
        ServerThread(settings).start()
