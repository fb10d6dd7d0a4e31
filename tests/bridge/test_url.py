"""Broker URL parsing and validation: pure, no broker."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.bridge import BrokerSettings, create_upstream, parse_broker_url
from gateway.bridge.aggregating import AggregatingUpstream
from gateway.bridge.transparent import TransparentUpstream
from gateway.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://localhost", "localhost", 1883, False),
        ("mqtt://broker.example:1884", "broker.example", 1884, False),
        ("mqtts://broker.example", "broker.example", 8883, True),
        ("MQTTS://broker.example:9999/", "broker.example", 9999, True),
        ("mqtt://[::1]:1883", "::1", 1883, False),
    ],
)
def test_host_port_and_scheme(url: str, host: str, port: int, tls: bool) -> None:
    """Scheme picks TLS and the default port; host names, IPv4 and IPv6 literals parse."""
    settings = parse_broker_url(url)
    assert (settings.host, settings.port, settings.tls) == (host, port, tls)
    assert settings.protocol == "5"


def test_credentials_are_decoded_and_never_shown() -> None:
    """user:password@ is percent-decoded; repr and url leave the password out."""
    settings = parse_broker_url("mqtt://gate%40way:p%3Ass@broker:1883")
    assert settings.username == "gate@way"
    assert settings.password == "p:ss"
    assert settings.password_bytes() == b"p:ss"
    assert "p:ss" not in repr(settings) and "p%3Ass" not in repr(settings)
    assert settings.url == "mqtt://gate@way@broker:1883"


def test_query_options(tmp_path: Path) -> None:
    """Options come from the query string (- or _) and keyword overrides win."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    settings = parse_broker_url(
        f"mqtts://b?ca-file={ca}&protocol=3.1.1&keepalive=30&client_id_prefix=gw1-"
        "&outbox-limit=50&max-inflight=10&session-expiry=60&connect-timeout=2.5",
        keepalive=45,
    )
    assert settings.ca_file == str(ca)
    assert settings.protocol == "3.1.1"
    assert settings.keepalive == 45
    assert settings.client_id_prefix == "gw1-"
    assert (settings.outbox_limit, settings.max_inflight, settings.session_expiry) == (50, 10, 60)
    assert settings.connect_timeout == 2.5


@pytest.mark.parametrize(
    ("url", "key", "words"),
    [
        ("http://broker", "broker.url", "use mqtt:// or mqtts://"),
        ("broker:1883", "broker.url", "not supported"),
        ("mqtt://", "broker.url", "no host"),
        ("mqtt://broker:99999", "broker.url", "not a valid broker URL"),
        ("mqtt://broker/path", "broker.url", "unexpected path"),
        ("mqtt://broker?colour=blue", "broker.url?colour", "unknown option"),
        ("mqtt://broker?keepalive=soon", "broker.url?keepalive", "not an integer"),
        ("mqtt://broker?protocol=4", "broker.protocol", "not one of 5, 3.1.1"),
        ("mqtt://broker?insecure=maybe", "broker.url?insecure", "not a boolean"),
        ("mqtt://broker?insecure=true", "broker.insecure", "use mqtts://"),
        ("mqtts://broker?ca_file=/no/such/ca.pem", "broker.ca-file", "is not a file"),
        ("mqtt://:pw@broker", "broker.password", "without a username"),
        ("mqtt://broker?max-inflight=0", "broker.max-inflight", "not in 1..65000"),
    ],
)
def test_errors_name_the_problem(url: str, key: str, words: str) -> None:
    """Every invalid URL is a ConfigError with the key and a readable reason."""
    with pytest.raises(ConfigError) as info:
        parse_broker_url(url)
    assert info.value.key == key
    assert words in info.value.reason


def test_password_not_echoed_in_errors() -> None:
    """A bad URL with a password is reported without the password."""
    with pytest.raises(ConfigError) as info:
        parse_broker_url("mqtt://user:hunter2@broker:notaport")
    assert "hunter2" not in str(info.value)
    assert "user:***@" in str(info.value)


def test_ssl_context_verifies_by_default() -> None:
    """mqtts:// without options verifies the certificate and the host name."""
    context = parse_broker_url("mqtts://broker").ssl_context()
    assert context is not None
    assert context.check_hostname
    assert parse_broker_url("mqtt://broker").ssl_context() is None


def test_insecure_warns(caplog: pytest.LogCaptureFixture) -> None:
    """Verification is off only when asked, and that is logged at WARNING."""
    context = BrokerSettings("broker", 8883, tls=True, insecure=True).ssl_context()
    assert context is not None and not context.check_hostname
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_create_upstream_by_mode() -> None:
    """create_upstream takes settings or a URL and the mode name."""
    upstream = create_upstream("mqtt://broker", gateway_id="gw-1")
    assert isinstance(upstream, AggregatingUpstream)
    assert upstream.status_topic == "mqttsn/gateway/gw-1/status"
    assert upstream.client_id == "mqttsn-gw-gw-1"
    assert isinstance(
        create_upstream(parse_broker_url("mqtt://b"), "transparent"), TransparentUpstream
    )
    with pytest.raises(ConfigError, match=r"bridge\.mode"):
        create_upstream("mqtt://broker", "sideways")
