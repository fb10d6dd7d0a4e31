"""Broker settings: parse ``mqtt://`` / ``mqtts://`` URLs into frozen, validated BrokerSettings."""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from gateway.errors import ConfigError

__all__ = ["BrokerSettings", "parse_broker_url"]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_PROTOCOLS = ("5", "3.1.1")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to reach the MQTT broker; validated on construction.

    Attributes:
        host: broker host name or IP address.
        port: TCP port (1883 for mqtt://, 8883 for mqtts:// unless given).
        tls: True for mqtts://.
        username: MQTT user name, or None.
        password: MQTT password, or None; never logged nor shown by repr.
        ca_file: PEM file of the CA(s) that sign the broker's certificate (default: system CAs).
        cert_file: PEM client certificate (with its key unless ``key_file`` is given).
        key_file: PEM private key of ``cert_file``.
        insecure: skip certificate and host name verification (only when explicitly asked).
        protocol: "5" (our own codec-based connection) or "3.1.1" (paho-mqtt).
        keepalive: MQTT keep-alive in seconds for gateway-owned connections.
        client_id_prefix: prepended to every client id this gateway sends to the broker.
        connect_timeout: seconds for TCP + TLS + CONNACK.
        outbox_limit: QoS 1/2 publishes held per connection while they cannot be sent.
        max_inflight: our cap on unacknowledged QoS 1/2 publishes per connection (the broker's
            Receive Maximum lowers it further).
        session_expiry: seconds the broker keeps a persistent session (MQTT 5) after a disconnect.
    """

    host: str
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = 60
    client_id_prefix: str = ""
    connect_timeout: float = 10.0
    outbox_limit: int = 10_000
    max_inflight: int = 1_000
    session_expiry: int = 86_400

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("broker.host", "is empty")
        if not 0 < self.port < 65536:
            raise ConfigError("broker.port", f"{self.port} is not in 1..65535")
        if self.protocol not in _PROTOCOLS:
            raise ConfigError("broker.protocol", f"{self.protocol!r} is not one of 5, 3.1.1")
        if not 0 <= self.keepalive <= 65535:
            raise ConfigError("broker.keepalive", f"{self.keepalive} is not in 0..65535")
        if self.connect_timeout <= 0:
            raise ConfigError("broker.connect-timeout", "must be > 0")
        if self.outbox_limit < 0:
            raise ConfigError("broker.outbox-limit", "must be >= 0")
        if not 1 <= self.max_inflight <= 65000:
            raise ConfigError("broker.max-inflight", f"{self.max_inflight} is not in 1..65000")
        if not 0 <= self.session_expiry <= 0xFFFFFFFF:
            raise ConfigError("broker.session-expiry", "is not in 0..4294967295")
        if self.password is not None and self.username is None:
            raise ConfigError("broker.password", "given without a username")
        tls_options = [
            name for name in ("ca_file", "cert_file", "key_file", "insecure") if getattr(self, name)
        ]
        if tls_options and not self.tls:
            raise ConfigError(
                f"broker.{tls_options[0].replace('_', '-')}",
                "is a TLS option but the scheme is mqtt://; use mqtts://",
            )
        if self.key_file and not self.cert_file:
            raise ConfigError("broker.key-file", "given without cert-file")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"broker.{name.replace('_', '-')}", f"{path!r} is not a file")

    @property
    def url(self) -> str:
        """The URL without credentials, for logs."""
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client SSLContext for mqtts:// (verification on unless ``insecure``), else None."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                "broker.ca-file" if self.ca_file else "broker.cert-file",
                f"cannot load TLS material: {exc}",
            ) from exc
        if self.insecure:
            _LOGGER.warning(
                "TLS certificate verification is OFF for %s (insecure=true): "
                "anyone on the path can impersonate the broker",
                self.url,
            )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def password_bytes(self) -> bytes | None:
        """The password as sent in CONNECT."""
        return None if self.password is None else self.password.encode()


# URL query option -> (field name, converter)
def _to_bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(key, f"{value!r} is not a boolean (true/false)")


def _to_int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(key, f"{value!r} is not an integer") from None


def _to_float(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(key, f"{value!r} is not a number") from None


def _to_str(key: str, value: str) -> str:
    return value


_QUERY_OPTIONS: dict[str, tuple[str, Any]] = {
    "ca_file": ("ca_file", _to_str),
    "cert_file": ("cert_file", _to_str),
    "key_file": ("key_file", _to_str),
    "insecure": ("insecure", _to_bool),
    "protocol": ("protocol", _to_str),
    "keepalive": ("keepalive", _to_int),
    "client_id_prefix": ("client_id_prefix", _to_str),
    "connect_timeout": ("connect_timeout", _to_float),
    "outbox_limit": ("outbox_limit", _to_int),
    "max_inflight": ("max_inflight", _to_int),
    "session_expiry": ("session_expiry", _to_int),
}


def parse_broker_url(url: str, *, key: str = "broker.url", **overrides: Any) -> BrokerSettings:
    """Parse ``mqtt[s]://[user[:password]@]host[:port][?option=value&...]`` into BrokerSettings.

    Query options (``-`` or ``_`` both accepted) are the BrokerSettings field names, e.g.
    ``mqtts://broker:8883?ca-file=/etc/ca.pem&protocol=3.1.1``; keyword ``overrides`` win over
    the URL. Errors are ConfigError naming ``key`` and the problem; the password is never echoed.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ConfigError(key, f"not a valid broker URL: {_redact(url)} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ConfigError(
            key, f"scheme {parts.scheme or '(none)'!r} is not supported; use mqtt:// or mqtts://"
        )
    if not host:
        raise ConfigError(key, f"no host in {_redact(url)}")
    if parts.path not in ("", "/"):
        raise ConfigError(key, f"unexpected path {parts.path!r} in broker URL")
    fields: dict[str, Any] = {
        "host": host,
        "port": port if port is not None else _DEFAULT_PORTS[scheme],
        "tls": scheme == "mqtts",
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
    }
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        option = name.replace("-", "_")
        if option not in _QUERY_OPTIONS:
            known = ", ".join(sorted(o.replace("_", "-") for o in _QUERY_OPTIONS))
            raise ConfigError(f"{key}?{name}", f"unknown option (known: {known})")
        field, convert = _QUERY_OPTIONS[option]
        fields[field] = convert(f"{key}?{name}", value)
    fields.update(overrides)
    try:
        return BrokerSettings(**fields)
    except TypeError as exc:
        raise ConfigError(key, str(exc)) from None


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"
