"""The ``[access]`` table: allow-list, topic rules, and per-node broker credentials.

```toml
[[access.clients]]              # allow-list; none: every ClientId may connect
client-id = "sensor-*"          # glob; default "*"
transport = "xbee"              # optional: udp, xbee, serial, ble, forwarded
address = "0013A200*"           # optional glob on the node's address as printed

[[access.rules]]                # topic rules; none: every topic allowed
client-id = "*"
publish = ["sensors/{client_id}/#"]
subscribe = ["cmd/{client_id}/#", "broadcast/#"]

[[access.credentials]]          # transparent mode: the node's own broker connection logs in as
client-id = "sensor-*"          # the first entry matching its ClientId (else as [broker] says)
username = "{client_id}"        # {client_id} is filled in
password-file = "/etc/mqttsn-gateway/sensors.secret"    # or password = "..."
```

The policy itself is pure and lives in ``gateway.core.access``; this module reads the TOML
(and password files) and prints it back for ``check-config`` with passwords as ``***``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.access import (
    CLIENT_ID_PLACEHOLDER,
    AccessPolicy,
    ClientPattern,
    TopicRule,
    check_topic_pattern,
)
from gateway.core.settings import Mode
from gateway.errors import ConfigError

__all__ = ["CredentialsLookup", "NodeCredentials", "access_toml", "credentials_lookup"]

#: ClientId -> (username, password) for that node's own broker connection, or None.
CredentialsLookup = Callable[[str], tuple[str, str | None] | None]

_ENTRY_KEYS: Mapping[str, frozenset[str]] = {
    "clients": frozenset({"client-id", "transport", "address"}),
    "rules": frozenset({"client-id", "publish", "subscribe"}),
    "credentials": frozenset({"client-id", "username", "password", "password-file"}),
}


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    """One ``[[access.credentials]]`` entry; the password is never shown by repr or logs."""

    client_id: str = "*"
    username: str = ""
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None

    def for_node(self, client_id: str) -> tuple[str, str | None]:
        """(username, password) for ``client_id``'s broker connection."""
        return self.username.replace(CLIENT_ID_PLACEHOLDER, client_id), self.password


def credentials_lookup(entries: Sequence[NodeCredentials]) -> CredentialsLookup:
    """A ClientId -> (username, password) function: the first matching entry wins."""
    patterns = [(ClientPattern(entry.client_id), entry) for entry in entries]

    def lookup(client_id: str) -> tuple[str, str | None] | None:
        for pattern, entry in patterns:
            if pattern.matches(client_id, None):
                return entry.for_node(client_id)
        return None

    return lookup


def parse_access(
    table: Mapping[str, Any], mode: Mode
) -> tuple[AccessPolicy, tuple[NodeCredentials, ...]]:
    """Validate ``[access]``; errors name the dotted key (``access.rules[0].publish``)."""
    for key in table:
        if key not in _ENTRY_KEYS:
            raise ConfigError(
                f"access.{key}", f"not recognised; known keys here: {', '.join(_ENTRY_KEYS)}"
            )
    clients = tuple(_client(key, e) for key, e in _entries(table, "clients"))
    rules = tuple(_rule(key, e) for key, e in _entries(table, "rules"))
    credentials = tuple(_credentials(key, e) for key, e in _entries(table, "credentials"))
    if credentials and mode is not Mode.TRANSPARENT:
        raise ConfigError(
            "access.credentials",
            "per-node broker credentials need transparent mode (gateway.mode = "
            '"transparent"); in aggregating mode every node shares the [broker] login',
        )
    return AccessPolicy(clients, rules), credentials


def _entries(table: Mapping[str, Any], name: str) -> list[tuple[str, Mapping[str, Any]]]:
    value = table.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"access.{name}", f"must be an array of tables: [[access.{name}]]")
    result = []
    for index, entry in enumerate(value):
        key = f"access.{name}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(key, f"must be a table: [[access.{name}]]")
        for option in entry:
            if option not in _ENTRY_KEYS[name]:
                known = ", ".join(sorted(_ENTRY_KEYS[name]))
                raise ConfigError(f"{key}.{option}", f"not recognised; known keys here: {known}")
        result.append((key, entry))
    return result


def _string(key: str, entry: Mapping[str, Any], option: str, default: str | None) -> str | None:
    value = entry.get(option, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{key}.{option}", f"{value!r} must be a non-empty string")
    return value


def _client(key: str, entry: Mapping[str, Any]) -> ClientPattern:
    try:
        return ClientPattern(
            _string(key, entry, "client-id", "*") or "*",
            _string(key, entry, "transport", None),
            _string(key, entry, "address", None),
        )
    except ValueError as exc:
        raise ConfigError(f"{key}.transport", str(exc)) from None


def _rule(key: str, entry: Mapping[str, Any]) -> TopicRule:
    lists: dict[str, tuple[str, ...]] = {}
    for option in ("publish", "subscribe"):
        value = entry.get(option, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}.{option}", f"{value!r} must be a list of topic filters")
        for pattern in value:
            try:
                check_topic_pattern(pattern)
            except ValueError as exc:
                raise ConfigError(f"{key}.{option}", str(exc)) from None
        lists[option] = tuple(value)
    return TopicRule(
        _string(key, entry, "client-id", "*") or "*", lists["publish"], lists["subscribe"]
    )


def _credentials(key: str, entry: Mapping[str, Any]) -> NodeCredentials:
    username = _string(key, entry, "username", None)
    if username is None:
        raise ConfigError(f"{key}.username", "is required")
    password = entry.get("password")
    password_file = _string(key, entry, "password-file", None)
    if password is not None and password_file is not None:
        raise ConfigError(f"{key}.password-file", "give password or password-file, not both")
    if password is not None and not isinstance(password, str):
        raise ConfigError(f"{key}.password", "must be a string")  # never echo the value
    if password_file is not None:
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"{key}.password-file", f"cannot read {password_file!r}: {reason or exc}"
            ) from None
        if not password:
            raise ConfigError(f"{key}.password-file", f"{password_file!r} is empty")
    client_id = _string(key, entry, "client-id", "*") or "*"
    return NodeCredentials(client_id, username, password, password_file)


def access_toml(policy: AccessPolicy, credentials: Sequence[NodeCredentials]) -> list[str]:
    """``[access]`` as TOML lines for ``check-config``; passwords shown as ``***``."""
    lines = ["", "[access]"]
    if not policy.clients:
        lines.append("# no [[access.clients]]: every ClientId may connect")
    if not policy.rules:
        lines.append("# no [[access.rules]]: every topic may be published and subscribed to")
    for client in policy.clients:
        lines += ["", "[[access.clients]]", f"client-id = {_q(client.client_id)}"]
        if client.transport is not None:
            lines.append(f"transport = {_q(client.transport)}")
        if client.address is not None:
            lines.append(f"address = {_q(client.address)}")
    for rule in policy.rules:
        lines += ["", "[[access.rules]]", f"client-id = {_q(rule.client_id)}"]
        lines.append(f"publish = {_q(list(rule.publish))}")
        lines.append(f"subscribe = {_q(list(rule.subscribe))}")
    for entry in credentials:
        lines += ["", "[[access.credentials]]", f"client-id = {_q(entry.client_id)}"]
        lines.append(f"username = {_q(entry.username)}")
        if entry.password_file is not None:
            lines.append(f"password-file = {_q(entry.password_file)}")
        elif entry.password is not None:
            lines.append('password = "***"')
    return lines


def _q(value: str | list[str]) -> str:
    """A TOML basic string (or array of them): JSON's escapes are valid TOML."""
    return json.dumps(value)
