"""Serial port listing (firmware_tools/ports.py) on what this machine has, and the USB
formatting on real pyserial ``ListPortInfo`` objects (filled as pyserial's own platform
modules fill them), since the test machine has no USB adapter.

Reference: ``lsusb`` prints ids as ``0403:6001`` (lowercase hex); 0403:6001 is an FTDI FT232R,
10c4:ea60 a Silicon Labs CP210x.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import serial.tools.list_ports
from _serial import PtyPair
from serial.tools.list_ports_common import ListPortInfo

from firmware_tools.errors import PortError
from firmware_tools.ports import PortInfo, list_ports


def usb_port(device: str, vid: int, pid: int, **fields: str) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid = vid, pid
    for name, value in fields.items():
        setattr(info, name, value)
    info.apply_usb_info()  # description and hwid, as pyserial's platform modules do
    return info


def test_usb_fields_from_pyserial() -> None:
    info = usb_port(
        "/dev/ttyUSB0",
        0x0403,
        0x6001,
        serial_number="A50285BI",
        manufacturer="FTDI",
        product="FT232R USB UART",
        location="1-1.4:1.0",
    )
    port = PortInfo.from_pyserial(info)
    assert port == PortInfo(
        device="/dev/ttyUSB0",
        description="FT232R USB UART",
        hwid="USB VID:PID=0403:6001 SER=A50285BI LOCATION=1-1.4:1.0",
        vid=0x0403,
        pid=0x6001,
        serial_number="A50285BI",
        manufacturer="FTDI",
        location="1-1.4:1.0",
    )
    assert port.usb == "0403:6001"
    assert PortInfo.from_pyserial(usb_port("/dev/ttyUSB1", 0x10C4, 0xEA60)).usb == "10c4:ea60"
    plain = PortInfo.from_pyserial(ListPortInfo("/dev/ttyS0", skip_link_detection=True))
    assert plain.usb is None and plain.description == "n/a" and plain.hwid == "n/a"


def test_values_are_frozen_and_checked() -> None:
    port = PortInfo("/dev/ttyUSB0", vid=1, pid=2)
    with pytest.raises(AttributeError):
        port.device = "/dev/other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="16-bit"):
        PortInfo("/dev/ttyUSB0", vid=0x10000, pid=1)
    with pytest.raises(ValueError, match="device"):
        PortInfo("")


def test_sorted_naturally_and_each_device_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found = [
        usb_port("/dev/ttyUSB10", 0x0403, 0x6001),
        ListPortInfo("/dev/ttyS1", skip_link_detection=True),
        usb_port("/dev/ttyUSB2", 0x10C4, 0xEA60),
        usb_port("/dev/ttyACM0", 0x2E8A, 0x000A),
    ]
    seen: dict[str, bool] = {}

    def comports(include_links: bool = False) -> list[ListPortInfo]:
        seen["include_links"] = include_links
        return found

    monkeypatch.setattr(serial.tools.list_ports, "comports", comports)
    ports = list_ports(["/dev/ttyUSB2"], include_links=True)
    assert [p.device for p in ports] == [
        "/dev/ttyACM0",
        "/dev/ttyS1",
        "/dev/ttyUSB2",
        "/dev/ttyUSB10",
    ]
    assert [p.usb for p in ports] == ["2e8a:000a", None, "10c4:ea60", "0403:6001"]
    assert seen["include_links"] is True


def test_this_machine_and_explicit_ptys(tmp_path: Path) -> None:
    machine = list_ports()
    assert all(isinstance(p, PortInfo) for p in machine)
    assert len({p.device for p in machine}) == len(machine)
    with PtyPair(tmp_path) as pair:
        ports = list_ports([pair.b, pair.a])
        extra = [p for p in ports if p.device in (pair.a, pair.b)]
        assert [p.device for p in extra] == [pair.a, pair.b]
        # socat's link= paths are symlinks to /dev/pts/N: pyserial reports the target.
        assert extra[0].hwid == f"LINK={os.path.realpath(pair.a)}"
        assert extra[0].usb is None


def test_a_missing_explicit_path_is_a_port_error(tmp_path: Path) -> None:
    with pytest.raises(PortError) as info:
        list_ports([str(tmp_path / "gone")])
    assert info.value.port.endswith("gone")


def test_enumeration_failure_is_a_port_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def comports(include_links: bool = False) -> list[ListPortInfo]:
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(serial.tools.list_ports, "comports", comports)
    with pytest.raises(PortError, match="cannot list"):
        list_ports()
