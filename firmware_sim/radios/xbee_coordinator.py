"""The simulated XBee 3 Zigbee coordinator module: API frames and AT registers on a pty.

It answers what a host sends on the UART exactly as the module's API firmware does (XBee 3 Zigbee
RF Module user guide, "API frames" and "AT commands"): 0x08 AT Command -> 0x88 AT Command
Response; 0x10 Transmit Request -> handed to the RF medium (``on_transmit``), which later calls
:meth:`transmit_status`; RF data heard from nodes goes out as 0x90 Receive Packets. API mode 1 or
2 follows the AP register, as on the real module.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_sim.radios.xbee_pty import PtyPort
from transports.xbee_frames import (
    ApiFrame,
    AtCommand,
    AtCommandQueue,
    AtResponse,
    AtStatus,
    DeliveryStatus,
    FrameDecoder,
    FrameError,
    ModemStatus,
    ModemStatusCode,
    ReceivePacket,
    TransmitRequest,
    TransmitStatus,
    encode_frame,
    parse_frame_data,
)

__all__ = ["SimulatedCoordinator"]

_LOGGER = logging.getLogger(__name__)

_BAUD_INDEX = {1200: 0, 2400: 1, 4800: 2, 9600: 3, 19200: 4, 38400: 5, 57600: 6, 115200: 7}


@dataclass(slots=True)
class _Register:
    """One AT parameter: its value as the module returns it, and what a set may write."""

    value: bytes
    writable: bool = False
    valid: Callable[[bytes], bool] = field(default=lambda value: True)


def _number(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


def _one_of(*choices: int) -> Callable[[bytes], bool]:
    return lambda value: len(value) >= 1 and int.from_bytes(value, "big") in choices


def _at_most(size: int) -> Callable[[bytes], bool]:
    return lambda value: len(value) <= size


class SimulatedCoordinator:
    """An XBee 3 Zigbee module with CE=1 on a pty; the RF side is the ``on_transmit`` callback."""

    def __init__(
        self,
        on_transmit: Callable[[TransmitRequest], None],
        *,
        ieee64: int,
        api_mode: int = 2,
        max_payload: int = 84,
        baudrate: int = 9600,
        firmware: int = 0x100D,
        hardware: int = 0x4247,
        node_id: str = "MQTT-SN GW",
        pan_id: int = 0x0000_0000_0000_2B2B,
        link_path: str | None = None,
    ) -> None:
        self.ieee64 = ieee64
        self.stats: Counter[str] = Counter()
        self.requests: deque[TransmitRequest] = deque(maxlen=256)  # recent 0x10s, for tests
        self._on_transmit = on_transmit
        self.port = PtyPort(self._data_received, link_path=link_path)
        self._decoder = FrameDecoder(api_mode)
        self._registers: dict[str, _Register] = {
            "AP": _Register(_number(api_mode, 1), True, _one_of(1, 2)),
            "SH": _Register(_number(ieee64 >> 32, 4)),
            "SL": _Register(_number(ieee64 & 0xFFFF_FFFF, 4)),
            "MY": _Register(_number(0x0000, 2)),  # the coordinator is always 0x0000
            "NP": _Register(_number(max_payload, 2)),
            "AI": _Register(_number(0x00, 1)),  # 0x00: coordinator started the network
            "VR": _Register(_number(firmware, 2)),
            "HV": _Register(_number(hardware, 2)),
            "CE": _Register(_number(1, 1), True, _one_of(0, 1)),
            "ID": _Register(_number(pan_id, 8), True, _at_most(8)),
            "OP": _Register(_number(pan_id, 8)),
            "OI": _Register(_number(0x2B2B, 2)),
            "CH": _Register(_number(0x0F, 1)),
            "SC": _Register(_number(0x7FFF, 2), True, _at_most(2)),
            "NI": _Register(node_id.encode(), True, _at_most(20)),
            "BD": _Register(_number(_BAUD_INDEX.get(baudrate, 3), 1), True, _at_most(4)),
            "AO": _Register(_number(0, 1), True, _one_of(0)),  # only 0x90 frames are simulated
            "EE": _Register(_number(0, 1), True, _one_of(0, 1)),
            "NJ": _Register(_number(0xFF, 1), True, _at_most(1)),
            "BH": _Register(_number(0, 1), True, _at_most(1)),
            "NH": _Register(_number(0x1E, 1), True, _at_most(1)),
            "DH": _Register(_number(0, 4), True, _at_most(4)),
            "DL": _Register(_number(0xFFFF, 4), True, _at_most(4)),
            "SM": _Register(_number(0, 1)),  # a coordinator never sleeps
            "DB": _Register(_number(0x28, 1)),  # RSSI of the last packet: -40 dBm
            "%V": _Register(_number(3300, 2)),  # supply voltage in mV
        }
        self._queued: dict[str, bytes] = {}  # 0x09 sets waiting for AC

    def __repr__(self) -> str:
        return (
            f"<SimulatedCoordinator {self.ieee64:016X} AP={self.api_mode} NP={self.max_payload} "
            f"{'plugged' if self.port.plugged else 'unplugged'} at {self.port.path}>"
        )

    @property
    def api_mode(self) -> int:
        """The AP register: 1 or 2."""
        return self._registers["AP"].value[-1]

    @property
    def max_payload(self) -> int:
        """The NP register: the largest RF payload of one Transmit Request."""
        return int.from_bytes(self._registers["NP"].value, "big")

    def register(self, command: str) -> bytes:
        """The current value of one AT register (for tests and the network)."""
        return self._registers[command].value

    # -- power -------------------------------------------------------------------------------

    def power_up(self) -> None:
        """Plug the dongle in: the port appears and the module reports its start-up."""
        self.port.plug()
        self._decoder = FrameDecoder(self.api_mode)
        # XBee 3 Zigbee user guide, Modem Status: 0x00 on power-up, 0x06 once the PAN is formed.
        self.send_frame(ModemStatus(ModemStatusCode.HARDWARE_RESET))
        self.send_frame(ModemStatus(ModemStatusCode.COORDINATOR_STARTED))

    def power_down(self) -> None:
        """Unplug the dongle: the port vanishes."""
        self.port.unplug()

    def close(self) -> None:
        """Unplug for good and clean up the port's files."""
        self.port.close()

    # -- host side ---------------------------------------------------------------------------

    def send_frame(self, frame: ApiFrame) -> None:
        """Write one API frame to the host in the current API mode (lost while unplugged)."""
        self.stats[f"to_host_{type(frame).__name__}"] += 1
        self.port.write(encode_frame(frame, self.api_mode))

    def deliver(self, packet: ReceivePacket) -> None:
        """RF data heard from a node: out to the host as a 0x90 Receive Packet."""
        self.send_frame(packet)

    def transmit_status(
        self,
        request: TransmitRequest,
        status: DeliveryStatus,
        *,
        dest16: int = 0xFFFD,
        retries: int = 0,
        discovery: int = 0,
    ) -> None:
        """Report how a Transmit Request ended (0x8B), unless the host asked for no status."""
        if request.frame_id == 0:  # API frames: "frame ID 0 disables the response frame"
            return
        self.send_frame(TransmitStatus(request.frame_id, status, dest16, retries, discovery))

    def _data_received(self, data: bytes) -> None:
        for frame_data in self._decoder.feed(data):
            try:
                frame = parse_frame_data(frame_data)
            except FrameError as exc:
                self.stats["malformed"] += 1
                _LOGGER.warning("simulated XBee: malformed frame from host: %s", exc)
                continue
            match frame:
                case AtCommand():
                    self._at_command(frame)
                case TransmitRequest():
                    self._transmit_request(frame)
                case _:
                    self.stats["ignored"] += 1
                    _LOGGER.debug("simulated XBee: ignoring %r", frame)

    def _transmit_request(self, request: TransmitRequest) -> None:
        self.stats["transmit_requests"] += 1
        self.requests.append(request)
        if len(request.rf_data) > self.max_payload:
            # "0x74 Data payload too large": the module refuses it, nothing goes on the air.
            self.transmit_status(request, DeliveryStatus.PAYLOAD_TOO_LARGE)
        elif request.dest64 == self.ieee64:
            self.transmit_status(request, DeliveryStatus.SELF_ADDRESSED)
        else:
            self._on_transmit(request)  # unicast or broadcast (dest64 0xFFFF): the RF medium's job

    def _at_command(self, frame: AtCommand) -> None:
        command = frame.command.upper()
        self.stats[f"at_{command}"] += 1
        queue = isinstance(frame, AtCommandQueue)
        status, value, after = self._execute(command, frame.parameter, queue=queue)
        _LOGGER.debug(
            "simulated XBee: AT%s %s -> %s %s",
            command,
            frame.parameter.hex(),
            status.name,
            value.hex(),
        )
        if frame.frame_id:
            self.send_frame(AtResponse(frame.frame_id, frame.command, status, value))
        if after is not None:
            after()
        if not queue and command not in ("AC", "FR"):
            # API frames, 0x09: queued values apply "when an 0x08 AT Command or AC is issued".
            self._apply_queued()

    def _execute(
        self, command: str, parameter: bytes, *, queue: bool
    ) -> tuple[AtStatus, bytes, Callable[[], None] | None]:
        """Run one AT command: (status, value to return, what to do after the response)."""
        match command:
            case "AC":  # apply changes
                return AtStatus.OK, b"", self._apply_queued
            case "WR" | "CN":  # write to flash / exit command mode: nothing to simulate
                return AtStatus.OK, b"", None
            case "FR":  # software reset: answer first, then restart as after power-up
                return AtStatus.OK, b"", self._software_reset
        register = self._registers.get(command)
        if register is None:
            return AtStatus.INVALID_COMMAND, b"", None
        if not parameter:
            return AtStatus.OK, register.value, None
        if not register.writable or not register.valid(parameter):
            return AtStatus.INVALID_PARAMETER, b"", None
        if queue:
            self._queued[command] = parameter
            return AtStatus.OK, b"", None
        if command == "AP":
            # AT Command frames apply at once, but the response still goes out in the old mode.
            return AtStatus.OK, b"", lambda: self._set_api_mode(parameter)
        register.value = parameter
        return AtStatus.OK, b"", None

    def _apply_queued(self) -> None:
        queued, self._queued = self._queued, {}
        for command, parameter in queued.items():
            if command == "AP":
                self._set_api_mode(parameter)
            else:
                self._registers[command].value = parameter

    def _set_api_mode(self, parameter: bytes) -> None:
        self._registers["AP"].value = _number(int.from_bytes(parameter, "big"), 1)
        self._decoder = FrameDecoder(self.api_mode)

    def _software_reset(self) -> None:
        self.send_frame(ModemStatus(ModemStatusCode.WATCHDOG_RESET))
        self.send_frame(ModemStatus(ModemStatusCode.COORDINATOR_STARTED))
