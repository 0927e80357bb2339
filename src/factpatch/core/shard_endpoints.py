"""A shard's two addresses: its OpenAI server (model traffic: gateway, probes) and its agent (weight
changes, on a port of its own so that no client of the model can reach it).

Written together as `URL,AGENT_URL` (`serve --shard NAME=URL,AGENT_URL`). Without the agent URL the
agent is taken to listen where `factpatch shard` puts it by default: same scheme and host, the OpenAI
port + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


def default_agent_address(address: str) -> str:
    """Where `factpatch shard` puts the agent when not told: the OpenAI port + 1 on the same host."""
    try:
        parts = urlsplit(address.rstrip("/"))
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # not a URL or not a port: the address is refused where it is checked
        return address
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else (parts.hostname or "")
    return f"{parts.scheme}://{host}:{port + 1}"


@dataclass(frozen=True)
class ShardEndpoints:
    address: str  # the OpenAI server: model traffic
    agent_address: str  # the agent: weight changes

    @classmethod
    def of(cls, address: str, agent_address: str = "") -> "ShardEndpoints":
        """Both addresses, trailing slashes dropped; no agent address: the default one."""
        address, agent_address = address.strip().rstrip("/"), agent_address.strip().rstrip("/")
        return cls(address, agent_address or default_agent_address(address))

    @classmethod
    def parse(cls, text: str) -> "ShardEndpoints":
        """`URL` or `URL,AGENT_URL` (as given to `serve --shard NAME=...`)."""
        address, _, agent = text.partition(",")
        return cls.of(address, agent)

    def __str__(self) -> str:
        return f"{self.address},{self.agent_address}"
