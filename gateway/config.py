"""The gateway's configuration: TOML (tomllib) validated once into frozen dataclasses.

Keys are kebab-case (``bind``, ``t-retry``, ``queue-per-client``); unknown keys are rejected
and every error names the dotted key and says how to fix it (``ConfigError``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.access_config import NodeCredentials, access_toml, parse_access
from gateway.bridge.url import BrokerSettings, parse_broker_url
from gateway.core.settings import CoreSettings, Mode
from gateway.errors import ConfigError
from transports.psk import PskError, PskTable, load_psk

__all__ = [
    "BleConfig",
    "DtlsConfig",
    "GatewayConfig",
    "SerialConfig",
    "UdpConfig",
    "XBeeConfig",
    "default_state_file",
    "load_config",
    "parse_config",
]


@dataclass(frozen=True, slots=True)
class UdpConfig:
    """``[transports.<name>]`` with ``type = "udp"``: MQTT-SN over UDP, IPv4 or IPv6."""

    bind: str = "0.0.0.0:1884"
    multicast_group: str | None = None
    multicast_port: int | None = None
    multicast_ttl: int = 1
    multicast_interface: str | None = None
    rcvbuf: int = 4 * 1024 * 1024
    max_frame: int = 1024


@dataclass(frozen=True, slots=True)
class SerialConfig:
    """``type = "serial"``: MQTT-SN frames on a serial line (pyserial URL)."""

    port: str = "/dev/ttyUSB0"
    baudrate: int = 115200
    framing: str = "plain"
    max_frame: int = 255


@dataclass(frozen=True, slots=True)
class XBeeConfig:
    """``type = "xbee"``: a Digi XBee coordinator in API mode on a serial port."""

    port: str = "/dev/ttyUSB0"
    baudrate: int = 9600
    api_mode: int = 2
    tx_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class BleConfig:
    """``type = "ble"``: Bluetooth LE central through bleak (Nordic UART Service by default)."""

    service_uuid: str = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
    rx_uuid: str = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
    tx_uuid: str = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
    name_prefix: str | None = None
    allow_addresses: list[str] | None = None
    max_connections: int = 8


@dataclass(frozen=True, slots=True)
class DtlsConfig:
    """``type = "dtls"``: MQTT-SN in DTLS 1.2 records with pre-shared keys, over UDP.

    Keys: a ``[transports.<name>.psk]`` table (``identity = "hex key"``) and/or ``psk-file``
    (``identity:hexkey`` lines); see ``transports.psk``. Keys are never printed (``***``).
    """

    bind: str = "0.0.0.0:1885"
    psk: Mapping[str, str] | None = None
    psk_file: str | None = None
    ciphers: list[str] | None = None  # None: transports.dtls.DEFAULT_CIPHERS
    handshake_timeout: float = 10.0
    retransmit_timeout: float = 1.0
    idle_timeout: float | None = None
    max_peers: int = 1000
    max_handshakes: int = 64
    max_frame: int = 1024

    def __post_init__(self) -> None:
        if self.psk is not None and not isinstance(self.psk, PskTable):
            object.__setattr__(self, "psk", PskTable(self.psk))  # repr/str hide the keys

    def check(self, prefix: str) -> None:
        """Raise ConfigError (naming the key under ``prefix``) unless the keys load."""
        try:
            load_psk(self.psk, self.psk_file)
        except PskError as exc:
            raise ConfigError(f"{prefix}.{exc.where}", exc.reason) from None
        if self.ciphers is not None and not all(isinstance(c, str) for c in self.ciphers):
            raise ConfigError(f"{prefix}.ciphers", "a list of Mbed TLS suite names")
        if not 0 < self.retransmit_timeout <= self.handshake_timeout:
            raise ConfigError(f"{prefix}.retransmit-timeout", "0 < it <= handshake-timeout")
        if min(self.max_peers, self.max_handshakes) < 1:
            raise ConfigError(f"{prefix}.max-peers", "max-peers and max-handshakes: at least 1")


_DEFAULT_STATE_MAX_BYTES = 64 * 1024 * 1024  # gateway.store.DEFAULT_MAX_BYTES (not imported: cheap)

TransportConfig = UdpConfig | SerialConfig | XBeeConfig | BleConfig | DtlsConfig
_TRANSPORT_TYPES: dict[str, type[Any]] = {
    "udp": UdpConfig,
    "serial": SerialConfig,
    "xbee": XBeeConfig,
    "ble": BleConfig,
    "dtls": DtlsConfig,
}


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole, effective configuration."""

    core: CoreSettings = field(default_factory=CoreSettings)
    broker: BrokerSettings = field(default_factory=lambda: parse_broker_url("mqtt://localhost"))
    transports: Mapping[str, TransportConfig] = field(default_factory=lambda: {"udp": UdpConfig()})
    log_level: str = "INFO"
    gateway_name: str = "mqttsn-gateway"
    #: ``[gateway] state-file``: the SQLite state file; ":memory:" keeps state in memory only.
    #: None (not set): ``mqttsn-gateway run`` uses ``default_state_file()``; a GatewayRuntime
    #: built from this object keeps state in memory.
    state_file: str | None = None
    #: ``[gateway] state-max-bytes``: the cap on the state file's size (SD cards).
    state_max_bytes: int = _DEFAULT_STATE_MAX_BYTES
    #: ``[[access.credentials]]``: per-node broker logins (transparent mode); see access_config.
    credentials: tuple[NodeCredentials, ...] = ()

    def to_toml(self) -> str:
        """The effective configuration as TOML (secrets redacted), for ``check-config``."""
        lines = ["[gateway]", f'name = "{self.gateway_name}"', f'log-level = "{self.log_level}"']
        lines.append(_toml_line("state_file", self.state_file))
        lines.append(_toml_line("state_max_bytes", self.state_max_bytes))
        lines += ["", "[broker]", f'url = "{self.broker.url}"']
        for f in dataclasses.fields(self.broker):
            if f.name in ("host", "port", "tls", "username", "password"):
                continue
            lines.append(_toml_line(f.name, getattr(self.broker, f.name)))
        if self.broker.password is not None:
            lines.append('password = "***"')
        lines += ["", "[mqttsn]"]
        for f in dataclasses.fields(self.core):
            if f.name not in ("predefined", "access"):
                lines.append(_toml_line(f.name, getattr(self.core, f.name)))
        lines += ["", "[predefined]"]
        lines += [f'{tid} = "{name}"' for tid, name in sorted(self.core.predefined.items())]
        for name, transport in self.transports.items():
            kind = next(k for k, v in _TRANSPORT_TYPES.items() if isinstance(transport, v))
            lines += ["", f"[transports.{name}]", f'type = "{kind}"']
            lines += [
                _toml_line(f.name, getattr(transport, f.name))
                for f in dataclasses.fields(transport)
            ]
        lines += access_toml(self.core.access, self.credentials)
        return "\n".join(line for line in lines if line is not None) + "\n"


