"""The ``mqttsn-gateway`` command: run, demo, check-config. Argument handling only; no logic."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from gateway.config import GatewayConfig, default_state_file, load_config, parse_config
from gateway.errors import ConfigError, GatewayError
from gateway.store import StoreError

__all__ = ["main"]

_LOGGER = logging.getLogger("gateway")

EPILOG = """\
examples:
  mqttsn-gateway demo                                   # everything on this machine, no set-up
  mqttsn-gateway run --broker mqtt://localhost:1883     # UDP on 0.0.0.0:1884
  mqttsn-gateway run --config /etc/mqttsn-gateway/gateway.toml
  mqttsn-gateway check-config gateway.toml
"""


def _predefined(value: str) -> tuple[int, str]:
    topic_id, sep, topic = value.partition("=")
    if not sep or not topic_id.strip().isdigit() or not topic:
        raise argparse.ArgumentTypeError(f"{value!r} is not ID=TOPIC (e.g. 1=sensors/temp)")
    return int(topic_id), topic


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and --help)."""
    parser = argparse.ArgumentParser(
        prog="mqttsn-gateway",
        description=(
            "MQTT-SN 1.2 gateway: UDP, XBee, serial and Bluetooth LE sensor nodes "
            "to an MQTT broker."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run", help="run the gateway", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_overrides(run)

    demo = sub.add_parser("demo", help="embedded broker + gateway + simulated nodes, printed live")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: until Ctrl-C)",
    )
    demo.add_argument(
        "--nodes",
        type=int,
        default=3,
        metavar="N",
        help="simulated nodes besides the sleeping one (default 3)",
    )
    demo.add_argument(
        "--log-level", default="WARNING", help="gateway log level shown (default WARNING)"
    )

    check = sub.add_parser(
        "check-config", help="validate a config file and print the effective config"
    )
    check.add_argument("file", help="TOML configuration file")
    _add_overrides(check, with_config=False)
    return parser


def _add_overrides(parser: argparse.ArgumentParser, with_config: bool = True) -> None:
    if with_config:
        parser.add_argument(
            "--config",
            "-c",
            metavar="FILE",
            help="TOML configuration file (see deploy/gateway.example.toml)",
        )
    parser.add_argument(
        "--udp",
        metavar="HOST:PORT",
        help="UDP listen address (default 0.0.0.0:1884; [::]:1884 for IPv6)",
    )
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="broker URL: mqtt://host:1883 or mqtts://host:8883 (default mqtt://localhost:1883)",
    )
    parser.add_argument(
        "--mode",
        choices=("aggregating", "transparent"),
        help="one broker connection for all nodes (default) or one per node",
    )
    parser.add_argument(
        "--predefined",
        action="append",
        type=_predefined,
        default=[],
        metavar="ID=TOPIC",
        help="pre-defined topic id (repeatable)",
    )
    parser.add_argument(
        "--state",
        metavar="PATH",
        help=(
            "state file (SQLite) so sessions and buffered messages survive a restart; default "
            "$STATE_DIRECTORY/state.sqlite or ~/.local/state/mqttsn-gateway/state.sqlite; "
            ":memory: keeps state in memory only"
        ),
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="log level (default INFO)",
    )


def _config_from(args: argparse.Namespace, path: str | None) -> GatewayConfig:
    overrides: dict[str, Any] = {
        "udp": args.udp,
        "broker": args.broker,
        "mode": args.mode,
        "predefined": dict(args.predefined),
        "log_level": args.log_level,
        "state": args.state,
    }
    config = load_config(path, **overrides) if path else parse_config({}, **overrides)
    if config.state_file is None:
        config = dataclasses.replace(config, state_file=default_state_file())
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            config = _config_from(args, args.file)
            sys.stdout.write(config.to_toml())
            return 0
        if args.command == "demo":
            from gateway.demo import run_demo

            return _run_async(
                run_demo(duration=args.duration, nodes=args.nodes, log_level=args.log_level)
            )
        config = _config_from(args, args.config)
        _setup_logging(config.log_level)
        return _run_async(_run(config))
    except ConfigError as exc:
        sys.stderr.write(f"mqttsn-gateway: configuration error: {exc}\n")
        return 2
    except StoreError as exc:
        sys.stderr.write(f"mqttsn-gateway: {exc}\n")
        return 2
    except GatewayError as exc:
        sys.stderr.write(f"mqttsn-gateway: {exc}\n")
        return 1


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )


def _run_async(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stdlib loop still works
        return int(asyncio.run(coro))
    # Outside the try: an ImportError raised by the gateway itself must show as such.
    return int(uvloop.run(coro))


async def _run(config: GatewayConfig) -> int:
    from gateway.runtime import GatewayRuntime

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with GatewayRuntime(config) as runtime:
        _LOGGER.info("gateway running: %r (broker %s)", runtime, config.broker.url)
        await stop.wait()
        _LOGGER.info("signal received, shutting down")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
