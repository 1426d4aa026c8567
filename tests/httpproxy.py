"""A recording HTTP forward proxy on 127.0.0.1, for tests that a package manager uses `proxy`.

Every request is recorded as (method, absolute URL as the client asked for it) and answered from
`upstream` (a local server), whatever host the URL names: a test can give its repositories a
host name that does not resolve (`standin.invalid`), so only a client that really goes through
the proxy reaches them.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.parse
import urllib.request


class RecordingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[tuple[str, str]] = []
        proxy = self
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self, body: bool) -> None:
                proxy.requests.append((self.command, self.path))
                parts = urllib.parse.urlsplit(self.path)
                target = proxy.upstream + parts.path + (f"?{parts.query}" if parts.query else "")
                try:
                    with direct.open(urllib.request.Request(target, method=self.command), timeout=30) as resp:
                        status, data, ctype = resp.status, resp.read(), resp.headers.get("Content-Type")
                except urllib.error.HTTPError as exc:
                    status, data, ctype = exc.code, exc.read(), exc.headers.get("Content-Type")
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                if ctype:
                    self.send_header("Content-Type", ctype)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._relay(True)

            def do_HEAD(self) -> None:
                self._relay(False)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
