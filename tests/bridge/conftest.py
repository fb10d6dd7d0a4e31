"""Fixtures for the bridge tests: started upstreams on the shared Mosquitto, and observers."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.bridge import AggregatingUpstream, TransparentUpstream, parse_broker_url
from tests.bridge.helpers import Observer, Recorder
from tests.mosquitto import MosquittoBroker


@pytest.fixture(params=["5", "3.1.1"])
def protocol(request: pytest.FixtureRequest) -> str:
    """Run the test on our MQTT 5 path and on the paho MQTT 3.1.1 path."""
    return str(request.param)


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A directory the broker can read and write.

    Not under ``tmp_path``: mosquitto started as root drops to its own user, which cannot
    enter pytest's 0700 directories.
    """
    path = Path(tempfile.mkdtemp(prefix="mqttsn-bridge-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def aggregating(
    mosquitto: MosquittoBroker, protocol: str, recorder: Recorder, unique_topic: str
) -> AsyncIterator[AggregatingUpstream]:
    """An AggregatingUpstream connected to the shared broker."""
    settings = parse_broker_url(mosquitto.url, protocol=protocol)
    gateway_id = unique_topic.replace("/", "-")[-40:]
    upstream = AggregatingUpstream(
        settings, gateway_id=gateway_id, status_topic=f"{unique_topic}-status/{{gateway_id}}"
    )
    await upstream.start(recorder)
    assert upstream.connected
    yield upstream
    await upstream.close()


@pytest.fixture
async def transparent(
    mosquitto: MosquittoBroker, protocol: str, recorder: Recorder, unique_topic: str
) -> AsyncIterator[TransparentUpstream]:
    """A started TransparentUpstream on the shared broker."""
    upstream = TransparentUpstream(
        parse_broker_url(mosquitto.url, protocol=protocol),
        gateway_id=unique_topic.replace("/", "-")[-40:],
        status_topic=f"{unique_topic}-status/{{gateway_id}}",
    )
    await upstream.start(recorder)
    yield upstream
    await upstream.close()


@pytest.fixture
def observe(mosquitto: MosquittoBroker) -> Iterator[type[Observer]]:
    """Start observers on the shared broker with ``observe(topic_filter)``; stopped after."""
    started: list[Observer] = []

    def factory(topic_filter: str | None, **options: object) -> Observer:
        observer = Observer(mosquitto, topic_filter, **options).start()  # type: ignore[arg-type]
        started.append(observer)
        return observer

    yield factory  # type: ignore[misc]
    for observer in started:
        observer.stop()


@pytest.fixture
def auth_mosquitto(broker_dir: Path) -> Iterator[MosquittoBroker]:
    """A private broker that requires user alice, password secret."""
    passwords = broker_dir / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "secret"], check=True)
    passwords.chmod(0o644)
    broker = MosquittoBroker(extra_config=f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()
    yield broker
    broker.stop()
