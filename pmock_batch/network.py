"""How the client reaches the server: proxies, trusted CAs and extra headers.

Pure helpers. :mod:`pmock_batch.cli` calls them at start-up, so that a bad
setting is a usage error before anything is sent; :mod:`pmock_batch.client`
calls them again when it opens its session, and applies the result.

- :class:`ProxyRoutes` picks the proxy for one URL: ``--proxy`` for every
  request (``--proxy ''`` for none); else ``https_proxy`` or ``http_proxy`` by
  the URL's scheme, then ``all_proxy``, unless ``no_proxy`` matches the host.
  Lower-case variables win over upper-case ones, as in curl and :mod:`urllib`.
- :func:`ssl_context` builds the one TLS context: ``--ca-bundle``, else
  ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``, else the system's CAs.
- :func:`parse_header` and :func:`check_headers` check ``--header 'Name: value'``.
- :func:`safe_url` hides the credentials of a proxy URL. Proxy URLs and header
  values may hold secrets: no message built here shows them.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "CA_DIR_ENV",
    "CA_FILE_ENV",
    "ProxyRoutes",
    "check_headers",
    "check_proxy",
    "parse_header",
    "safe_url",
    "ssl_context",
]

CA_FILE_ENV = "SSL_CERT_FILE"
CA_DIR_ENV = "SSL_CERT_DIR"

# RFC 9110 token characters: what a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED_HEADERS = {
    "authorization": "the API key is sent as 'Authorization: Bearer ...' from the variable "
    "named by --api-key-env",
    "proxy-authorization": "put proxy credentials in the proxy URL: http://user:password@host:port",
    "host": "it is set from the URL",
    "content-length": "it is set from the body",
    "content-type": "the body is always JSON",
    "transfer-encoding": "it is set by the HTTP client",
    "connection": "it is set by the HTTP client",
}


def safe_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def check_proxy(url: str, source: str) -> str:
    """Check one proxy URL and return it normalised; ``source`` names where it came from.

    A URL without a scheme (``proxy.corp:3128``) means ``http://``, as in curl.
    Only ``http://`` proxies are supported; HTTPS requests go through them in a
    CONNECT tunnel, so the proxy never sees the traffic in clear. Raises
    ValueError with a message that never shows the credentials.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    shown = safe_url(text)
    try:
        parts = urlsplit(text)
        _ = parts.port  # a bad port raises here
    except ValueError:
        raise ValueError(f"{source} is not a valid proxy URL: {shown}") from None
    scheme = parts.scheme.lower()
    if scheme != "http":
        raise ValueError(
            f"{source}: {scheme}:// proxies are not supported, only http:// ones "
            f"(HTTPS requests go through them in a CONNECT tunnel): {shown}"
        )
    if not parts.hostname:
        raise ValueError(f"{source} has no host: {shown}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{source} must be http://[user:password@]host:port, got {shown}")
    return text


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str | None]:
    """The variable's name as set and its value; lower case wins, and empty means unset."""
    for key in (name, name.upper()):
        if key in environ:
            return key, environ[key].strip() or None
    return name.upper(), None


def _bypassed(host: str, port: int, patterns: Iterable[str]) -> bool:
    """Whether ``no_proxy`` patterns match: ``*``, a domain and its subdomains, an IP
    or a CIDR block, each optionally with ``:port``."""
    host = host.lower().rstrip(".")
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    for pattern in patterns:
        if pattern == "*":
            return True
        try:
            net = ipaddress.ip_network(pattern.strip("[]"), strict=False)
        except ValueError:
            net = None
        if net is not None:
            if addr is not None and addr.version == net.version and addr in net:
                return True
            continue
        name, want = pattern, None
        head, sep, tail = pattern.rpartition(":")
        if sep and tail.isdigit():
            name, want = head, int(tail)
        name = name.strip("[]").lstrip("*").strip(".")
        if want is not None and want != port:
            continue
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


