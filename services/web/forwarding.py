"""Which citizen a request comes from: the peer's address, or X-Forwarded-For from a trusted proxy only.

The node limits the public methods per citizen address; the gateway names that address to the node
(signed: ``services.common.security.citizen_address_metadata``). A header anybody can send must not
choose the address: X-Forwarded-For counts only when the peer itself is a configured proxy (the
ingress, a load balancer), and then its rightmost address that is not a trusted proxy is the citizen.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` → networks; a bad entry raises ValueError naming it."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"LIANXIN_WEB_TRUSTED_PROXIES: {part!r} is not an IP address or network") from None
    return tuple(networks)


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def citizen_address(peer: str, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str:
    """The citizen's address: ``peer`` unless it is a trusted proxy; then X-Forwarded-For from the right."""
    if not _trusted(peer, proxies):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: the proxy itself is all we know
    return hops[0] if hops else peer
