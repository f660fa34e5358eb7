"""Which proxy, if any, a request to an engine goes through: ``HTTP(S)_PROXY``, ``NO_PROXY``.

The conventions curl, requests and httpx share: ``http_proxy``/``HTTP_PROXY`` for http
targets, ``https_proxy``/``HTTPS_PROXY`` for https, ``all_proxy``/``ALL_PROXY`` for both;
``NO_PROXY`` is a comma-separated list of hosts, domains (``example.com`` also matches
``api.example.com``; a leading dot is optional), ``host:port``, IP networks
(``10.0.0.0/8``) or ``*`` for every host. The variables are read with
:func:`urllib.request.getproxies`.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ProxyEnvironment"]


@dataclass(frozen=True, slots=True)
class ProxyEnvironment:
    """The proxy variables as they were when this was made."""

    proxies: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> ProxyEnvironment:
        return cls(dict(urllib.request.getproxies()))

    def proxy_for(self, scheme: str, host: str, port: int) -> str | None:
        """The proxy URL for ``scheme://host:port``, or ``None`` to connect directly."""
        proxy = self.proxies.get(scheme) or self.proxies.get("all")
        if not proxy or _bypassed(host, port, self.proxies.get("no", "")):
            return None
        return proxy if "://" in proxy else f"http://{proxy}"


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, wanted_port = entry, None
        if entry.count(":") == 1 and not entry.startswith("["):  # host:port, never IPv6
            name, _, text = entry.partition(":")
            wanted_port = int(text) if text.isdigit() else None
        name = name.strip("[]").lstrip(".")
        if wanted_port is not None and wanted_port != port:
            continue
        if host == name or host.endswith("." + name) or _in_network(host, name):
            return True
    return False


def _in_network(host: str, entry: str) -> bool:
    if "/" not in entry:
        return False
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
