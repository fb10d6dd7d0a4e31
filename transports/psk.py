"""Pre-shared keys for the DTLS transport: a TOML table and/or a key file; never printed.

Pure (no TLS library): ``check-config`` validates keys on a machine without python-mbedtls.

* ``[transports.dtls.psk]``: ``identity = "hex key"`` (16 bytes = 32 hex digits is usual).
* ``psk-file``: one ``identity:hexkey`` per line; blank lines and ``#`` comments are skipped.
  Keep it readable by the gateway's user only (``chmod 600``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["MAX_KEY_BYTES", "PskError", "PskTable", "load_psk"]

MAX_KEY_BYTES = 32  # Mbed TLS 2.28's MBEDTLS_PSK_MAX_LEN
_MAX_IDENTITY_BYTES = 128


class PskError(ValueError):
    """A key or identity is unusable; ``where`` is ``psk.<identity>`` or ``psk-file``."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class PskTable(dict[str, str]):
    """identity -> hex key as configured; its repr and str hide the keys."""

    def __repr__(self) -> str:
        return f"*** (identities: {', '.join(sorted(self))})"

    __str__ = __repr__


def _key(where: str, identity: str, value: object) -> tuple[str, bytes]:
    if not isinstance(identity, str) or not 1 <= len(identity.encode()) <= _MAX_IDENTITY_BYTES:
        raise PskError(where, f"identity must be 1..{_MAX_IDENTITY_BYTES} bytes of UTF-8")
    if isinstance(value, bytes | bytearray):
        key = bytes(value)
    elif isinstance(value, str):
        try:
            key = bytes.fromhex(value.strip().removeprefix("0x"))
        except ValueError:
            raise PskError(
                where, "the key is not hex digits (e.g. 32 digits for 16 bytes)"
            ) from None
    else:
        raise PskError(where, "the key must be a string of hex digits")
    if not 1 <= len(key) <= MAX_KEY_BYTES:
        raise PskError(where, f"the key must be 1..{MAX_KEY_BYTES} bytes, not {len(key)}")
    return identity, key


def load_psk(table: Mapping[str, object] | None, path: str | None) -> dict[str, bytes]:
    """Merge the ``psk`` table and the ``psk-file`` into identity -> key bytes.

    Raises:
        PskError: no key at all, a bad key, an unreadable file, or an identity given twice.
    """
    keys: dict[str, bytes] = {}
    for identity, value in (table or {}).items():
        name, key = _key(f"psk.{identity}", identity, value)
        keys[name] = key
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PskError("psk-file", f"cannot read {path}: {exc.strerror or exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            identity, sep, value = line.rpartition(":")
            if not sep:
                raise PskError("psk-file", f"{path} line {number}: use identity:hexkey")
            name, key = _key(f"psk-file ({path} line {number})", identity.strip(), value)
            if name in keys:
                raise PskError("psk-file", f"{path} line {number}: {name!r} is given twice")
            keys[name] = key
    if not keys:
        raise PskError("psk", "no key: add a [transports.<name>.psk] table or a psk-file")
    return keys
