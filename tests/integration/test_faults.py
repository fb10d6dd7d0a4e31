"""Faults around the gateway: a broker refusing it, wall-clock steps, a full disk.

Each fault must produce one clear log line and leave the gateway running and serving. The
fourth fault of the issue, a serial port that vanishes and returns, is covered where the
transports are: ``tests/transports/test_serial.py::test_port_vanishes_and_comes_back`` and
``tests/transports/test_xbee_transport.py::test_unplug_and_replug_reconnects``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from firmware_sim.node import SimNode
from firmware_sim.udp_link import UdpNodeLink
from gateway.config import parse_config
from gateway.protocol import (
    Connack,
    Connect,
    WillMsg,
    WillMsgReq,
    WillTopic,
    WillTopicReq,
    decode,
    encode,
)
from gateway.runtime import GatewayRuntime
from tests.integration.conftest import Observer, wait_for
from tests.mosquitto import MosquittoBroker, free_port

# ------------------------------------------------------------------------------ helpers


class CliGateway:
    """``python -m gateway run`` in a subprocess, its output in a file, for faults we inject
    from outside (environment, broker): the process must survive them on its own."""

    def __init__(self, directory: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.log_path = directory / "gateway.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--udp",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "INFO",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def log(self) -> str:
        """What the gateway printed so far."""
        return self.log_path.read_text(errors="replace")

    def lines(self, level: str) -> list[str]:
        """Its log lines of ``level`` (the CLI's format: date time LEVEL name: message)."""
        return [line for line in self.log().splitlines() if f" {level} " in line[:40]]

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM, wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


async def ask(port: int, *frames: bytes, timeout: float = 2.0) -> list[object]:
    """Send frames from one fresh UDP socket, each answered by one datagram; the answers."""
    loop = asyncio.get_running_loop()
    answers: list[object] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        for frame in frames:
            await loop.sock_sendall(sock, frame)
            answers.append(decode(await asyncio.wait_for(loop.sock_recv(sock, 2048), timeout)))
    return answers


async def connect_with_will_then_vanish(port: int, client_id: str, will_topic: str) -> None:
    """CONNECT with a will and keep-alive 2 s from a raw socket, then never send again."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        steps = [
            (encode(Connect(client_id, 2, will=True)), WillTopicReq),
            (encode(WillTopic(will_topic)), WillMsgReq),
            (encode(WillMsg(b"gone")), Connack),
        ]
        for frame, answer in steps:
            await loop.sock_sendall(sock, frame)
            reply = decode(await asyncio.wait_for(loop.sock_recv(sock, 2048), 2))
            assert isinstance(reply, answer), reply


@contextlib.asynccontextmanager
async def observing(broker: MosquittoBroker, topic_filter: str) -> AsyncIterator[Observer]:
    """An MQTT subscriber recording what arrives on ``topic_filter``."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic_filter, qos=1)
        observer = Observer(client)
        try:
            yield observer
        finally:
            await observer.close()


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory Mosquitto can read after dropping root (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mqttsn-faults-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------ broker refusal


@pytest.fixture
def auth_broker(world_dir: Path) -> Iterator[MosquittoBroker]:
    """A broker that admits only alice/secret."""
    passwords = world_dir / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "secret"],
        check=True,
        capture_output=True,
    )
    passwords.chmod(0o644)
    broker = MosquittoBroker(extra_config=f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.parametrize(
    ("credentials", "protocol"),
    [("", "5"), ("alice:wrong-pw@", "5"), ("alice:wrong-pw@", "3.1.1")],
    ids=["anonymous", "wrong-password", "wrong-password-mqtt311"],
)
async def test_broker_refusing_the_gateway_is_one_clear_error_and_no_retry_storm(
    auth_broker: MosquittoBroker, tmp_path: Path, credentials: str, protocol: str
) -> None:
    """Bad or missing credentials: one ERROR naming them, at most 2 attempts in 3 s, alive."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'[broker]\nprotocol = "{protocol}"\n[mqttsn]\nt-adv = 0\n')
    before = len(auth_broker.log_text())
    url = f"mqtt://{credentials}{auth_broker.host}:{auth_broker.port}"
    gateway = CliGateway(tmp_path, "--broker", url, "--config", str(config), "--state", ":memory:")
    try:
        await asyncio.sleep(3.5)
        assert gateway.alive(), gateway.log()
        # Nodes still get an answer (whatever the gateway decides while it has no broker).
        answers = await ask(gateway.port, encode(Connect("while-refused", 30)))
        assert isinstance(answers[0], Connack), answers
    finally:
        status = gateway.stop()
    log = gateway.log()
    errors = gateway.lines("ERROR")
    assert len(errors) == 1, log
    assert "refused the credentials" in errors[0] and "check username/password" in errors[0], log
    assert "wrong-pw" not in log  # never log a password
    assert "Traceback" not in log, log
    attempts = auth_broker.log_text()[before:].count("New connection from")
    assert 1 <= attempts <= 2, auth_broker.log_text()[before:]
    assert status == 0, log


# ------------------------------------------------------------------------------ clock steps


def _libfaketime() -> str | None:
    for pattern in ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", re.MULTILINE)


def _log_dates(log: str) -> list[datetime]:
    return [datetime.strptime(m, "%Y-%m-%d %H:%M:%S") for m in _STAMP.findall(log)]


async def test_wall_clock_steps_do_not_move_gateway_timers(
    mosquitto: MosquittoBroker, tmp_path: Path, unique_topic: str
) -> None:
    """NTP steps the wall clock 400 days forward, then 800 back, under a running gateway.

    What it proves: the gateway process (libfaketime steps CLOCK_REALTIME only; the monotonic
    clock runs on, as under a real NTP step) keeps a pinging node, does not lose a sleeping
    node nor its buffered message across a forward step, still declares a silent node lost
    after 1.5 x keep-alive and publishes its will after a backward step, and logs no error.
    The log's own timestamps show the steps took effect in the process. What it does not
    prove: a step while the gateway is stopped (the state file's wall-clock anchor), and
    anything time.sleep-based (libfaketime breaks time.sleep when monotonic is not faked;
    the gateway does not call it).
    """
    library = _libfaketime()
    if library is None:
        pytest.fail("libfaketime is not installed: apt-get install faketime (.ci/run does)")
    stamp = tmp_path / "faketime"
    stamp.write_text("+0\n")
    env = {
        "LD_PRELOAD": library,
        "FAKETIME_TIMESTAMP_FILE": str(stamp),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    gateway = CliGateway(
        tmp_path,
        "--broker",
        mosquitto.url,
        "--state",
        str(tmp_path / "state.sqlite"),
        env=env,
    )
    link = ("127.0.0.1", gateway.port)
    try:
        async with observing(mosquitto, f"{unique_topic}/#") as observer:
            await _until_answering(gateway)
            steady = SimNode("clock-steady", UdpNodeLink(link), t_retry=1.0)
            sleeper = SimNode("clock-sleeper", UdpNodeLink(link), t_retry=1.0)
            async with steady, sleeper:
                await steady.connect(
                    keepalive=2, will=(f"{unique_topic}/will/steady", b"x", 1, False)
                )
                await sleeper.connect(keepalive=30, clean_session=False)
                await sleeper.subscribe(f"{unique_topic}/cmd", qos=1)
                await steady.publish(f"{unique_topic}/up", b"before", qos=1)
                await sleeper.sleep(6)  # lost only after 9 s of silence

                stamp.write_text("+400d\n")  # forward: a Pi without RTC gets its NTP time
                await asyncio.sleep(1.0)
                async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
                    await publisher.publish(f"{unique_topic}/cmd", b"wake-up", qos=1)
                await asyncio.sleep(4.0)  # > 1.5 x steady's keep-alive, it pings meanwhile
                await steady.publish(f"{unique_topic}/up", b"after-forward", qos=1)
                woken = await sleeper.wake()
                assert [bytes(m.payload) for m in woken] == [b"wake-up"]

                stamp.write_text("-400d\n")  # backward, 800 days at once
                await asyncio.sleep(1.0)
                await connect_with_will_then_vanish(
                    gateway.port, "clock-silent", f"{unique_topic}/will/silent"
                )
                # Lost after 1.5 x 2 s of silence whatever the wall clock did.
                await observer.wait_count(f"{unique_topic}/will/silent", 1, timeout=8)
                await steady.publish(f"{unique_topic}/up", b"after-backward", qos=1)
                await sleeper.connect(keepalive=30, clean_session=False)  # its session is kept
            assert await observer.wait_count(f"{unique_topic}/up", 3) == [
                b"before",
                b"after-forward",
                b"after-backward",
            ]
            assert observer.payloads(f"{unique_topic}/will/steady") == []
        assert gateway.alive()
    finally:
        status = gateway.stop()
    log = gateway.log()
    assert status == 0, log
    assert "Traceback" not in log and not gateway.lines("ERROR"), log
    now = datetime.now()
    dates = _log_dates(log)
    assert any(d > now + timedelta(days=300) for d in dates), "the forward step never happened"
    assert any(d < now - timedelta(days=300) for d in dates), "the backward step never happened"


async def _until_answering(gateway: CliGateway, timeout: float = 20.0) -> None:
    """Wait until the gateway answers a CONNECT (it is up and connected to the broker)."""
    deadline = time.monotonic() + timeout
    while True:
        assert gateway.alive(), gateway.log()
        try:
            answers = await ask(gateway.port, encode(Connect("probe", 5)), timeout=0.3)
        except (TimeoutError, ConnectionRefusedError):
            answers = []
        if answers and isinstance(answers[0], Connack) and answers[0].return_code == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway never answered: {gateway.log()[-2000:]}")
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------------------ full disk


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 2 MiB tmpfs of our own (needs root; the CI runs as root)."""
    path = Path(tempfile.mkdtemp(prefix="mqttsn-small-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        path.rmdir()
        pytest.fail(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


BUFFERED = 100  # messages for a sleeping node (the default queue-per-client), 900 bytes each


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; the file."""
    filler = directory / "filler"
    block = b"\0" * 4096
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


async def test_full_disk_is_one_error_counted_and_the_gateway_serves_on(
    mosquitto: MosquittoBroker,
    small_disk: Path,
    unique_topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """State file on a full disk: one ERROR, counted, nodes served; saved once there is room."""
    port = free_port(socket.SOCK_DGRAM)
    config = parse_config(
        {"mqttsn": {"t-adv": 0, "t-retry": 1.0}},
        udp=f"127.0.0.1:{port}",
        broker=mosquitto.url,
        state=str(small_disk / "state.sqlite"),
    )
    link = ("127.0.0.1", port)
    async with GatewayRuntime(config) as gateway, observing(mosquitto, f"{unique_topic}/#") as seen:
        await wait_for(lambda: gateway.upstream.connected, 10, "broker connection")
        store = gateway.store
        assert store is not None
        sleeper = SimNode("disk-sleeper", UdpNodeLink(link), t_retry=1.0)
        async with sleeper:
            await sleeper.connect(keepalive=60, clean_session=False)
            await sleeper.subscribe(f"{unique_topic}/cmd", qos=1)
            await sleeper.sleep(60)
            await store.sync()
            assert "disk-sleeper" in store.read_sessions()

            filler = _fill(small_disk)
            caplog.clear()
            # Buffered for the sleeper (QoS 1: they must be saved): more than the disk can take.
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
                for n in range(BUFFERED):
                    await publisher.publish(f"{unique_topic}/cmd", bytes([n]) * 900, qos=1)
            queue = gateway.core.sessions["disk-sleeper"].queue
            await wait_for(lambda: len(queue) == BUFFERED, 10, "all buffered for the sleeper")
            await wait_for(
                lambda: store.counters["save_failed_disk_full"] > 0, 10, "a failed save counted"
            )
            # Nodes are still served: a new one connects and publishes QoS 1 to the broker.
            async with SimNode("disk-writer", UdpNodeLink(link), t_retry=1.0) as writer:
                await writer.connect(keepalive=60, clean_session=False)
                await writer.publish(f"{unique_topic}/up", b"served", qos=1)
            assert await seen.wait_count(f"{unique_topic}/up", 1) == [b"served"]
            await asyncio.sleep(2.5)  # two more retries: still one ERROR line (once a minute)
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            assert "the disk is full" in errors[0].getMessage()
            assert str(small_disk) in errors[0].getMessage()
            failed = store.counters["save_failed_disk_full"]
            assert failed >= 2

            filler.unlink()  # room again: the next retry saves everything kept in memory
            saves = store.counters["saves"]
            await wait_for(lambda: store.counters["saves"] > saves, 5, "a save after the disk")
            await store.sync()
            saved = store.read_sessions()
            assert "disk-writer" in saved
            assert len(saved["disk-sleeper"]["queue"]) == BUFFERED
            woken = await sleeper.wake()
            assert [bytes(m.payload)[:1] for m in woken] == [bytes([n]) for n in range(BUFFERED)]
