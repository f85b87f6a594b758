"""Who may call the server and what it agrees to run: bearer keys checked in constant time,
loopback checks, and refusing a topology whose agents would call this server back."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit

from langgraph_moa.errors import MoAInputError
from langgraph_moa.providers import PROVIDERS
from langgraph_moa.topology import Topology

KEYS_ENV = "MOA_SERVE_KEYS"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


# --- bearer keys ------------------------------------------------------------------------------


def load_keys(keys_file: str | Path | None = None, *, env_value: str | None = None) -> list[str]:
    """Bearer keys from a file (one per line; blank lines and lines starting with ``#`` are
    skipped) and from ``MOA_SERVE_KEYS`` (comma-separated; ``env_value`` replaces the
    environment's). A keys file that cannot be read or holds no key is an error: the operator
    asked for authentication."""
    keys: list[str] = []
    if keys_file is not None:
        path = Path(keys_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise MoAInputError(f"cannot read the keys file {str(path)!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise MoAInputError(f"the keys file {str(path)!r} is not UTF-8 text") from None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if any(c.isspace() for c in line) or not line.isprintable():
                raise MoAInputError(
                    f"keys file {str(path)!r}, line {number}: a key is one word of printable "
                    "characters"
                )
            keys.append(line)
        if not keys:
            raise MoAInputError(f"the keys file {str(path)!r} holds no key")
    value = os.environ.get(KEYS_ENV, "") if env_value is None else env_value
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if any(c.isspace() for c in item) or not item.isprintable():
            raise MoAInputError(f"{KEYS_ENV}: a key is one word of printable characters")
        keys.append(item)
    return list(dict.fromkeys(keys))


class _KeyRing:
    """Checks a bearer token against the configured keys in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        # Digests make every comparison the same length, whatever the keys' lengths.
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = False
        for known in self._digests:  # no early exit: every key is compared
            found |= hmac.compare_digest(known, digest)
        return found


# --- where this server is, for the recursion guard --------------------------------------------

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_of(host: str) -> _IP | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _resolve(host: str) -> set[_IP]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    found = {_ip_of(str(info[4][0])) for info in infos}
    return {ip for ip in found if ip is not None}


def is_loopback_host(host: str) -> bool:
    """Whether listening on ``host`` keeps the server reachable from this machine only."""
    name = host.strip().lower()
    if name in _LOOPBACK_NAMES:
        return True
    ip = _ip_of(name)
    if ip is not None:
        return ip.is_loopback
    if not name:
        return False
    addresses = _resolve(name)
    return bool(addresses) and all(ip.is_loopback for ip in addresses)


class SelfAddress:
    """Tells whether a base URL leads back to this server (same port, and a host that reaches
    the address it listens on: localhost/127.x/::1/0.0.0.0 for a loopback or wildcard bind, plus
    the machine's own names and addresses for a wildcard bind)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host.strip().lower().strip("[]")
        self.port = port
        ip = _ip_of(self.host)
        self.wildcard = self.host == "" or (ip is not None and ip.is_unspecified)
        self.loopback = not self.wildcard and is_loopback_host(self.host)
        self.names: set[str] = {self.host}
        self.ips: set[_IP] = {ip} if ip is not None else _resolve(self.host)
        if self.wildcard:
            for name in (socket.gethostname(), socket.getfqdn()):
                if name:
                    self.names.add(name.lower())
                    self.ips |= _resolve(name)

    def _reaches_loopback(self, name: str, ip: _IP | None) -> bool:
        if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
            return True
        return ip is not None and (ip.is_loopback or ip.is_unspecified)

    def matches(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if (port or (443 if parts.scheme == "https" else 80)) != self.port:
            return False
        name = parts.hostname.lower()
        ip = _ip_of(name)
        if name in self.names or (ip is not None and ip in self.ips):
            return True
        if self.wildcard or self.loopback:
            return self._reaches_loopback(name, ip) or (ip is not None and ip in self.ips)
        return ip is not None and ip.is_unspecified


def _base_url(provider: str) -> str | None:
    spec = PROVIDERS[provider]
    if not spec.openai_compatible:
        return None
    url = spec.resolve_base_url()
    if url is None and provider == "openai":
        url = OPENAI_DEFAULT_BASE_URL
    return url


def _refusal(topology: Topology, here: SelfAddress) -> str | None:
    """Why this server will not run the topology, or None."""
    for agent in topology.agents():
        url = _base_url(agent.provider)
        if url and here.matches(url):
            return (
                f"its agent {agent.name or agent.model!r} ({agent.model}) points back at this "
                f"server ({url}), which would make it call itself without end"
            )
    if topology.review != "none":
        return "it pauses for a human review, which an HTTP completion cannot wait for"
    return None
