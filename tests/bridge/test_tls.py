"""mqtts:// against Mosquitto with a TLS listener and a CA made in the test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509  # in the [test] extra
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.bridge import AggregatingUpstream, parse_broker_url
from tests.bridge.helpers import Recorder, eventually
from tests.mosquitto import MosquittoBroker, free_port


@dataclass
class TlsBroker:
    broker: MosquittoBroker
    port: int
    ca_file: Path
    wrong_ca_file: Path

    def url(self, protocol: str, query: str = "") -> str:
        return f"mqtts://localhost:{self.port}?protocol={protocol}{query}"


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o644)  # read by mosquitto's own user
    return path


def _make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """Mosquitto with a second listener speaking TLS, certificate signed by a fresh CA."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="mqttsn-tls-"))
    directory.chmod(0o755)
    ca_key, ca_cert = _make_ca("mqttsn test CA")
    server_key, server_cert = _make_server_cert(ca_key, ca_cert)
    _, wrong_ca = _make_ca("some other CA")
    ca_file = _write_pem(directory / "ca.pem", _pem(ca_cert))
    wrong_ca_file = _write_pem(directory / "wrong-ca.pem", _pem(wrong_ca))
    cert_file = _write_pem(directory / "server.pem", _pem(server_cert))
    key_file = _write_pem(directory / "server.key", _key_pem(server_key))
    port = free_port()
    broker = MosquittoBroker(
        extra_config=(
            f"listener {port} 127.0.0.1\n"
            f"cafile {ca_file}\ncertfile {cert_file}\nkeyfile {key_file}\n"
        )
    )
    broker.start()
    yield TlsBroker(broker, port, ca_file, wrong_ca_file)
    broker.stop()
    shutil.rmtree(directory, ignore_errors=True)


async def test_mqtts_with_ca_file_publishes(tls_broker: TlsBroker, protocol: str) -> None:
    """mqtts:// + ca_file verifies the broker and carries QoS 1 publishes."""
    settings = parse_broker_url(tls_broker.url(protocol, f"&ca_file={tls_broker.ca_file}"))
    recorder = Recorder()
    upstream = AggregatingUpstream(settings, gateway_id="tls", status_topic=None)
    await upstream.start(recorder)
    try:
        assert upstream.connected
        upstream.publish("node", "tls/test", b"secret reading", 1, False, 1)
        await eventually(lambda: recorder.done == {1: True}, what="ack over TLS")
    finally:
        await upstream.close()


async def test_wrong_ca_fails_with_a_clear_error(
    tls_broker: TlsBroker, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker certificate from another CA is refused, with one ERROR that says what to fix."""
    settings = parse_broker_url(tls_broker.url(protocol, f"&ca_file={tls_broker.wrong_ca_file}"))
    upstream = AggregatingUpstream(settings, gateway_id="tls-wrong", status_topic=None)
    await upstream.start(Recorder())
    try:
        await asyncio.sleep(0.3)
        assert not upstream.connected
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert "TLS certificate verification failed" in errors[0]
        assert "ca_file" in errors[0]
        assert f"localhost:{tls_broker.port}" in errors[0]
    finally:
        await upstream.close()


async def test_insecure_skips_verification_with_a_warning(
    tls_broker: TlsBroker, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """insecure=true connects despite an unknown CA, and says so at WARNING."""
    settings = parse_broker_url(
        tls_broker.url(protocol, f"&ca_file={tls_broker.wrong_ca_file}&insecure=true")
    )
    upstream = AggregatingUpstream(settings, gateway_id="tls-insecure", status_topic=None)
    with caplog.at_level(logging.WARNING):
        await upstream.start(Recorder())
    try:
        assert upstream.connected
        assert any("verification is OFF" in r.getMessage() for r in caplog.records)
    finally:
        await upstream.close()
