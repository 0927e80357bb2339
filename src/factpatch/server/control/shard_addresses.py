"""Which addresses may be registered as shards: an allow-list fixed when the control plane starts.

The control plane sends the shard agent token to every registered shard and the gateway forwards
user prompts to it, so an operator who could register any URL could collect the token (or user
traffic) with a fake shard, or point the control plane at the cloud metadata service. Entries:

    10.0.0.0/8              any address in a network (IPv4 or IPv6), any port
    shard-0.shards.svc:8000 a host (name or address) on one port
    *.shards.svc            any name under a domain, any port
    127.0.0.1               one host, any port

With no entries the list is the loopback networks only (a single-machine setup works, nothing
else is reachable until listed). Names are matched as written, before any DNS lookup; the
addresses given with `serve --shard` are always allowed (they come from the same person). Both of a
shard's addresses are checked: the one model traffic goes to and the agent's (where the token goes).
A shard's two addresses (OpenAI server and agent): core/shard_endpoints.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.0/8", "::1/128")


class AddressNotAllowed(ValueError):
    pass




@dataclass(frozen=True)
class _Entry:
    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    host: str = ""
    suffix: str = ""
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        if self.suffix:
            return host.endswith(self.suffix) and len(host) > len(self.suffix)
        return host == self.host and (self.port is None or self.port == port)


def _parse(entry: str) -> _Entry:
    text = entry.strip().lower()
    if not text or any(c.isspace() for c in text) or "/" in text and "*" in text:
        raise ValueError(f"shard address allow-list entry {entry!r}: not a network, host, host:port or *.domain")
    if "/" in text:
        try:
            return _Entry(entry, network=ipaddress.ip_network(text, strict=False))
        except ValueError as e:
            raise ValueError(f"shard address allow-list entry {entry!r}: {e}") from None
    if text.startswith("*."):
        return _Entry(entry, suffix=text[1:])
    host, port = text, None
    if text.count(":") == 1:  # host:port (an IPv6 address alone has several colons)
        host, _, p = text.partition(":")
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise ValueError(f"shard address allow-list entry {entry!r}: port must be 1-65535")
        port = int(p)
    return _Entry(entry, host=host.strip("[]"), port=port)


@dataclass
class ShardAddressPolicy:
    entries: list[_Entry] = field(default_factory=list)
    fixed: set[str] = field(default_factory=set)  # exact addresses given at start

    @classmethod
    def from_entries(cls, entries: list[str], fixed: list[str] = ()) -> "ShardAddressPolicy":
        return cls([_parse(e) for e in (entries or LOOPBACK)], {a.rstrip("/") for a in fixed})

    def check(self, address: str) -> None:
        """AddressNotAllowed naming the address and what is allowed, unless the list allows it."""
        if address.rstrip("/") in self.fixed:
            return
        parts = urlsplit(address)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if any(e.matches(host, port) for e in self.entries):
            return
        allowed = ", ".join(e.text for e in self.entries)
        raise AddressNotAllowed(f"shard address {address!r} is not on the control plane's allow-list ({allowed}); "
                                f"start it with --allow-shard-address to add one")
