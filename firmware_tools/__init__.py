"""firmware_tools: serial transfers, a scripted console and a framed link, on pyserial alone.

Speaks the protocols devices in the field already speak: XMODEM/YMODEM as lrzsz and U-Boot's
``loadx``/``loady`` do, an expect-style console for bootloader prompts, and a framed
request/response link for edge-sdk's agent on devices without a network. It imports nothing
from edge_sdk (a technician's laptop may have only pyserial); edge_sdk uses it.

Layers, after esptool: the protocol modules (``xmodem``, ``ymodem``, ``console``, ``link``)
work on any open ``serial.SerialBase`` (a real port, a pty, a ``serial_for_url`` URL); plain
functions open ports and run them; the CLI (``edge-sdk serial ...``) is a thin layer on top.
Errors: ``firmware_tools.errors`` (root ``FirmwareToolsError``).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
