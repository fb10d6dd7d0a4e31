"""The connect loop of a ``BrokerConnection``: attempts, backoff, and what each failure says.

A mixin of ``BrokerConnection`` (connection.py), kept apart because it is the connection's
life cycle, not its traffic: connect (through the optional gate that bounds concurrent
connects in transparent mode), wait until the connection is lost, and decide how long to wait
before the next attempt. Jittered exponential backoff (backoff.py); bad credentials, a TLS
certificate the CA does not sign and a ClientId taken over elsewhere are logged once as an
ERROR and retried slowly; everything else is logged at INFO the first time, then at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from gateway.bridge.backoff import (
    AUTH_FAILURES,
    LONG_RETRY_DELAY,
    SESSION_TAKEN_OVER,
    STABLE_AFTER,
    Backoff,
)
from gateway.bridge.url import BrokerSettings

if TYPE_CHECKING:
    from gateway.bridge.connection import ConnectionHandler

__all__ = ["ConnectLoopMixin", "ConnectRefused"]

# The connection's own logger: one name to configure for everything a connection says.
_LOGGER = logging.getLogger("gateway.bridge.connection")


class ConnectRefused(Exception):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection refused: {reason} (0x{code:02X})")
        self.code = code
        self.reason = reason


class ConnectLoopMixin:
    """Connect, wait until lost, back off, again; until closed or refused for good."""

    settings: BrokerSettings
    client_id: str
    handler: ConnectionHandler
    finished: bool
    last_error: str | None
    _clean_next: bool
    _give_up_on_refusal: bool
    _info: int
    _connect_gate: asyncio.Semaphore | None
    _up: bool
    _ever_up: bool
    _closing: bool
    _quiet_reconnect: bool
    _wake: asyncio.Event | None
    _first_attempt: asyncio.Future[None] | None

    async def _connect(self, clean_start: bool) -> bool:
        raise NotImplementedError  # pragma: no cover - BrokerConnection's subclasses

    async def _wait_lost(self) -> int:
        raise NotImplementedError  # pragma: no cover

    def _disconnect(self, fire_will: bool) -> None:
        raise NotImplementedError  # pragma: no cover

    def _connected(self, session_present: bool) -> None:
        raise NotImplementedError  # pragma: no cover

    def _give_up_all(self) -> None:
        raise NotImplementedError  # pragma: no cover

    async def _run(self, after: asyncio.Future[Any] | None) -> None:
        try:
            await self._run_attempts(after)
        except Exception:
            _LOGGER.exception("%s: connection task failed; this connection is closed", self)
            with contextlib.suppress(Exception):
                self._disconnect(False)
            self.last_error = "internal error (see the log)"
            self.finished = True
            self._notify(False, 0x80)
        finally:
            self._up = False
            self._first_done()
            if self.finished and not self._closing:
                self._give_up_all()  # refused or taken over: nobody will call close()

    async def _run_attempts(self, after: asyncio.Future[Any] | None) -> None:
        if after is not None:
            await asyncio.wait({after})  # its outcome is not ours to raise
        backoff = Backoff()
        failures = 0  # attempts failed in a row: the first is logged at INFO, repeats at DEBUG
        fatal_logged = False  # the ERROR for bad credentials / TLS verification is logged once
        while not self._closing:
            self._quiet_reconnect = False
            delay: float | None
            try:
                if self._connect_gate is None:
                    session_present = await self._connect(self._clean_next)
                else:
                    async with self._connect_gate:
                        session_present = await self._connect(self._clean_next)
            except ConnectRefused as exc:
                self.last_error = str(exc)
                delay, fatal_logged = self._refused(exc, backoff, fatal_logged)
            except ssl.SSLCertVerificationError as exc:
                self.last_error = f"TLS certificate verification failed: {exc.verify_message}"
                if not fatal_logged:
                    _LOGGER.error(
                        "TLS certificate verification failed for %s: %s; set ca_file to the CA "
                        "that signed the broker's certificate (retrying every %.0fs)",
                        self.settings.url,
                        exc.verify_message or exc,
                        LONG_RETRY_DELAY,
                    )
                    fatal_logged = True
                delay = LONG_RETRY_DELAY
            except (OSError, TimeoutError, ssl.SSLError, EOFError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                delay = backoff.next()
                _LOGGER.log(
                    self._info if failures == 0 else logging.DEBUG,
                    "%s: cannot connect to %s (%s); retry in %.2fs",
                    self.client_id,
                    self.settings.url,
                    str(exc) or type(exc).__name__,
                    delay,
                )
                failures += 1
            else:
                self.last_error = None
                failures = 0
                fatal_logged = False
                if self._quiet_reconnect or self._closing:
                    # reopen() or close() came while we were connecting: start over / stop.
                    self._up = True
                    self._disconnect(False)
                    await self._wait_lost()
                    self._up = False
                    continue
                self._connected(session_present)
                self._first_done()
                up_since = time.monotonic()
                reason = await self._wait_lost()
                if time.monotonic() - up_since >= STABLE_AFTER:
                    backoff.reset()
                # A connection that keeps dropping soon after CONNACK (another client taking
                # our ClientId over, a broker kicking us) backs off like a failing connect.
                delay = self._lost(reason, backoff)
            self._first_done()
            if delay is None or self._closing:
                break
            if not self._quiet_reconnect:
                await self._sleep(delay)

    def _lost(self, reason: int, backoff: Backoff) -> float | None:
        """Bookkeeping after a lost connection; the delay before reconnecting, None to stop."""
        self._up = False
        if self._closing:
            return None
        if self._quiet_reconnect:
            return 0.0
        if reason == SESSION_TAKEN_OVER:
            if self._give_up_on_refusal:
                _LOGGER.log(self._info, "%s: session taken over elsewhere; closing", self.client_id)
                self.finished = True
                self._notify(False, reason)
                return None
            _LOGGER.error(
                "%s: another connection took over our client id at %s; check that every "
                "gateway has its own gateway_id (retrying every %.0fs)",
                self.client_id,
                self.settings.url,
                LONG_RETRY_DELAY,
            )
            self._notify(False, reason)
            return LONG_RETRY_DELAY
        delay = backoff.next()
        _LOGGER.log(
            self._info,
            "%s: connection to %s lost (reason 0x%02X); reconnecting in %.2fs",
            self.client_id,
            self.settings.url,
            reason,
            delay,
        )
        self._notify(False, reason)
        return delay

    def _refused(
        self, exc: ConnectRefused, backoff: Backoff, logged: bool
    ) -> tuple[float | None, bool]:
        if self._give_up_on_refusal and not self._ever_up:
            _LOGGER.log(self._info, "%s: %s; giving up", self.client_id, exc)
            self.finished = True
            self._notify(False, exc.code)
            return None, logged
        self._notify(False, exc.code)
        if exc.code in AUTH_FAILURES:
            if not logged:
                _LOGGER.error(
                    "%s: broker %s refused the credentials: %s; check username/password "
                    "(retrying every %.0fs)",
                    self.client_id,
                    self.settings.url,
                    exc,
                    LONG_RETRY_DELAY,
                )
            return LONG_RETRY_DELAY, True
        delay = backoff.next()
        _LOGGER.warning(
            "%s: broker %s: %s; retry in %.2fs", self.client_id, self.settings.url, exc, delay
        )
        return delay, logged

    def _notify(self, connected: bool, code: int) -> None:
        try:
            self.handler.on_state(connected, code)
        except Exception:
            _LOGGER.exception("%s: on_state failed", self)

    def _first_done(self) -> None:
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)

    async def _sleep(self, delay: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
