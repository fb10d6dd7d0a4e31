"""A pseudo-terminal standing in for a USB serial dongle that can be unplugged and plugged back.

The simulated device serves the pty master on the event loop; the host opens :attr:`PtyPort.path`,
a stable symlink to the current pty slave (like ``/dev/serial/by-id/usb-FTDI_...``). ``unplug()``
removes the symlink and closes the master, so the host's reads fail (EIO) exactly as when a USB
adapter vanishes; ``plug()`` makes a fresh pty and points the symlink at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import tty
from collections.abc import Callable

__all__ = ["PtyPort"]

_LOGGER = logging.getLogger(__name__)

_READ_SIZE = 4096


class PtyPort:
    """The device end of a serial line, on a pty; bytes the host writes go to ``on_data``."""

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        *,
        link_path: str | None = None,
        max_buffer: int = 256 * 1024,
    ) -> None:
        self._on_data = on_data
        self._tempdir: str | None = None
        if link_path is None:
            self._tempdir = tempfile.mkdtemp(prefix="xbee-sim-")
            link_path = os.path.join(self._tempdir, "ttyUSB0")
        self.path = link_path
        self.max_buffer = max_buffer
        self.dropped_bytes = 0
        self._master: int | None = None
        self._slave: int | None = None  # kept open so the master never reads EIO between hosts
        self._pty_path: str | None = None
        self._out = bytearray()
        self._writing = False

    def __repr__(self) -> str:
        state = f"plugged at {self._pty_path}" if self.plugged else "unplugged"
        return f"<PtyPort {self.path} {state} out_buffer={len(self._out)}>"

    @property
    def plugged(self) -> bool:
        """True while the device is present."""
        return self._master is not None

    @property
    def pty_path(self) -> str | None:
        """The current pty slave (``/dev/pts/N``), or None while unplugged."""
        return self._pty_path

    def plug(self) -> None:
        """Make the device appear: a fresh pty in raw mode, reachable at :attr:`path`."""
        if self.plugged:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: a serial line carries bytes as they are
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._pty_path = os.ttyname(slave)
        staging = f"{self.path}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        os.symlink(self._pty_path, staging)
        os.replace(staging, self.path)  # atomic: the path never points at a dead pty
        asyncio.get_running_loop().add_reader(master, self._read_ready)
        _LOGGER.debug("pty device plugged: %s -> %s", self.path, self._pty_path)

    def unplug(self) -> None:
        """Make the device vanish: the path disappears and the host's open port breaks."""
        if self._master is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._master)
        if self._writing:
            loop.remove_writer(self._master)
            self._writing = False
        os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = None
        self._pty_path = None
        self._out.clear()
        _LOGGER.debug("pty device unplugged: %s", self.path)

    def close(self) -> None:
        """Unplug for good and remove the temporary directory, if we made one."""
        self.unplug()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def write(self, data: bytes) -> None:
        """Send bytes to the host: in order, buffered while it is slow, lost while unplugged."""
        if self._master is None:
            self.dropped_bytes += len(data)
            return
        if len(self._out) + len(data) > self.max_buffer:
            self.dropped_bytes += len(data)  # a real UART without flow control overruns too
            return
        self._out += data
        if not self._writing:
            self._write_ready()

    def _write_ready(self) -> None:
        assert self._master is not None
        try:
            sent = os.write(self._master, self._out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            _LOGGER.debug("pty write failed: %s", exc)
            sent = len(self._out)
        del self._out[:sent]
        loop = asyncio.get_running_loop()
        if self._out and not self._writing:
            loop.add_writer(self._master, self._write_ready)
            self._writing = True
        elif not self._out and self._writing:
            loop.remove_writer(self._master)
            self._writing = False

    def _read_ready(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: no process holds the slave (cannot happen: we hold one)
            _LOGGER.debug("pty read failed: %s", exc)
            return
        if data:
            self._on_data(data)
