"""Buffered messages are saved as rows diffed against what is on disk: any sequence of buffer
operations, saved at any points, loads back exactly; a save writes only what changed."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import CoreSettings, GatewayCore
from gateway.core.delivery_queue import Delivery
from gateway.protocol.messages import Connect, Disconnect
from gateway.store import StateStore
from transports.base import UdpAddress

A1 = UdpAddress("10.0.0.1", 1001)

# The operations the core does on a buffer: append (enqueue), pop the head (send), put back at
# the head (the node went away mid-delivery), drop one from the middle (overflow: oldest QoS 0),
# and save.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(max_size=8)),
        st.tuples(st.just("pop"), st.none()),
        st.tuples(st.just("put_back"), st.none()),
        st.tuples(st.just("drop"), st.integers(0, 50)),
        st.tuples(st.just("insert"), st.integers(0, 50)),  # the core never does; still exact
        st.tuples(st.just("save"), st.none()),
    ),
    max_size=60,
)


async def replay(path: Path, ops: list[tuple[str, object]]) -> tuple[list[Delivery], list]:
    loop = asyncio.get_running_loop()
    store = StateStore(path)
    core = GatewayCore(CoreSettings(), state=store.load(CoreSettings(), loop.time()).core)
    store.attach(core, loop)
    core.receive(A1, Connect("n1", 60, False, False), loop.time())
    core.receive(A1, Disconnect(600), loop.time())
    queue = core.sessions["n1"].queue
    popped: list[Delivery] = []
    for n, (op, arg) in enumerate(ops):
        if op == "append":
            queue.append(Delivery(f"t/{n}", arg, 1))  # type: ignore[arg-type]
        elif op == "pop" and queue:
            popped.append(queue.popleft())
        elif op == "put_back" and popped:
            queue.appendleft(popped.pop())
        elif op == "drop" and queue:
            del queue[arg % len(queue)]  # type: ignore[operator]
        elif op == "insert":
            queue.insert(arg % (len(queue) + 1), Delivery(f"i/{n}", b"", 2))  # type: ignore[operator]
        elif op == "save":
            await store.sync()
            saved = store.read_sessions()["n1"]["queue"]
            assert saved == [[d.topic, d.payload, d.qos, d.retain] for d in queue]
        core.dirty.add("n1")  # type: ignore[union-attr]
    expected = list(queue)
    await store.close()
    store = StateStore(path)
    loaded = store.load(CoreSettings(), loop.time()).core.sessions[0].queue
    await store.close()
    return expected, list(loaded)


@settings(max_examples=100, deadline=None)
@given(OPS)
def test_any_buffer_history_loads_back_exactly(ops: list[tuple[str, object]]) -> None:
    """Whatever the order of appends, sends, put-backs, drops and saves: same buffer on disk."""
    with tempfile.TemporaryDirectory() as directory:
        expected, loaded = asyncio.run(replay(Path(directory) / "s.sqlite", ops))
    assert loaded == expected


async def test_save_writes_only_what_changed(tmp_path: Path) -> None:
    """A full buffer with one message more costs one row, not the whole buffer again."""
    loop = asyncio.get_running_loop()
    store = StateStore(tmp_path / "s.sqlite")
    core = GatewayCore(CoreSettings(), state=store.load(CoreSettings(), loop.time()).core)
    store.attach(core, loop)
    now = loop.time()
    core.receive(A1, Connect("n1", 60, False, False), now)
    core.receive(A1, Disconnect(600), now)
    queue = core.sessions["n1"].queue
    for i in range(100):
        queue.append(Delivery("t", b"%d" % i, 1))
    core.dirty.add("n1")  # type: ignore[union-attr]
    await store.sync()
    assert store.counters["buffer_rows_added"] == 100
    queue.append(Delivery("t", b"one more", 1))
    queue.popleft()
    core.dirty.add("n1")  # type: ignore[union-attr]
    await store.sync()
    assert store.counters["buffer_rows_added"] == 101
    assert store.counters["buffer_rows_removed"] == 1
    await store.close()
