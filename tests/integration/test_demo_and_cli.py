"""The commands a user types: the demo, --help, check-config, and a clean SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli import main

GATEWAY = [sys.executable, "-m", "gateway"]


def test_demo_shows_both_directions_and_the_sleeping_node() -> None:
    """`mqttsn-gateway demo --duration` prints uplink, broker side, buffering and wake delivery."""
    result = subprocess.run(
        [*GATEWAY, "demo", "--duration", "6"], capture_output=True, text=True, timeout=60
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "published demo/sensor-1/temp" in out
    assert "broker   got demo/sensor-1/temp" in out
    assert "sleepy is asleep: buffered 1 message(s)" in out
    assert "woke up and received demo/sleepy/cmd = 'blink 1'" in out
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_stops_cleanly_on_signal(sig: signal.Signals) -> None:
    """Ctrl-C (or SIGTERM) stops the demo with exit code 0 and no traceback."""
    proc = subprocess.Popen(
        [*GATEWAY, "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "broker   got" in line:
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "done" in out


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names run, demo and check-config and shows examples."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("run", "demo", "check-config", "examples:"):
        assert word in text


def test_run_help_lists_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    """`run --help` documents every override the README promises."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for option in ("--config", "--udp", "--broker", "--mode", "--predefined", "--log-level"):
        assert option in text


def test_check_config_prints_effective_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config validates a file and prints the effective values."""
    config = tmp_path / "gw.toml"
    config.write_text(
        '[gateway]\nmode = "transparent"\n[broker]\nurl = "mqtt://user:secret@broker:1883"\n'
        '[predefined]\n1 = "sensors/temp"\n[transports.udp]\nbind = "[::]:1884"\n'
    )
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert 'mode = "transparent"' in out
    assert '1 = "sensors/temp"' in out
    assert 'bind = "[::]:1884"' in out
    assert "secret" not in out  # secrets never printed


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[mqttsn]\nt-retyr = 3\n", "mqttsn.t-retyr"),
        ("[transports.udp]\nbind = 'nonsense'\n", "transports.udp.bind"),
        ("[transports.radio]\ntype = 'lora'\n", "transports.radio.type"),
        ("[broker]\nurl = 'http://x'\n", "broker.url"),
        ("[mqttsn]\nn-retry = 'three'\n", "mqttsn.n-retry"),
        ("[predefined]\nabc = 'x'\n", "predefined.abc"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, key: str
) -> None:
    """A bad config exits 2 with the dotted key in the message, no traceback."""
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    assert main(["check-config", str(config)]) == 2
    assert key in capsys.readouterr().err


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """deploy/gateway.example.toml, the file users copy, passes check-config."""
    example = Path(__file__).parents[2] / "deploy" / "gateway.example.toml"
    assert main(["check-config", str(example)]) == 0
    assert '2 = "sensors/humidity"' in capsys.readouterr().out
