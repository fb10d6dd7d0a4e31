"""Contract: Digi's own library (digi-xbee) takes the simulated coordinator for a real one."""

from __future__ import annotations

import asyncio

import pytest
from digi.xbee.devices import ZigBeeDevice
from digi.xbee.models.address import XBee16BitAddress, XBee64BitAddress
from digi.xbee.models.protocol import Role, XBeeProtocol
from digi.xbee.models.status import TransmitStatus as DigiTransmitStatus

from firmware_sim.radios.xbee_network import XBeeNetwork

NODE = 0x0013A200_41000001


@pytest.mark.parametrize("api_mode", [1, 2])
async def test_digi_xbee_opens_the_simulated_coordinator(api_mode):
    async with XBeeNetwork(0x0013A200_4170C0DE, api_mode=api_mode) as network:
        inbox: list[bytes] = []
        link = network.add_node(NODE)
        await link.open(inbox.append)
        device = ZigBeeDevice(network.port, 9600)
        await asyncio.to_thread(device.open)  # runs AP, HV, VR, SH, SL, NI, MY, CE
        try:
            assert str(device.get_64bit_addr()) == "0013A2004170C0DE"
            assert device.get_protocol() is XBeeProtocol.ZIGBEE
            assert device.get_role() is Role.COORDINATOR
            np_value = await asyncio.to_thread(device.get_parameter, "NP")
            assert int.from_bytes(np_value, "big") == 84

            response = await asyncio.to_thread(
                device.send_data_64_16,
                XBee64BitAddress.from_hex_string(f"{NODE:016X}"),
                XBee16BitAddress.UNKNOWN_ADDRESS,
                b"\x7e\x11 from digi",
            )
            assert response.transmit_status is DigiTransmitStatus.SUCCESS
            assert inbox == [b"\x7e\x11 from digi"]

            await link.send(b"\x13 to digi")
            message = await asyncio.to_thread(device.read_data, 2)
            assert bytes(message.data) == b"\x13 to digi"
            assert str(message.remote_device.get_64bit_addr()) == f"{NODE:016X}"
        finally:
            await asyncio.to_thread(device.close)  # digi-xbee sleeps a 1.2 s guard time here
