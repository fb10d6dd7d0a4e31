"""A real pty pair for serial tests: the transport opens the slave path, the test is the node."""

from __future__ import annotations

import asyncio
import os
import tty


class PtyNode:
    """The node end of a pty: write bytes to the gateway, collect what the gateway writes.

    ``path`` is the slave device the transport opens. The node reads only while ``reading``;
    ``stop_reading()`` lets the pty fill up so the gateway side feels back-pressure.
    """

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        # Raw at once: until pyserial configures the line, echo would bounce our bytes back.
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)
        self.received = bytearray()
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reading = False
        self.closed = False

    def start_reading(self) -> None:
        """Collect whatever the gateway writes into ``received``."""
        if not self.reading:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.master, self._read)
            self.reading = True

    def stop_reading(self) -> None:
        """Stop reading, as a node whose UART buffer is full."""
        if self.reading and self._loop is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self.master)
            self.reading = False

    def write(self, data: bytes) -> None:
        """Send bytes to the gateway (the pty takes a few KiB without a reader)."""
        view = memoryview(data)
        while view:
            written = os.write(self.master, view)
            view = view[written:]

    async def wait_for(self, size: int) -> bytes:
        """Wait (5 s at most) until ``size`` bytes arrived from the gateway; return all so far."""
        async with asyncio.timeout(5.0):
            while len(self.received) < size:
                self._changed.clear()
                await self._changed.wait()
        return bytes(self.received)

    def close(self) -> None:
        """Close both ends: to the gateway the port has vanished."""
        if self.closed:
            return
        self.stop_reading()
        os.close(self.master)
        os.close(self._slave)
        self.closed = True

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: no slave open right now (the gateway is reopening)
            return
        self.received += data
        self._changed.set()

    def __repr__(self) -> str:
        return f"<PtyNode {self.path} reading={self.reading} received={len(self.received)}>"