def _toml_line(name: str, value: Any) -> str:
    key = name.replace("_", "-")
    if value is None:
        return f"# {key} = (not set)"
    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    if isinstance(value, Mode):
        return f'{key} = "{value.value}"'
    if isinstance(value, int | float):
        return f"{key} = {value}"
    if isinstance(value, list):
        return f"{key} = [{', '.join(repr(v) for v in value)}]"
    return f'{key} = "{value}"'


# ---------------------------------------------------------------------------------------------


def default_state_file() -> str:
    """Where ``run`` keeps its state without ``--state``: the data directory.

    ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``), else ``$XDG_STATE_HOME`` or
    ``~/.local/state``, in ``mqttsn-gateway/``; the file is ``state.sqlite``.
    """
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return str(Path(systemd) / "state.sqlite")
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return str(base / "mqttsn-gateway" / "state.sqlite")


def load_config(path: str | Path, **overrides: Any) -> GatewayConfig:
    """Read and validate a TOML file; ``overrides`` are the CLI's (see ``parse_config``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, **overrides)


def parse_config(
    data: Mapping[str, Any],
    *,
    udp: str | None = None,
    broker: str | None = None,
    mode: str | None = None,
    predefined: Mapping[int, str] | None = None,
    log_level: str | None = None,
    state: str | None = None,
) -> GatewayConfig:
    """Validate a parsed TOML document; keyword arguments override what the file says."""
    _reject_unknown("", data, {"gateway", "broker", "mqttsn", "predefined", "transports", "access"})
    gw = _table(data, "gateway")
    _reject_unknown(
        "gateway", gw, {"name", "log-level", "id", "mode", "state-file", "state-max-bytes"}
    )
    mqttsn = dict(_table(data, "mqttsn"))
    if "id" in gw:
        mqttsn.setdefault("gw-id", gw["id"])
    if "mode" in gw:
        mqttsn.setdefault("mode", gw["mode"])
    if mode is not None:
        mqttsn["mode"] = mode
    pre = _predefined(_table(data, "predefined"))
    if predefined:
        pre.update(predefined)
    mqttsn.pop("predefined", None)
    core_kwargs = _fields_from(CoreSettings, mqttsn, "mqttsn", exclude={"predefined", "access"})
    if "mode" in core_kwargs:
        try:
            core_kwargs["mode"] = Mode(core_kwargs["mode"])
        except ValueError:
            raise ConfigError(
                "gateway.mode", f"{core_kwargs['mode']!r}: use aggregating or transparent"
            ) from None
    try:
        access, credentials = parse_access(
            _table(data, "access"), core_kwargs.get("mode", Mode.AGGREGATING)
        )
        core = CoreSettings(predefined=pre, access=access, **core_kwargs)
    except ValueError as exc:
        raise ConfigError("mqttsn", str(exc)) from None

    broker_table = dict(_table(data, "broker"))
    url = broker or broker_table.pop("url", "mqtt://localhost:1883")
    broker_table.pop("url", None)
    broker_kwargs = _fields_from(
        BrokerSettings, broker_table, "broker", exclude={"host", "port", "tls"}
    )
    broker_settings = parse_broker_url(url, **broker_kwargs)

    transports = _transports(_table(data, "transports"), udp)
    level = (log_level or gw.get("log-level") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("gateway.log-level", f"{level!r}: use DEBUG, INFO, WARNING or ERROR")
    state_file = state if state is not None else gw.get("state-file")
    if state_file is not None and (not isinstance(state_file, str) or not state_file):
        raise ConfigError("gateway.state-file", f'{state_file!r}: a path, or ":memory:"')
    max_bytes = gw.get("state-max-bytes", _DEFAULT_STATE_MAX_BYTES)
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 65536:
        raise ConfigError("gateway.state-max-bytes", f"{max_bytes!r}: an integer >= 65536")
    return GatewayConfig(
        core,
        broker_settings,
        transports,
        level,
        str(gw.get("name", "mqttsn-gateway")),
        state_file,
        max_bytes,
        credentials,
    )


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a table ([" + key + "])")
    return value


def _reject_unknown(prefix: str, table: Mapping[str, Any], known: set[str]) -> None:
    for key in table:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else key
            raise ConfigError(
                dotted, f"not recognised; known keys here: {', '.join(sorted(known))}"
            )


def _predefined(table: Mapping[str, Any]) -> dict[int, str]:
    result: dict[int, str] = {}
    for key, value in table.items():
        try:
            topic_id = int(key)
        except ValueError:
            raise ConfigError(
                f"predefined.{key}", 'keys are topic ids (1..65534), e.g. 1 = "a/b"'
            ) from None
        if not isinstance(value, str):
            raise ConfigError(f"predefined.{key}", "must be a topic name string")
        result[topic_id] = value
    return result


def _transports(table: Mapping[str, Any], udp_override: str | None) -> dict[str, TransportConfig]:
    result: dict[str, TransportConfig] = {}
    for name, options in table.items():
        if not isinstance(options, Mapping):
            raise ConfigError(f"transports.{name}", "must be a table")
        options = dict(options)
        kind = options.pop("type", name)
        cls = _TRANSPORT_TYPES.get(kind)
        if cls is None:
            raise ConfigError(
                f"transports.{name}.type", f"{kind!r}: use one of {', '.join(_TRANSPORT_TYPES)}"
            )
        if options.pop("enabled", True) is False:
            continue
        result[name] = cls(**_fields_from(cls, options, f"transports.{name}"))
    if udp_override is not None:
        existing = result.get("udp")
        base = existing if isinstance(existing, UdpConfig) else UdpConfig()
        result["udp"] = dataclasses.replace(base, bind=udp_override)
    if not table and udp_override is None:
        result["udp"] = UdpConfig()
    for name, transport in result.items():
        if isinstance(transport, UdpConfig | DtlsConfig):
            split_host_port(transport.bind, f"transports.{name}.bind")
        if isinstance(transport, DtlsConfig):
            transport.check(f"transports.{name}")
    if not result:
        raise ConfigError("transports", "no transport enabled; add e.g. [transports.udp]")
    return result


def split_host_port(value: str, key: str) -> tuple[str, int]:
    """``"0.0.0.0:1884"`` / ``"[::]:1884"`` -> (host, port), or ConfigError on ``key``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:1884 or [::]:1884)")
    return host.strip("[]") or "0.0.0.0", int(port)


def _fields_from(
    cls: type[Any],
    table: Mapping[str, Any],
    prefix: str,
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[str, Any]:
    """Map kebab-case keys onto ``cls``'s fields, type-checking each value."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    known = {name.replace("_", "-") for name in fields}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in fields or "_" in key:
            raise ConfigError(
                f"{prefix}.{key}",
                f"not recognised; known keys here: {', '.join(sorted(known))}",
            )
        kwargs[name] = _check_type(f"{prefix}.{key}", value, hints[name])
    return kwargs


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        for option in options:
            try:
                return _check_type(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(key, f"{value!r} has the wrong type; expected {hint}")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(key, f"{value!r}: use one of {typing.get_args(hint)}")
    if origin in (list, Mapping, dict) or hint in (list, dict):
        if isinstance(value, list | dict):
            return value
        raise ConfigError(key, f"{value!r} must be a {'list' if origin is list else 'table'}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"{value!r} must be a number")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"{value!r} must be an integer")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"{value!r} must be true or false")
    if hint is str or (isinstance(hint, type) and issubclass(hint, str)):
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"{value!r} must be a string")
    return value