@dataclass(frozen=True, slots=True, repr=False)
class ProxyRoutes:
    """Which proxy, if any, each request goes through. Build it with :meth:`resolve`."""

    explicit: str | None = None  # --proxy: every request, whatever the environment says
    http: str | None = None  # for http:// URLs
    https: str | None = None  # for https:// URLs
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def resolve(cls, explicit: str | None, environ: Mapping[str, str]) -> ProxyRoutes:
        """From ``--proxy`` (which wins) or the environment. Raises ValueError.

        An empty ``--proxy ''`` means "connect directly", whatever the
        environment says, as in curl.
        """
        if explicit is not None and not explicit.strip():
            return cls()
        if explicit is not None:
            return cls(explicit=check_proxy(explicit, "--proxy"))
        routes: dict[str, str | None] = {}
        all_name, all_value = _env(environ, "all_proxy")
        for scheme in ("http", "https"):
            name, value = _env(environ, f"{scheme}_proxy")
            if value is None:
                name, value = all_name, all_value
            routes[scheme] = None if value is None else check_proxy(value, name)
        _, no_proxy = _env(environ, "no_proxy")
        patterns = tuple(p.strip().lower() for p in (no_proxy or "").split(",") if p.strip())
        return cls(http=routes["http"], https=routes["https"], no_proxy=patterns)

    def for_url(self, url: str) -> str | None:
        """The proxy URL for a request to ``url``, or None to connect directly."""
        if self.explicit is not None:
            return self.explicit
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None or not parts.hostname:
            return None
        port = parts.port or (443 if scheme == "https" else 80)
        return None if _bypassed(parts.hostname, port, self.no_proxy) else proxy

    def __repr__(self) -> str:
        def show(url: str | None) -> str:
            return "None" if url is None else repr(safe_url(url))

        return (
            f"ProxyRoutes(explicit={show(self.explicit)}, http={show(self.http)}, "
            f"https={show(self.https)}, no_proxy={self.no_proxy!r})"
        )


def ssl_context(ca_bundle: Path | None, environ: Mapping[str, str]) -> ssl.SSLContext:
    """The TLS context for every connection. Raises ValueError for an unusable bundle.

    ``ca_bundle`` (``--ca-bundle``) replaces the system's CAs, as curl's
    ``--cacert`` does; so do ``SSL_CERT_FILE`` (a PEM file) and ``SSL_CERT_DIR``
    (a hashed directory) when it is None. A bundle for a TLS-inspecting proxy
    must therefore also hold the public CAs, if other hosts are reached.
    """
    if ca_bundle is not None:
        return _cached("--ca-bundle", cafile=ca_bundle, capath=None)
    _, file_value = _env(environ, CA_FILE_ENV.lower())
    _, dir_value = _env(environ, CA_DIR_ENV.lower())
    if file_value is None and dir_value is None:
        return _cached("", cafile=None, capath=None)
    cafile = Path(file_value) if file_value is not None else None
    capath = Path(dir_value) if dir_value is not None else None
    if capath is not None and not capath.is_dir():
        raise ValueError(f"{CA_DIR_ENV}={capath}: no such directory")
    source = CA_FILE_ENV if cafile is not None else CA_DIR_ENV
    return _cached(source, cafile=cafile, capath=capath)


# The last context built, by what it was built from. Loading a CA bundle takes
# ~15 ms of CPU, and a run asks twice: at start-up (to refuse a bad setting
# early) and when its session opens. A changed file is loaded again.
_last: tuple[object, ssl.SSLContext] | None = None


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)


def _cached(source: str, *, cafile: Path | None, capath: Path | None) -> ssl.SSLContext:
    global _last
    key = (source, cafile, capath, _stamp(cafile), _stamp(capath))
    if _last is not None and _last[0] == key:
        return _last[1]
    if cafile is None and capath is None:
        context = ssl.create_default_context()
    else:
        context = _load_cas(source, cafile=cafile, capath=capath)
    _last = (key, context)
    return context


def _load_cas(source: str, *, cafile: Path | None, capath: Path | None) -> ssl.SSLContext:
    if cafile is not None and not cafile.is_file():
        problem = "not a file" if cafile.exists() else "no such file"
        raise ValueError(f"{source} {cafile}: {problem}")
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except ssl.SSLError as exc:
        raise ValueError(
            f"{source} {cafile}: not a PEM bundle of CA certificates ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise ValueError(f"{source} {cafile}: cannot read it: {exc.strerror or exc}") from exc


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``("Name", "value")``. Raises ValueError, never showing the value."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise ValueError("a header must look like 'Name: value'")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name")
    reason = _RESERVED_HEADERS.get(name.lower())
    if reason is not None:
        raise ValueError(f"{name} cannot be set with --header: {reason}")
    if not value:
        raise ValueError(f"the {name} header has an empty value")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"the value of {name} has a control character (such as a line break)")
    if not value.isascii():
        raise ValueError(f"the value of {name} has a non-ASCII character")
    return name, value


def check_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The parsed headers as a tuple; a name given twice (in any case) is a ValueError."""
    seen: set[str] = set()
    result = []
    for name, value in headers:
        if name.lower() in seen:
            raise ValueError(f"--header {name} is given more than once")
        seen.add(name.lower())
        result.append((name, value))
    return tuple(result)
