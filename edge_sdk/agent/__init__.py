"""The device agent: keeps a device's models where the fleet's desired state says.

``edge-sdk agent --config agent.toml`` runs it (docs/agent.md). The core (``core.py``) is
independent of the transport; ``mqtt.py`` connects it to the fleet's MQTT broker.
"""

from __future__ import annotations

__all__ = ["AgentConfig", "load_agent_config", "run_agent"]

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_sdk.agent.config import AgentConfig, load_agent_config
    from edge_sdk.agent.mqtt import run_agent


def __getattr__(name: str) -> Any:
    if name in ("AgentConfig", "load_agent_config"):
        from edge_sdk.agent import config

        return getattr(config, name)
    if name == "run_agent":
        from edge_sdk.agent import mqtt

        return mqtt.run_agent
    raise AttributeError(name)
