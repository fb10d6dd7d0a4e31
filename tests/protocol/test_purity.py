"""The protocol and core packages stay pure: no I/O, event loop, radio, broker client or clock."""

from __future__ import annotations

import ast
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway

FORBIDDEN = frozenset(
    {
        "asyncio",
        "socket",
        "selectors",
        "serial",
        "bleak",
        "aiomqtt",
        "paho",
        "mqtt5",
        "time",
        "datetime",
    }
)
PURE_PACKAGES = ("protocol", "core")
ROOT = Path(gateway.__file__).parent


def iter_module_files(directory: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    """(dotted name, file) of every module under ``directory``, found with pkgutil, not imported."""
    if (directory / "__init__.py").is_file():
        yield prefix, directory / "__init__.py"
    for info in pkgutil.iter_modules([str(directory)]):
        name = f"{prefix}.{info.name}"
        if info.ispkg:
            yield from iter_module_files(directory / info.name, name)
        else:
            yield name, directory / f"{info.name}.py"


def forbidden_imports(source: str) -> list[str]:
    """Top-level names of forbidden modules that ``source`` imports, statically or by name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (level > 0) stay inside the package.
            names = [node.module] if node.module and node.level == 0 else []
        elif (
            # importlib.import_module("x") / __import__("x"): dynamic imports count too.
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        found += [
            f"{name} (line {node.lineno})" for name in names if name.split(".")[0] in FORBIDDEN
        ]
    return found


def pure_modules() -> list[tuple[str, Path]]:
    """Every module of the pure packages that exists so far."""
    modules = []
    for package in PURE_PACKAGES:
        directory = ROOT / package
        if directory.is_dir():
            modules += list(iter_module_files(directory, f"gateway.{package}"))
    return modules


def test_protocol_package_is_found() -> None:
    """The walk sees the codec itself, so an empty result can never pass silently."""
    names = {name for name, _ in pure_modules()}
    assert {"gateway.protocol", "gateway.protocol.codec", "gateway.protocol.messages"} <= names


@pytest.mark.parametrize(("name", "path"), pure_modules(), ids=[n for n, _ in pure_modules()])
def test_module_is_pure(name: str, path: Path) -> None:
    """DESIGN §1: gateway.protocol and gateway.core import no asyncio, sockets, radios or clock."""
    bad = forbidden_imports(path.read_text(encoding="utf-8"))
    assert not bad, f"{name} imports {', '.join(bad)}"


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import os, socket",
        "import time as clock",
        "from datetime import datetime",
        "from serial.tools import list_ports",
        "import paho.mqtt.client",
        "def f():\n    import bleak",
        "import importlib\nimportlib.import_module('aiomqtt')",
        "__import__('selectors')",
        "from mqtt5 import Packet",
    ],
)
def test_checker_catches(source: str) -> None:
    """The checker itself finds each kind of forbidden import."""
    assert forbidden_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "import struct",
        "from . import time",
        "from gateway.protocol import messages",
        "import timeit_like",
        "from typing import Final",
    ],
)
def test_checker_allows(source: str) -> None:
    """Pure imports, relative imports and look-alike names pass."""
    assert not forbidden_imports(source)
