"""Transport registry: a configuration type name maps to a factory, imported only when used.

A Pi without bleak or an XBee library still runs UDP: ``create_transport("udp", ...)`` imports
only :mod:`transports.udp`. ``create_transport`` also accepts one ``[transports.<name>]``
table (a mapping with ``type``, or a typed config object such as ``UdpConfig``) and turns its
keys into the constructor's keywords (``bind = "host:port"``, ``port`` = the pyserial URL).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from transports.base import Address, FrameSink, LinkEvent, LinkEventSink, Transport, UdpAddress

__all__ = [
    "Address",
    "FrameSink",
    "LinkEvent",
    "LinkEventSink",
    "Transport",
    "TransportFactory",
    "UdpAddress",
    "create_transport",
    "register_transport",
    "transport_factory",
    "transport_names",
]

TransportFactory = Callable[..., Transport]

# name -> "module:attribute" (imported on first use) or a factory already at hand.
_REGISTRY: dict[str, str | TransportFactory] = {
    "udp": "transports.udp:UdpTransport",
    "serial": "transports.serial:SerialTransport",
    "xbee": "transports.xbee:XBeeTransport",
    "ble": "transports.ble:BleTransport",
    "dtls": "transports.dtls:DtlsTransport",
}

# What to install when a medium's import fails.
_INSTALL_HINTS: dict[str, str] = {
    "serial": "pip install pyserial pyserial-asyncio",
    "xbee": "pip install 'mqttsn-gateway[xbee]'",
    "ble": "pip install 'mqttsn-gateway[ble]'",
    "dtls": "pip install 'mqttsn-gateway[dtls]'",
}


def transport_names() -> tuple[str, ...]:
    """The names a configuration may use, sorted."""
    return tuple(sorted(_REGISTRY))


def register_transport(name: str, factory: str | TransportFactory) -> None:
    """Add or replace a transport: a ``"module:attribute"`` path or a callable returning one."""
    if isinstance(factory, str) and ":" not in factory:
        raise ValueError(
            f"transport factory path must look like 'module:attribute', not {factory!r}"
        )
    _REGISTRY[name] = factory


def transport_factory(name: str) -> TransportFactory:
    """The factory for ``name``, importing its module now.

    Raises:
        ValueError: no transport has that name.
        TransportError: the module or a library it needs is not installed.
    """
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown transport {name!r}; known: {', '.join(transport_names())}"
        ) from None
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        from gateway.errors import TransportError  # only on failure: keep transports standalone

        hint = _INSTALL_HINTS.get(name, "check the installation")
        raise TransportError(f"transport {name!r} is unavailable ({exc}); {hint}") from exc
    factory: TransportFactory = getattr(module, attribute)
    _REGISTRY[name] = factory
    return factory


def create_transport(name: str, options: object = None, /, **overrides: Any) -> Transport:
    """Build a transport: ``create_transport("udp", bind_port=0)`` or ``(name, config_table)``.

    Args:
        name: the transport type, or the instance name of a config table.
        options: None, a mapping (its ``type`` key names the transport type, default ``name``)
            or a config dataclass (``UdpConfig`` -> ``"udp"``); its keys become keywords.
        overrides: constructor keywords, applied last.
    """
    kind, kwargs = _options(name, options)
    kwargs.update(overrides)
    return transport_factory(kind)(**kwargs)


def _options(name: str, options: object) -> tuple[str, dict[str, Any]]:
    if options is None:
        return name, {}
    if isinstance(options, Mapping):
        kwargs = {
            k.replace("-", "_"): v for k, v in options.items() if k not in ("type", "enabled")
        }
        kind = str(options.get("type", name))
    elif dataclasses.is_dataclass(options) and not isinstance(options, type):
        kwargs = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        guessed = type(options).__name__.lower().removesuffix("config")
        kind = guessed if guessed in _REGISTRY else name
    else:
        raise TypeError(f"transport options must be a mapping or a dataclass, not {options!r}")
    kwargs.setdefault("name", name)
    adapt = _ADAPTERS.get(kind)
    return kind, adapt(kwargs) if adapt is not None else kwargs


def _split_host_port(value: str) -> tuple[str, int]:
    """``"0.0.0.0:1884"`` / ``"[::]:1884"`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind must look like HOST:PORT or [IPV6]:PORT, not {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _adapt_udp(kwargs: dict[str, Any]) -> dict[str, Any]:
    if "bind" in kwargs:
        kwargs["bind_host"], kwargs["bind_port"] = _split_host_port(kwargs.pop("bind"))
    return kwargs


def _adapt_port_to_url(kwargs: dict[str, Any]) -> dict[str, Any]:
    if "port" in kwargs:
        kwargs["url"] = kwargs.pop("port")
    return kwargs


def _adapt_ble(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("allow_addresses") is not None:
        kwargs["allow_addresses"] = set(kwargs["allow_addresses"])
    return kwargs


def _adapt_dtls(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = _adapt_udp(kwargs)
    if "psk" in kwargs or "psk_file" in kwargs:
        from transports.psk import load_psk  # pure; hex table and key file -> bytes

        kwargs["psk"] = load_psk(kwargs.get("psk"), kwargs.pop("psk_file", None))
    if kwargs.get("ciphers") is None:
        kwargs.pop("ciphers", None)
    return kwargs


# Config keys that differ from constructor keywords, per transport type.
_ADAPTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "udp": _adapt_udp,
    "serial": _adapt_port_to_url,
    "xbee": _adapt_port_to_url,
    "ble": _adapt_ble,
    "dtls": _adapt_dtls,
}
