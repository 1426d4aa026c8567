"""Reading S3 for plans: object listings and metadata over plain HTTP, signed with SigV4.

A plan (and a no-op `up`) asks S3 two things: which objects lie under a
prefix (ListObjectsV2) and one SquashFS object's metadata (HEAD). botocore
answers both, but importing it and creating its S3 client costs about 0.3 s
of CPU per process (its service model, endpoint rules and client class),
more than the rest of a no-op `up` (bench/README.md). This module asks the
same two questions with the standard library: http.client, SigV4 (AWS's
published algorithm; `tests/test_s3read.py` checks every signature against
botocore's own signer) and ElementTree for the listing.

It is used only where it reads exactly as the botocore client does, and
`reader_for` returns None otherwise (the caller then uses botocore):

- credentials given as static keys in the environment: image-builder's
  `S3_ACCESS`/`S3_SECRET`, or `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
  (with `AWS_SESSION_TOKEN`), which boto3's chain would take first anyway;
- no AWS config file and no `AWS_PROFILE` (a profile can set a CA bundle,
  retries, a credential process, ...);
- no proxy in the environment (botocore honours `*_proxy` and `NO_PROXY`);
- for https, the CA bundle botocore would use (`AWS_CA_BUNDLE`, else certifi's).

Requests are path-style (`<endpoint>/<bucket>/<key>`), as `s3.make_client`
configures botocore. Transient failures (connection errors, timeouts, 5xx,
throttling) are retried like botocore's "standard" mode; a 301/400 naming
the bucket's region is asked again in that region. Failures raise
`S3ReadError` carrying the S3 error code, so callers tell "absent" from
"cannot tell" as they do with botocore's `ClientError`. Secrets never appear
in messages: the keys are registered with `redact`.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..redact import add_secret, redact

DEFAULT_REGION = "us-east-1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
USER_AGENT = "imagegraph-s3read"
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

# Error codes that retrying will not fix: the credentials or the bucket policy.
ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
        "AccountProblem",
        "Forbidden",
        "403",
    }
)
# Codes worth another attempt (with any 5xx status).
THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    }
)
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


class S3ReadError(Exception):
    """A request that did not get its answer: `code` is S3's error code (or the HTTP status)."""

    def __init__(
        self, code: str, message: str, *, status: int = 0, kind: str = "http", timed_out: bool = False
    ):
        super().__init__(redact(message))
        self.code = code
        self.status = status
        self.kind = kind  # "http" (S3 answered), "connection", "tls", "credentials"
        self.timed_out = timed_out  # connected (or not) and no answer within the timeout

    @property
    def transient(self) -> bool:
        if self.kind == "connection":
            return True
        return self.kind == "http" and (self.code in THROTTLE_CODES or self.status >= 500)

    def message(self) -> str:
        """`Code: message` for an S3 answer, `Kind: message` otherwise (as botocore's errors read)."""
        return f"{self.code}: {self}" if self.kind == "http" else f"{self.kind}: {self}"


def describe(code: str, kind: str, message: str, transient: bool, endpoint: str, bucket: str) -> str:
    """One clear sentence for the user about a failed S3 request, without secrets."""
    where = redact(endpoint.strip().rstrip("/"))
    if code == "NoSuchBucket":
        return f"bucket '{bucket}' does not exist at {where}; create it first (imagegraph does not create buckets)"
    if code in ACCESS_CODES:
        return (
            f"access denied to bucket '{bucket}' at {where} ({code}); check S3_ACCESS/S3_SECRET "
            "(or the AWS credentials boto3 finds) and the bucket policy"
        )
    if kind == "credentials":
        return "no S3 credentials: set S3_ACCESS and S3_SECRET (or configure AWS credentials for boto3)"
    if kind == "tls":
        return f"TLS error talking to {where}: {message} (set AWS_CA_BUNDLE for a private CA)"
    if transient:
        return f"{where} is unreachable or failing: {message}"
    return message


# --------------------------------------------------------------------------- signing


@dataclass(frozen=True)
class Keys:
    access: str
    secret: str
    token: str | None = None


