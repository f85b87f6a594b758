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
from langgraph_moa.llm.usage import check_priced
from langgraph_moa.spec.files import read_text_file
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.providers import PROVIDERS
from langgraph_moa.spec.topology import Topology

KEYS_ENV = "MOA_SERVE_KEYS"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


# --- bearer keys ------------------------------------------------------------------------------


def _is_key(text: str) -> bool:
    # ASCII only: clients send the header as bytes that servers read as latin-1, so a non-ASCII
    # key (compared as UTF-8) could never match. Refused at load time instead of never working.
    return text.isascii() and text.isprintable() and not any(c.isspace() for c in text)


def load_keys(keys_file: str | Path | None = None, *, env_value: str | None = None) -> list[str]:
    """Bearer keys from a file (one per line; blank lines and lines starting with ``#`` are
    skipped) and from ``MOA_SERVE_KEYS`` (comma-separated; ``env_value`` replaces the
    environment's). A keys file that cannot be read or holds no key is an error: the operator
    asked for authentication."""
    keys: list[str] = []
    if keys_file is not None:
        path = Path(keys_file)
        text = read_text_file(path, what="the keys file")  # bounded: /dev/zero is one line
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not _is_key(line):
                raise MoAInputError(
                    f"keys file {str(path)!r}, line {number}: a key is one word of printable "
                    "ASCII characters (an Authorization header cannot carry others)"
                )
            keys.append(line)
        if not keys:
            raise MoAInputError(f"the keys file {str(path)!r} holds no key")
    value = os.environ.get(KEYS_ENV, "") if env_value is None else env_value
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if not _is_key(item):
            raise MoAInputError(
                f"{KEYS_ENV}: a key is one word of printable ASCII characters (an Authorization "
                "header cannot carry others)"
            )
        keys.append(item)
    return list(dict.fromkeys(keys))


class KeyRing:
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
    """The address a literal host stands for, read the way resolvers and HTTP clients read it:
    IPv6 (brackets and zone allowed, IPv4-mapped taken as IPv4) and every IPv4 form
    ``inet_aton`` accepts (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``0``);
    None for a name."""
    text = host.strip().strip("[]").split("%", 1)[0]
    if not text or any(c.isspace() for c in text):
        return None
    try:
        ip: _IP = ipaddress.ip_address(text)
    except ValueError:
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(text))
        except (OSError, UnicodeError, ValueError):
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _resolve(host: str) -> set[_IP]:
    """Every address ``host`` stands for: itself if literal, else what getaddrinfo gives (the
    name with and without a trailing dot); empty if it does not resolve."""
    ip = _ip_of(host)
    if ip is not None:
        return {ip}
    found: set[_IP] = set()
    for name in dict.fromkeys((host, host.rstrip("."))):
        if not name:
            continue
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError):
            continue
        found |= {ip for info in infos if (ip := _ip_of(str(info[4][0]))) is not None}
    return found


def _is_loopback_name(name: str) -> bool:
    name = name.rstrip(".")
    return name in _LOOPBACK_NAMES or name.endswith(".localhost")


def is_loopback_host(host: str) -> bool:
    """Whether listening on ``host`` keeps the server reachable from this machine only."""
    name = host.strip().lower()
    if _is_loopback_name(name):
        return True
    ip = _ip_of(name)
    if ip is not None:
        return ip.is_loopback
    if not name:
        return False
    addresses = _resolve(name)
    return bool(addresses) and all(ip.is_loopback for ip in addresses)


def _own_addresses() -> set[_IP]:
    """This machine's addresses, as far as the standard library can tell: what its host names
    resolve to, and the source address it would use towards a public IPv4 and IPv6 address
    (a UDP connect sends nothing)."""
    found: set[_IP] = set()
    for name in {socket.gethostname(), socket.getfqdn()}:
        if name:
            found |= _resolve(name.lower())
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                ip = _ip_of(str(s.getsockname()[0]))
        except OSError:
            continue
        if ip is not None:
            found.add(ip)
    return found


class SelfAddress:
    """Tells whether a base URL leads back to this server: same port (the bound one), and a host
    that resolves to an address this server answers on. A loopback or wildcard bind answers on
    every loopback address and on the unspecified address (``0``, ``0.0.0.0``, ``::``, which
    connect to this machine); a wildcard bind also on the machine's own addresses; a bind to
    one address on that address (and the unspecified one). Names are resolved with getaddrinfo
    and literal addresses read in every form the resolver accepts, so ``127.1``, ``2130706433``,
    ``[::1]``, ``localhost.`` or the machine's host name are all recognized."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host.strip().lower().strip("[]")
        self.port = port
        ip = _ip_of(self.host)
        self.wildcard = self.host == "" or (ip is not None and ip.is_unspecified)
        self.loopback = not self.wildcard and is_loopback_host(self.host)
        self.ips: set[_IP] = set() if self.wildcard else _resolve(self.host)
        if self.wildcard:
            self.ips |= _own_addresses()

    def _answers_on(self, ip: _IP) -> bool:
        if ip.is_unspecified or ip in self.ips:
            return True
        return (self.wildcard or self.loopback) and ip.is_loopback

    def matches(self, url: str) -> bool:
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            return False
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return False
        if (port or (443 if parts.scheme.lower() == "https" else 80)) != self.port:
            return False
        name = parts.hostname.lower()
        if _ip_of(name) is None and _is_loopback_name(name):
            return self.wildcard or self.loopback or any(ip.is_loopback for ip in self.ips)
        return any(self._answers_on(ip) for ip in _resolve(name))


def _shown_url(url: str) -> str:
    """A base URL as it may be shown: scheme://host:port/path, without user, password, query or
    fragment (any of which can hold a secret)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return "an invalid URL"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}{parts.path}"


def _base_url(provider: str) -> str | None:
    spec = PROVIDERS.get(provider)  # None: a LangChain or registered provider
    if spec is None or not spec.openai_compatible:
        return None
    url = spec.resolve_base_url()
    if url is None and provider == "openai":
        url = OPENAI_DEFAULT_BASE_URL
    return url


def refusal_of(topology: Topology, here: SelfAddress) -> str | None:
    """Why this server will not run the topology, or None."""
    for agent in topology.agents():
        url = _base_url(agent.provider)
        if url and here.matches(url):
            return (
                f"its agent {agent.name or agent.model!r} ({agent.model}) points back at this "
                f"server ({_shown_url(url)}), which would make it call itself without end"
            )
    if topology.review != "none":
        return "it pauses for a human review, which an HTTP completion cannot wait for"
    try:
        check_priced(topology, PriceTable(topology.prices))
    except MoAInputError as e:  # configuration: refused at start-up, not at each request
        return str(e)
    return None
