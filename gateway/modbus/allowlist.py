"""Which hosts the Modbus poller may connect to: an allow-list of networks.

A registry row names a host and port; without a limit, whoever can register a meter can make
the poller open TCP connections anywhere (a port scanner inside the utility's network). The
registry refuses addresses outside the list, and the poller checks again before it connects:
rows can also arrive by other paths, and a host name may resolve somewhere else tomorrow. A
name is resolved once per refresh and the poller connects to the checked address, not to the
name, so a DNS answer cannot change between check and connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

from gateway.settings import IpNetwork, Settings, parse_networks
from protocols.errors import UsageError

__all__ = ["DEFAULT_ALLOW_LIST", "HostAllowList"]


@dataclass(frozen=True, slots=True)
class HostAllowList:
    networks: tuple[IpNetwork, ...]

    @classmethod
    def parse(cls, text: str) -> HostAllowList:
        return cls(parse_networks(text))

    def allows_address(self, address: str) -> bool:
        """Whether ``address`` (an IP literal) lies in an allowed network; names are not."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    def check_registration(self, host: str) -> None:
        """UsageError if ``host`` is an IP literal outside the list (names are checked on use)."""
        if _is_ip(host) and not self.allows_address(host):
            raise UsageError(f"{host} is outside the networks Modbus meters may be polled in")

    async def resolve(self, host: str) -> str:
        """The address to connect to for ``host``; UsageError unless every address is allowed."""
        addresses = [host] if _is_ip(host) else await _resolve(host)
        refused = [a for a in addresses if not self.allows_address(a)]
        if refused:
            raise UsageError(
                f"{host[:100]} ({refused[0]}) is outside the networks Modbus meters may be"
                " polled in (GATEWAY_MODBUS_ALLOWED_NETWORKS)"
            )
        return addresses[0]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _resolve(host: str) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"cannot resolve {host[:100]!r}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise UsageError(f"{host[:100]!r} has no address")
    return addresses


DEFAULT_ALLOW_LIST = HostAllowList.parse(Settings.model_fields["modbus_allowed_networks"].default)
