"""Where image downloads may go: the address policy. Pure: no I/O.

A server that answers with an image URL chooses where the client connects
next. Pointed at ``127.0.0.1``, ``10.0.0.5`` or ``169.254.169.254`` (a
cloud's metadata service), that is a request forgery from inside the user's
network. So a download may connect only to public addresses, plus the kinds
of address the base URL itself is on: the mock on ``127.0.0.1`` (or
``localhost``) may serve its images from loopback, a gateway on ``10.0.0.5``
from private addresses, but neither opens the other kinds.

:func:`address_kind` sorts an address into one of :data:`KINDS`;
:class:`AddressPolicy` says which kinds a download may reach.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from yarl import URL

from .errors import InvalidResponseError

__all__ = ["KINDS", "AddressPolicy", "address_kind", "checked_url", "host_kind", "same_host"]

# public: globally routable. loopback: this machine (and 0.0.0.0, which reaches it).
# link_local: 169.254.0.0/16 and fe80::/10, where metadata services live.
# private: 10/8, 172.16/12, 192.168/16, fc00::/7 and the other non-global ranges
# Python lists as private. reserved: everything else that is not global
# (shared 100.64/10, multicast, documentation ranges...).
KINDS = ("public", "loopback", "link_local", "private", "reserved")


def address_kind(address: str) -> str:
    """The kind of an IP address given as text (an IPv6 zone is ignored).

    Raises ``ValueError`` when ``address`` is not an IP address.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:  # ::ffff:127.0.0.1 reaches 127.0.0.1
            ip = mapped
    if ip.is_loopback or ip.is_unspecified:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_private:
        return "private"
    if ip.is_global and not ip.is_multicast:
        return "public"
    return "reserved"


def host_kind(host: str) -> str | None:
    """The kind of a URL's host when it is known without a DNS lookup, else None.

    An IP literal (``[...]`` brackets allowed) has its address's kind;
    ``localhost`` and names under ``.localhost`` are loopback (RFC 6761).
    """
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "loopback"
    try:
        return address_kind(name)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """The kinds of address an image download may connect to."""

    allowed: frozenset[str] = frozenset({"public"})

    @classmethod
    def for_base(cls, base_kinds: Iterable[str]) -> AddressPolicy:
        """Public addresses, plus the kinds the base URL's host is on."""
        return cls(frozenset({"public", *base_kinds}))

    def allows(self, address: str) -> bool:
        """May a download connect to ``address``? Not an IP address: no."""
        try:
            return address_kind(address) in self.allowed
        except ValueError:
            return False

    def refusal(self, host: str, address: str) -> str:
        """Why a download to ``host`` (at ``address``) is refused, in one sentence."""
        try:
            kind = address_kind(address).replace("_", "-")
        except ValueError:
            kind = "unknown"
        at = host if host.strip("[]") == address else f"{host} ({address})"
        return (
            f"refusing to download the image from {at}: a {kind} address, "
            "and the base URL is not on one"
        )


def checked_url(url: str, policy: AddressPolicy) -> str:
    """The host of an image URL that may be fetched: http(s), and an allowed IP literal or a name.

    The host is spelled as aiohttp will resolve it (an IDN in punycode).
    Raises :class:`InvalidResponseError` (a billed answer that is unusable).
    """
    try:
        parts = URL(url)
        scheme, host = parts.scheme.lower(), parts.raw_host
    except (ValueError, TypeError):
        raise InvalidResponseError("the image URL is malformed") from None
    if scheme not in ("http", "https"):
        raise InvalidResponseError(f"refusing to download an image URL with scheme {scheme[:20]!r}")
    if not host:
        raise InvalidResponseError("the image URL has no host")
    try:
        address_kind(host)
    except ValueError:
        return host  # a name: the client's resolver checks what it resolves to
    if not policy.allows(host):
        raise InvalidResponseError(policy.refusal(host, host))
    return host


def same_host(a: str, b: str) -> bool:
    """Whether two host names are one: case and a trailing dot do not count."""
    return a.rstrip(".").lower() == b.rstrip(".").lower()
