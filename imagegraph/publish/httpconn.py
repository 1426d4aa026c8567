"""The registry client's requests over http.client, where they go exactly as requests sends them.

Importing requests (and urllib3 under it) costs about 0.08-0.15 s of CPU per
process, a quarter of a no-op `up`, for what a plan sends: tag lists,
manifest HEADs and token requests to one or two hosts. `send` makes those
with the standard library: one keep-alive connection per thread and host,
TLS verified against the CA file requests would use (certifi's, or the
bundle or certs.d file the client names), `Accept: */*`, `User-Agent:
imagegraph`, and returns a `Response` with the few attributes the client
reads (`status_code`, `headers`, `content`, `text`, `json()`, `links`,
`url`, `reason`).

It declines (returns None: the caller sends the request through requests)
where it might not behave as requests does: a proxy variable in the
environment, `IMAGEGRAPH_HTTP=requests`, or a redirect in the answer
(requests follows it, dropping credentials across hosts; the first answer
is thrown away). Failures raise `SendError` whose text carries what
requests' errors carry ("Connection refused", "timed out",
"CERTIFICATE_VERIFY_FAILED", ...), so the client's messages read the same.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

USER_AGENT = "imagegraph"
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


class SendError(Exception):
    """The request got no answer: `tls` (the handshake or certificate), else the connection/timeout."""

    def __init__(self, text: str, *, tls: bool = False, timeout: bool = False):
        super().__init__(text)
        self.tls = tls
        self.timeout = timeout


def usable() -> bool:
    """Whether requests would send what `send` sends (no proxy in the environment, not turned off)."""
    if os.environ.get("IMAGEGRAPH_HTTP") == "requests":
        return False
    return not any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS)


def basic_auth(username: str, password: str) -> str:
    """The Authorization header requests makes for `auth=(username, password)` (latin-1, as it encodes)."""
    raw = f"{username}:{password}".encode("latin1", errors="strict")
    return "Basic " + base64.b64encode(raw).decode()


def parse_links(value: str) -> dict[str, dict[str, str]]:
    """A `Link` header as requests' `Response.links` reads it (keyed by `rel`, else by the URL)."""
    out: dict[str, dict[str, str]] = {}
    strip = " '\""
    value = value.strip(strip)
    if not value:
        return out
    for val in re.split(", *<", value):
        url, _, params = val.partition(";")
        link = {"url": url.strip("<> '\"")}
        for param in params.split(";") if params else []:
            k, sep, v = param.partition("=")
            if not sep or "=" in v:
                break
            link[k.strip(strip)] = v.strip(strip)
        out[link.get("rel") or link["url"]] = link
    return out


@dataclass
class Response:
    """What the registry client reads of an answer."""

    status_code: int
    reason: str
    headers: http.client.HTTPMessage  # case-insensitive `get` and `in`, as requests' headers
    content: bytes
    url: str

    @property
    def text(self) -> str:
        charset = self.headers.get_content_charset() or "utf-8"
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def links(self) -> dict[str, dict[str, str]]:
        header = self.headers.get("Link")
        return parse_links(header) if header else {}


def _default_cafile() -> str | None:
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


@dataclass
class Connections:
    """Keep-alive connections, one per thread and (scheme, host, port, verification)."""

    _local: threading.local = field(default_factory=threading.local)
    _contexts: dict[bool | str, ssl.SSLContext] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _context(self, verify: bool | str) -> ssl.SSLContext:
        with self._lock:
            ctx = self._contexts.get(verify)
            if ctx is None:
                if verify is False:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                elif verify is True:
                    ctx = ssl.create_default_context(cafile=_default_cafile())
                elif os.path.isdir(verify):
                    ctx = ssl.create_default_context(capath=verify)
                else:
                    ctx = ssl.create_default_context(cafile=verify)
                self._contexts[verify] = ctx
            return ctx

    def _pool(self) -> dict[tuple, http.client.HTTPConnection]:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: bytes | None,
        timeout: float | tuple[float, float],
        verify: bool | str,
        params: dict[str, str] | None = None,
    ) -> Response | None:
        """One request; None when the answer is a redirect (requests would follow it). Raises SendError."""
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        split = urllib.parse.urlsplit(url)
        connect_t, read_t = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        key = (split.scheme, split.hostname, split.port, verify if split.scheme == "https" else None)
        target = (split.path or "/") + (f"?{split.query}" if split.query else "")
        hdrs = {"User-Agent": USER_AGENT, "Accept": "*/*", **headers}
        pool = self._pool()
        for fresh in (False, True):
            conn = pool.get(key)
            reused = conn is not None and not fresh
            if conn is None or fresh:
                if conn is not None:
                    conn.close()
                if split.scheme == "https":
                    conn = http.client.HTTPSConnection(
                        split.hostname or "", split.port, timeout=connect_t, context=self._context(verify)
                    )
                else:
                    conn = http.client.HTTPConnection(split.hostname or "", split.port, timeout=connect_t)
                pool[key] = conn
            try:
                conn.request(method, target, body=data, headers=hdrs)
                if conn.sock is not None:
                    conn.sock.settimeout(read_t)
                resp = conn.getresponse()
                body = resp.read()
            except ssl.SSLError as exc:
                conn.close()
                pool.pop(key, None)
                raise SendError(f"{type(exc).__name__}: {exc}", tls=True) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                pool.pop(key, None)
                if reused:  # a keep-alive connection the server had closed: once more on a new one
                    continue
                raise SendError(f"{type(exc).__name__}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                pool.pop(key, None)
                timed_out = isinstance(exc, socket.timeout | TimeoutError)
                text = "timed out" if timed_out and not str(exc) else f"{type(exc).__name__}: {exc}"
                raise SendError(f"{url}: {text}", timeout=timed_out) from None
            if resp.will_close:
                conn.close()
                pool.pop(key, None)
            if 300 <= resp.status < 400 and resp.headers.get("Location"):
                return None
            return Response(resp.status, resp.reason, resp.headers, body, url)
        raise AssertionError("unreachable")  # pragma: no cover