def _quote(s: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(s, safe=safe)


def sign(
    method: str,
    host: str,
    path: str,
    query: dict[str, str],
    keys: Keys,
    region: str,
    when: datetime.datetime,
    payload_sha256: str = EMPTY_SHA256,
) -> dict[str, str]:
    """The headers that sign one S3 request with SigV4 (`path` already percent-encoded).

    Signed: `host`, `x-amz-content-sha256`, `x-amz-date` and, with a session
    token, `x-amz-security-token`; what botocore's S3 signer signs for a
    request carrying those headers.
    """
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    if keys.token:
        headers["x-amz-security-token"] = keys.token
    names = sorted(headers)
    canonical_query = "&".join(sorted(f"{_quote(k)}={_quote(v)}" for k, v in query.items()))
    canonical = "\n".join(
        [
            method,
            path or "/",
            canonical_query,
            "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = hmac.new(f"AWS4{keys.secret}".encode(), day.encode(), hashlib.sha256).digest()
    for part in (region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={keys.access}/{scope}, SignedHeaders={';'.join(names)}, "
        f"Signature={signature}"
    )
    return headers


# --------------------------------------------------------------------------- reader


def static_keys(env: dict[str, str] | os._Environ[str] = os.environ) -> Keys | None:
    """image-builder's S3_ACCESS/S3_SECRET, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, registered as secrets."""
    for a, s, t in (
        ("S3_ACCESS", "S3_SECRET", None),
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    ):
        access, secret = env.get(a), env.get(s)
        if access and secret:
            token = env.get(t) if t else None
            for value in (access, secret, token):
                add_secret(value)
            return Keys(access, secret, token or None)
    return None


def _ca_bundle() -> str | None:
    """The CA file botocore would verify with: AWS_CA_BUNDLE, else certifi's (None: cannot tell)."""
    if os.environ.get("AWS_CA_BUNDLE"):
        return os.environ["AWS_CA_BUNDLE"]
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def reader_for(
    endpoint: str,
    *,
    region: str | None = None,
    attempts: int = 3,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    on_request: Callable[[], None] | None = None,
    retry_timeouts: bool = True,
) -> S3Reader | None:
    """A reader for `endpoint`, or None where it might not read as botocore does (module docstring)."""
    if os.environ.get("IMAGEGRAPH_S3_READ") == "botocore":
        return None
    keys = static_keys()
    if keys is None or os.environ.get("AWS_PROFILE"):
        return None
    config = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    if Path(os.path.expanduser(config)).exists():
        return None
    if any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS):
        return None
    url = urllib.parse.urlsplit(endpoint.strip().rstrip("/"))
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        return None
    cafile = None
    if url.scheme == "https":
        cafile = _ca_bundle()
        if cafile is None:
            return None
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    return S3Reader(
        url.scheme,
        url.hostname,
        url.port,
        url.path.rstrip("/"),
        keys,
        region,
        max(1, attempts),
        connect_timeout,
        read_timeout,
        cafile,
        on_request,
        retry_timeouts,
    )


@dataclass
class S3Reader:
    """ListObjectsV2 and HEAD against one endpoint; thread-safe (one connection per thread)."""

    scheme: str
    hostname: str
    port: int | None
    base_path: str
    keys: Keys
    region: str
    attempts: int
    connect_timeout: float
    read_timeout: float
    cafile: str | None
    on_request: Callable[[], None] | None = None
    # False for planning: an endpoint that did not answer within the timeout is down at once, so a
    # hung one costs one timeout, not one per attempt (the registry client does the same).
    retry_timeouts: bool = True
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _regions: dict[str, str] = field(default_factory=dict, repr=False)  # bucket -> region S3 named

    @property
    def host(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return name if self.port in (None, default) else f"{name}:{self.port}"

    # -- the two questions

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """(key, size, etag without quotes) of every object under `prefix`, page by page."""
        import xml.etree.ElementTree as ET

        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            status, _headers, body = self._request("GET", bucket, "", query)
            root = ET.fromstring(body)
            for obj in root.iter(f"{_S3_NS}Contents"):
                key = urllib.parse.unquote_plus(obj.findtext(f"{_S3_NS}Key") or "")
                size = int(obj.findtext(f"{_S3_NS}Size") or 0)
                yield key, size, (obj.findtext(f"{_S3_NS}ETag") or "").strip('"')
            token = root.findtext(f"{_S3_NS}NextContinuationToken")
            if (root.findtext(f"{_S3_NS}IsTruncated") or "").lower() != "true" or not token:
                return

    def head_metadata(self, bucket: str, key: str) -> dict[str, str]:
        """The object's user metadata (`x-amz-meta-*`, names lowercased); S3ReadError "404" when absent."""
        _status, headers, _body = self._request("HEAD", bucket, key, {})
        return {k[len("x-amz-meta-") :]: v for k, v in headers.items() if k.startswith("x-amz-meta-")}

    def head_bucket(self, bucket: str) -> None:
        """Nothing when the bucket is there and ours to read; S3ReadError ("404", "403", ...) otherwise."""
        self._request("HEAD", bucket, "", {})

    # -- transport

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.scheme == "https":
                ctx = ssl.create_default_context(cafile=self.cafile)
                conn = http.client.HTTPSConnection(
                    self.hostname, self.port, timeout=self.connect_timeout, context=ctx
                )
            else:
                conn = http.client.HTTPConnection(self.hostname, self.port, timeout=self.connect_timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _request(
        self, method: str, bucket: str, key: str, query: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        path = f"{self.base_path}/{_quote(bucket, '')}"
        if key:
            path += "/" + _quote(key, "/~")
        target = path + (
            "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query.items()) if query else ""
        )
        for attempt in range(1, self.attempts + 1):
            try:
                return self._send_once(method, bucket, path, target, query)
            except S3ReadError as exc:
                if not exc.transient or attempt == self.attempts:
                    raise
                if exc.timed_out and not self.retry_timeouts:
                    raise
                # botocore "standard" mode: full jitter, base 2, at most 20 s
                time.sleep(min(20.0, random.random() * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send_once(
        self, method: str, bucket: str, path: str, target: str, query: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        for _redirect in range(2):
            region = self._regions.get(bucket, self.region)
            now = datetime.datetime.now(datetime.UTC)
            headers = sign(method, self.host, path, query, self.keys, region, now)
            headers["user-agent"] = USER_AGENT
            if self.on_request is not None:
                self.on_request()
            conn = self._connection()
            connected = False
            try:
                conn.request(method, target, headers=headers)
                connected = True
                if conn.sock is not None:
                    conn.sock.settimeout(self.read_timeout)
                resp = conn.getresponse()
                body = resp.read()
                answer = {k.lower(): v for k, v in resp.getheaders()}
            except ssl.SSLError as exc:
                self._drop_connection()
                if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(exc).upper():
                    raise S3ReadError("", f"SSLError: {exc}", kind="tls") from None
                raise S3ReadError("", f"SSLError: {exc}", kind="connection") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()  # a broken keep-alive connection is reopened by the next attempt
                timed_out = isinstance(exc, socket.timeout | TimeoutError)
                why = (
                    f"did not answer within {self.read_timeout:g} s"
                    if timed_out and connected
                    else f"did not connect within {self.connect_timeout:g} s"
                    if timed_out
                    else f"{type(exc).__name__}: {exc}"
                )
                raise S3ReadError(
                    "", f"{self.scheme}://{self.host}: {why}", kind="connection", timed_out=timed_out
                ) from None
            if resp.will_close:
                self._drop_connection()
            if 200 <= resp.status < 300:
                return resp.status, answer, body
            code, message = _error(resp.status, body)
            moved = answer.get("x-amz-bucket-region")
            if resp.status in (301, 400) and moved and moved != region:
                self._regions[bucket] = moved  # botocore's S3 region redirector does the same
                continue
            raise S3ReadError(code, message, status=resp.status)
        raise S3ReadError(code, message, status=resp.status)


def _error(status: int, body: bytes) -> tuple[str, str]:
    """S3's error code and message from an error body; the status alone for bodiless answers (HEAD)."""
    import xml.etree.ElementTree as ET

    code, message = str(status), http.client.responses.get(status, "")
    if body:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return code, message
        code = root.findtext("Code") or code
        message = root.findtext("Message") or message
    return code, message


def describe_error(exc: BaseException, endpoint: str, bucket: str) -> str:
    """`describe` for a reader's failure (any other exception: its type and text)."""
    if isinstance(exc, S3ReadError):
        return describe(exc.code, exc.kind, exc.message(), exc.transient, endpoint, bucket)
    return redact(f"{type(exc).__name__}: {exc}")
