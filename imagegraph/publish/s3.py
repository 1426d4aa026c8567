"""S3: uploading boot artifacts, and telling cheaply what is already there.

Two users:

- `S3Target` uploads files for one (endpoint, bucket) with boto3's managed
  transfer (multipart above a configurable threshold, parts in parallel).
  Every object carries user metadata `imagegraph-key` (the layer key) and
  `sha256` (of the whole file), so any machine can tell what an object is
  without local state. SHA256 transfer checksums are requested too and
  dropped for an endpoint that rejects them (some gateways do).
- `S3Index` answers the planner's "is this layer's artifact published?" with
  ONE listing per (endpoint, bucket, prefix), shared by every layer that
  publishes there, plus a HEAD only for objects whose metadata matters.

Failure handling, and why:

- Transient faults (connection resets, timeouts, 5xx, throttling) are retried
  by botocore (standard mode) and, around a whole transfer, by the one retry
  policy (`imagegraph.retry`: `IMAGEGRAPH_RETRY_*`, interruptible by Ctrl-C):
  botocore alone re-sends one request, while a multipart upload that lost a
  part has to be retried as a transfer.
- A failed transfer never leaves an object under the final key (a multipart
  upload only becomes visible at CompleteMultipartUpload; a PUT only when its
  body arrived whole). s3transfer aborts the multipart uploads it started;
  because that abort can itself fail while the network is bad, the upload IDs
  we create are recorded (a botocore event hook) and aborted again, with
  retries, after a failure.
- `NoSuchBucket` and access errors fail at once with a clear `PublishError`;
  retrying cannot fix them. Messages never contain credentials: the values
  read from the environment are registered with `redact` and every message
  passes through it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PublishError
from ..log import get_logger
from ..redact import add_secret, redact
from ..retry import RetryPolicy
from ..runner import Cancelled
from .s3read import THROTTLE_CODES, S3Reader, S3ReadError, describe, reader_for

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from tenacity import Retrying

DEFAULT_REGION = "us-east-1"
MiB = 1024 * 1024
META_KEY = "imagegraph-key"
META_SHA256 = "sha256"

# Codes with which an endpoint says "I do not do flexible checksums".
_CHECKSUM_REJECTED = {
    "InvalidArgument",
    "NotImplemented",
    "InvalidRequest",
    "BadDigest",
    "XAmzContentSHA256Mismatch",
}


DEFAULT_PART_MIB = 64


def part_size() -> int:
    """Bytes per multipart part, and the size above which an upload is multipart
    (IMAGEGRAPH_S3_PART_MIB, default 64 MiB, held within S3's 5 MiB to 5 GiB part sizes).

    Lower it for a gateway behind a proxy that limits request bodies (nginx's
    `client_max_body_size`); a file's ETag follows the part size it went up with.
    """
    try:
        mib = int(os.environ.get("IMAGEGRAPH_S3_PART_MIB", DEFAULT_PART_MIB))
    except ValueError:
        mib = DEFAULT_PART_MIB
    return max(5, min(5 * 1024, mib)) * MiB


@dataclass(frozen=True)
class S3Settings:
    """Tunables; the defaults suit multi-GB SquashFS files on a LAN gateway."""

    multipart_threshold: int = field(default_factory=part_size)
    multipart_chunksize: int = field(default_factory=part_size)
    # Server-side copies below this are one CopyObject (S3's limit for it is 5 GiB), as the AWS
    # Java SDK's TransferManager and rclone (--s3-copy-cutoff) do: a gateway copies the object in
    # one pass (Ceph RGW can even share its data) instead of copying parts and then joining them.
    copy_threshold: int = 5 * 1024 * MiB
    max_concurrency: int = 4
    botocore_attempts: int = 3  # tries per request, the first included (botocore "standard" mode)
    # per transfer, each attempt with its own botocore retries (default: IMAGEGRAPH_RETRY_*)
    retry: RetryPolicy = field(default_factory=RetryPolicy.from_env)
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    checksum: bool = True  # ask for SHA256 transfer checksums when the endpoint accepts them
    # Send the SquashFS while mksquashfs writes it (s3stream.py): IMAGEGRAPH_S3_STREAM=1. Off by
    # default: it wins only when the upload waits on the link; on 2 busy cores it lost (bench/README.md).
    stream: bool = field(default_factory=lambda: os.environ.get("IMAGEGRAPH_S3_STREAM", "0") == "1")
    region: str | None = None
    retry_timeouts: bool = True  # False: a request that timed out is not sent again (planning)

    @classmethod
    def quick(cls, timeout: float = 5.0) -> S3Settings:
        """For existence checks (planning): fail fast rather than hang on a dead endpoint. `timeout`
        bounds the connection and again each answer (planning's `--registry-timeout`); an endpoint
        that connects and never answers costs one timeout through the stdlib reader, and at most
        two through botocore (its retry of a read timeout cannot be turned off alone)."""
        return cls(
            botocore_attempts=2,
            retry=RetryPolicy.from_env().with_attempts(1),
            connect_timeout=timeout,
            read_timeout=timeout,
            retry_timeouts=False,
        )


# ---------------------------------------------------------------------------- clients


def credentials() -> tuple[str, str] | None:
    """image-builder's S3_ACCESS/S3_SECRET, registered as secrets; None -> boto3's own chain."""
    access, secret = os.environ.get("S3_ACCESS"), os.environ.get("S3_SECRET")
    add_secret(access)
    add_secret(secret)
    if access and secret:
        return access, secret
    return None


def normalize_endpoint(endpoint: str) -> str:
    return endpoint.strip().rstrip("/")


# botocore at DEBUG logs request headers, whose Authorization holds the access key ID,
# and error bodies that can repeat it. A filter on the loggers that emit them masks
# registered secrets, whatever logging configuration the application chooses.
_NOISY_LOGGERS = (
    "botocore.endpoint",
    "botocore.auth",
    "botocore.parsers",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.retryhandler",
    "botocore.credentials",
    "s3transfer.tasks",
    "s3transfer.futures",
    "s3transfer.utils",
    "urllib3.connectionpool",
)


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        masked = redact(text)
        if masked != text:
            record.msg, record.args = masked, None
        return True


_redact_filter = _RedactFilter()


def _install_log_redaction() -> None:
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        if _redact_filter not in lg.filters:
            lg.addFilter(_redact_filter)


_session_lock = threading.Lock()
_session: Any = None


def _botocore_session() -> Any:
    """One botocore session per process: loading S3's service model takes ~0.3 s per session."""
    global _session
    if _session is None:
        import botocore.session

        session = botocore.session.get_session()
        # As botocore.loaders.create_loader makes it, of the class below.
        data_path = session.get_config_variable("data_path")
        paths = (
            [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
            if data_path is not None
            else None
        )
        session.register_component("data_loader", _loader_class()(extra_search_paths=paths))
        _session = session
    return _session


def _loader_class() -> type:
    import botocore.loaders

    class Loader(botocore.loaders.Loader):
        """botocore's loader, but `list_available_services` is a `ServiceNames`: a client's creation
        asks it only whether its service is there, and botocore would list every service's
        directories for that (400+, ~40 ms of a no-op `up`; botocore PR #3687 drops the call)."""

        def list_available_services(self, type_name: str) -> ServiceNames:
            return ServiceNames(self, type_name)

    return Loader


class ServiceNames:
    """The services that have `type_name` data, as botocore's `Loader.list_available_services`
    lists them; `in` looks at the one service's API versions only (the same rule: some version
    directory holds the type's file), the full list is made when it is iterated (an error message)."""

    def __init__(self, loader: Any, type_name: str):
        self.loader, self.type_name = loader, type_name

    def __contains__(self, name: object) -> bool:
        import botocore.exceptions

        try:
            return bool(self.loader.list_api_versions(name, self.type_name))
        except botocore.exceptions.DataNotFoundError:
            return False

    def _all(self) -> list[str]:
        import botocore.loaders

        return botocore.loaders.Loader.list_available_services(self.loader, self.type_name)

    def __iter__(self) -> Any:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, i: Any) -> Any:
        return self._all()[i]


def make_client(endpoint: str, settings: S3Settings | None = None) -> Any:
    """A boto3-compatible S3 client for `endpoint` with path-style addressing."""
    settings = settings or S3Settings()
    region = (
        settings.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or DEFAULT_REGION
    )
    import botocore.config

    creds = credentials()
    _install_log_redaction()
    config = botocore.config.Config(
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "total_max_attempts": settings.botocore_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=max(10, settings.max_concurrency * 2),
        # botocore >= 1.36 adds CRC32 checksums to every upload by default, which
        # several S3-compatible gateways reject; checksums are requested explicitly instead.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    with _session_lock:  # botocore sessions are not thread-safe; clients are
        session = _botocore_session()
        if creds is None:
            # Keys found by boto3's chain are secrets too.
            found = session.get_credentials()
            if found is not None:
                frozen = found.get_frozen_credentials()
                add_secret(frozen.access_key)
                add_secret(frozen.secret_key)
                add_secret(frozen.token)
        return session.create_client(
            "s3",
            endpoint_url=normalize_endpoint(endpoint),
            region_name=region,
            aws_access_key_id=creds[0] if creds else None,
            aws_secret_access_key=creds[1] if creds else None,
            config=config,
        )


class ClientAhead:
    """An S3 client for one coming `S3Target`, made in a thread while other work runs.

    A layer's upload needs a client after its SquashFS is made; the first
    client of a process costs ~0.3 s of botocore import and client creation,
    which this takes off that path (made as mksquashfs starts, handed to the
    upload's target). One client serves one target, so no two targets share
    a client's event handlers. A failure here is dropped: the target then
    makes its own client and meets the error itself.
    """

    def __init__(self, endpoint: str, settings: S3Settings | None = None):
        self.endpoint, self.settings = normalize_endpoint(endpoint), settings or S3Settings()
        self._future: Future = Future()
        # Not a daemon: an interpreter exiting mid-import would break the thread's imports.
        threading.Thread(target=self._make, args=(endpoint, self.settings), name="s3-client-ahead").start()

    def _make(self, endpoint: str, settings: S3Settings) -> None:
        try:
            client = make_client(endpoint, settings)
            from boto3.s3.transfer import TransferConfig  # noqa: F401  (the upload imports it next)
        except BaseException as exc:  # noqa: BLE001  (the target makes its own and reports)
            self._future.set_exception(exc)
        else:
            self._future.set_result(client)

    def take(self, endpoint: str, settings: S3Settings | None = None) -> Any | None:
        """The client (waiting for it), or None if making it failed or it was made for another
        endpoint or settings."""
        if (normalize_endpoint(endpoint), settings or S3Settings()) != (self.endpoint, self.settings):
            return None
        try:
            return self._future.result()
        except Exception:
            return None


def object_url(endpoint: str, bucket: str, key: str) -> str:
    """Path-style URL of an object: `<endpoint>/<bucket>/<key>`."""
    return f"{normalize_endpoint(endpoint)}/{bucket}/{urllib.parse.quote(key, safe='/~')}"


# ---------------------------------------------------------------------- error handling


def _botocore_errors() -> Any:
    """botocore.exceptions if botocore is loaded: an exception can only be botocore's once it is."""
    return sys.modules.get("botocore.exceptions")


def error_code(exc: BaseException) -> str:
    if isinstance(exc, S3ReadError):
        return exc.code
    bx = _botocore_errors()
    if bx is not None and isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code or str(status or "")
    return ""


def _status(exc: BaseException) -> int:
    bx = _botocore_errors()
    if bx is not None and isinstance(exc, bx.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """Connection trouble, 5xx and throttling: worth another attempt."""
    if isinstance(exc, S3ReadError):
        return exc.transient
    bx = _botocore_errors()
    if bx is not None:
        if isinstance(exc, bx.SSLError):
            return False  # a certificate problem does not go away
        if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
            return True
        if isinstance(exc, bx.ClientError):
            return error_code(exc) in THROTTLE_CODES or _status(exc) >= 500
    return isinstance(exc, ConnectionError | TimeoutError)


def _message(exc: BaseException) -> str:
    if isinstance(exc, S3ReadError):
        return exc.message()
    bx = _botocore_errors()
    if bx is not None and isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        text = f"{err.get('Code', '')}: {err.get('Message', '') or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(text)


def _kind(exc: BaseException) -> str:
    if isinstance(exc, S3ReadError):
        return exc.kind
    bx = _botocore_errors()
    if bx is not None and isinstance(exc, bx.NoCredentialsError):
        return "credentials"
    if bx is not None and isinstance(exc, bx.SSLError):
        return "tls"
    return "other"


def describe_error(exc: BaseException, endpoint: str, bucket: str) -> str:
    """One clear sentence for the user, without secrets."""
    return describe(error_code(exc), _kind(exc), _message(exc), is_transient(exc), endpoint, bucket)


# ----------------------------------------------------------------------------- hashing


def sha256_file(path: Path, bufsize: int = 4 * MiB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FileDigests:
    """A file's sha256 and size, and the ETags S3 gives its bytes: the MD5 of one PutObject or
    CopyObject, and (from the multipart threshold on) that of `S3Target.upload`'s multipart upload."""

    sha256: str
    size: int
    etags: frozenset[str]


def copy_digested(
    src: Path, dest: Path, settings: S3Settings | None = None, bufsize: int = 4 * MiB
) -> FileDigests:
    """Copy `src` to `dest`, hashing the bytes as they pass (sha256, MD5, MD5 per upload part).

    The ETags let a publish check that an object holds these very bytes
    without trusting its metadata. Parts are `multipart_chunksize` raised to
    S3's 5 MiB minimum, as s3transfer cuts them (its growth of parts past
    10,000 of them, at 640 GB for 64 MiB parts, is not followed: such an ETag simply differs).
    """
    s = settings or S3Settings()
    part_size = max(s.multipart_chunksize, 5 * MiB)
    sha, whole = hashlib.sha256(), hashlib.md5()  # noqa: S324  (S3's ETag is an MD5)
    parts: list[bytes] = []
    part, in_part, size = hashlib.md5(), 0, 0  # noqa: S324
    with open(src, "rb") as f, open(dest, "wb") as out:
        while chunk := f.read(min(bufsize, part_size - in_part)):
            out.write(chunk)
            sha.update(chunk)
            whole.update(chunk)
            part.update(chunk)
            in_part += len(chunk)
            size += len(chunk)
            if in_part == part_size:
                parts.append(part.digest())
                part, in_part = hashlib.md5(), 0  # noqa: S324
    if in_part:
        parts.append(part.digest())
    etags = {whole.hexdigest()}
    if size >= s.multipart_threshold and parts:
        etags.add(f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}")  # noqa: S324
    return FileDigests(sha.hexdigest(), size, frozenset(etags))


# ------------------------------------------------------------------------------ target


class ObjectAction(StrEnum):
    """What publishing did to one object (an S3 object or a file in a publish directory)."""

    UPLOADED = "uploaded"
    COPIED = "copied"  # server-side, from another tag's object
    UNCHANGED = "unchanged"  # already there with the same content and metadata
    WRITTEN = "written"  # a file in a directory target


@dataclass(frozen=True)
class UploadResult:
    bucket: str
    key: str
    url: str
    size: int
    sha256: str
    etag: str
    action: ObjectAction


class S3Target:
    """Uploads to one bucket of one endpoint, for one layer."""

    # Endpoints that rejected SHA256 transfer checksums, shared by every target of the process.
    _no_checksum: set[str] = set()
    _no_checksum_lock = threading.Lock()

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        layer: str = "",
        settings: S3Settings | None = None,
        client: Any = None,
    ):
        self.endpoint = normalize_endpoint(endpoint)
        self.bucket = bucket
        self.layer = layer
        self.settings = settings or S3Settings()
        self.client = client or make_client(self.endpoint, self.settings)
        self.log = get_logger(layer=layer) if layer else get_logger()
        self._started: dict[str, set[str]] = {}  # key -> multipart upload IDs we created
        self._started_lock = threading.Lock()
        self.client.meta.events.register("after-call.s3.CreateMultipartUpload", self._record_upload_id)
        self.client.meta.events.register("after-call.s3.CompleteMultipartUpload", self._forget_upload_id)

    @property
    def target_name(self) -> str:
        return f"s3 {redact(self.endpoint)}/{self.bucket}"

    def url(self, key: str) -> str:
        return object_url(self.endpoint, self.bucket, key)

    # -- bookkeeping of multipart uploads we start (to abort them after a failure)

    def _record_upload_id(self, parsed: dict | None = None, **kw: Any) -> None:
        if parsed and parsed.get("UploadId") and parsed.get("Key"):
            with self._started_lock:
                self._started.setdefault(parsed["Key"], set()).add(parsed["UploadId"])

    def _forget_upload_id(self, parsed: dict | None = None, **kw: Any) -> None:
        key = (parsed or {}).get("Key")  # a completed upload needs no abort
        if key:
            with self._started_lock:
                self._started.pop(key, None)

    def _abort_started(self, key: str) -> None:
        import botocore.exceptions  # loaded with the client

        with self._started_lock:
            ids = sorted(self._started.pop(key, set()))
        for upload_id in ids:
            try:
                for attempt in self._retrying(attempts=3):
                    with attempt:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                self.log.info("aborted incomplete multipart upload", key=key, upload_id=upload_id, step="s3")
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) == "NoSuchUpload":
                    continue  # s3transfer already aborted it
                self.log.warning(
                    "could not abort multipart upload",
                    key=key,
                    upload_id=upload_id,
                    error=_message(exc),
                    step="s3",
                )
            except Exception as exc:  # the endpoint is gone: say what is left behind
                self.log.warning(
                    "could not abort multipart upload; it stays until the bucket's lifecycle rules remove it",
                    key=key,
                    upload_id=upload_id,
                    error=_message(exc),
                    step="s3",
                )

    # -- retries

    def _retrying(self, attempts: int | None = None) -> Retrying:
        policy = self.settings.retry if attempts is None else self.settings.retry.with_attempts(attempts)

        def on_retry(exc: BaseException, attempt: int, wait: float) -> None:
            self.log.warning(
                "S3 request failed; retrying",
                attempt=attempt,
                of=policy.attempts,
                wait=round(wait, 2),
                error=_message(exc),
                step="s3",
            )

        # Ctrl-C ends a retrying upload's wait at once (the policy's sleep), not only a running command.
        return policy.retrying(on_retry, retry_if=is_transient)

    def retrying(self, attempts: int | None = None) -> Retrying:
        """The retry loop (tenacity) for one request to this target: transient faults only."""
        return self._retrying(attempts)

    def checksum_enabled(self) -> bool:
        """Whether to send SHA256 transfer checksums (asked for, and the endpoint has not rejected them)."""
        return self.settings.checksum and self.endpoint not in self._no_checksum

    def failure(self, exc: BaseException, what: str) -> PublishError:
        """A PublishError for `exc` during `what`, in words for the user, without secrets."""
        return self._fail(exc, what)

    def delete(self, key: str) -> None:
        """Delete one object (retried; a missing object is fine). Raises PublishError."""
        try:
            for attempt in self._retrying():
                with attempt:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
        except Cancelled:
            raise
        except Exception as exc:
            raise self._fail(exc, f"cannot delete {key}") from None

    def _fail(self, exc: BaseException, what: str) -> PublishError:
        return PublishError(
            self.layer, self.target_name, f"{what}: {describe_error(exc, self.endpoint, self.bucket)}"
        )

    # -- operations

    def head(self, key: str) -> dict | None:
        """HeadObject -> {size, etag, metadata} or None when the object does not exist."""
        import botocore.exceptions  # loaded with the client

        try:
            for attempt in self._retrying():
                with attempt:
                    r = self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, f"cannot read {key}") from None
        except Cancelled:
            raise
        except Exception as exc:
            raise self._fail(exc, f"cannot read {key}") from None
        return {
            "size": int(r.get("ContentLength", 0)),
            "etag": str(r.get("ETag", "")).strip('"'),
            "metadata": {k.lower(): v for k, v in (r.get("Metadata") or {}).items()},
        }

    def check_bucket(self) -> None:
        """Fail early and clearly when the bucket is missing or not ours to write."""
        import botocore.exceptions  # loaded with the client

        try:
            for attempt in self._retrying():
                with attempt:
                    self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                exc.response.setdefault("Error", {})["Code"] = "NoSuchBucket"
            raise self._fail(exc, "cannot use the bucket") from None
        except Cancelled:
            raise
        except Exception as exc:
            raise self._fail(exc, "cannot use the bucket") from None

    def _transfer_config(self, multipart_threshold: int | None = None) -> TransferConfig:
        # boto3 (and s3transfer) only for uploads: planning's index needs botocore alone (0.04-0.08 s)
        from boto3.s3.transfer import TransferConfig

        s = self.settings
        return TransferConfig(
            multipart_threshold=multipart_threshold or s.multipart_threshold,
            multipart_chunksize=s.multipart_chunksize,
            max_concurrency=s.max_concurrency,
            use_threads=True,
            preferred_transfer_client="classic",
        )

    def upload(
        self, path: Path, key: str, metadata: dict[str, str], sha256: str | None = None
    ) -> UploadResult:
        """Upload `path` to `key` with `metadata` (+ sha256); verified by a HEAD afterwards."""

        path = Path(path)
        sha256 = sha256 or sha256_file(path)
        size = path.stat().st_size
        meta = {**metadata, META_SHA256: sha256}
        self._transfer(
            key,
            lambda manager, extra: manager.upload(str(path), self.bucket, key, extra_args=extra),
            {"Metadata": meta},
            self.checksum_enabled(),
            self._transfer_config(),
            f"uploading {key} failed",
        )
        head = self.head(key)
        if head is None or head["size"] != size or head["metadata"].get(META_SHA256) != sha256:
            raise PublishError(
                self.layer,
                self.target_name,
                f"uploaded {key} but it reads back wrong (size/sha256 differ): {head}",
            )
        self.log.info("uploaded", key=key, size=size, step="s3")
        return UploadResult(
            self.bucket, key, self.url(key), size, sha256, head["etag"], ObjectAction.UPLOADED
        )

    def _transfer(
        self,
        key: str,
        start: Callable[[Any, dict[str, Any]], Any],
        extra: dict[str, Any],
        use_checksum: bool,
        config: TransferConfig,
        what: str,
    ) -> None:
        """Run one managed transfer onto `key` (`start(manager, extra_args)` -> its future), retried;
        with SHA256 checksums when `use_checksum`, and without them once the endpoint rejects them."""
        import botocore.exceptions  # loaded with the client

        def run(checksum: bool) -> None:
            args = {**extra, "ChecksumAlgorithm": "SHA256"} if checksum else extra
            from boto3.s3.transfer import create_transfer_manager

            for attempt in self._retrying():
                with attempt:
                    try:
                        with create_transfer_manager(self.client, config) as manager:
                            start(manager, args).result()
                    except BaseException:
                        self._abort_started(key)
                        raise

        try:
            try:
                run(use_checksum)
            except botocore.exceptions.ClientError as exc:
                if not (use_checksum and error_code(exc) in _CHECKSUM_REJECTED):
                    raise
                # The endpoint does not take SHA256 transfer checksums: remember, and go on without.
                self.log.info(
                    "endpoint rejects SHA256 checksums; going on without", error=_message(exc), step="s3"
                )
                with self._no_checksum_lock:
                    self._no_checksum.add(self.endpoint)
                run(False)
        except (PublishError, Cancelled):
            raise
        except Exception as exc:
            raise self._fail(exc, what) from None

    def copy(
        self,
        src_key: str,
        key: str,
        metadata: dict[str, str],
        sha256: str,
        size: int,
        *,
        checksum: bool = False,
    ) -> UploadResult:
        """Server-side copy with new metadata: one CopyObject below `copy_threshold`, else a multipart copy.

        Used for the second and later tags: a multi-GB SquashFS crosses the
        build host's link once. Raises PublishError; callers fall back to an
        upload when the endpoint does not implement copies.
        """
        meta = {**metadata, META_SHA256: sha256}
        # One CopyObject asks for a SHA256 of its own: the server then computes the copy's checksum
        # from its bytes (some servers, moto among them, would carry a multipart source's composite
        # checksum over as if it were the whole object's, and a verifying download would fail).
        # A multipart copy asks only when it stands for an upload (the copy of a streamed upload).
        source = {"Bucket": self.bucket, "Key": src_key}
        self._transfer(
            key,
            lambda manager, extra: manager.copy(source, self.bucket, key, extra_args=extra),
            {"Metadata": meta, "MetadataDirective": "REPLACE"},
            (checksum or size < self.settings.copy_threshold) and self.checksum_enabled(),
            self._transfer_config(multipart_threshold=self.settings.copy_threshold),
            f"copying {src_key} to {key} failed",
        )
        head = self.head(key)
        if head is None or head["size"] != size or head["metadata"].get(META_SHA256) != sha256:
            raise PublishError(self.layer, self.target_name, f"copied {key} but it reads back wrong: {head}")
        self.log.info("copied", key=key, source=src_key, step="s3")
        return UploadResult(self.bucket, key, self.url(key), size, sha256, head["etag"], ObjectAction.COPIED)

    def incomplete_uploads(self, prefix: str = "") -> list[dict]:
        """Multipart uploads in progress under `prefix` (for tests and `doctor`)."""
        r = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return list(r.get("Uploads") or [])


def check_bucket(endpoint: str, bucket: str, *, layer: str = "", settings: S3Settings | None = None) -> None:
    """`S3Target.check_bucket` without a botocore client where the reader applies (no ~0.2 s client
    creation before mksquashfs; the upload makes its own client). Raises PublishError."""
    settings = settings or S3Settings()
    reader = reader_for(
        endpoint,
        region=settings.region,
        attempts=settings.botocore_attempts,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
    )
    if reader is None:
        S3Target(endpoint, bucket, layer=layer, settings=settings).check_bucket()
        return
    try:
        settings.retry.call(lambda: reader.head_bucket(bucket), retry_if=is_transient)
    except Cancelled:
        raise
    except Exception as exc:
        if isinstance(exc, S3ReadError) and exc.code in ("404", "NoSuchBucket", "NotFound"):
            exc.code = "NoSuchBucket"
        where = f"s3 {redact(normalize_endpoint(endpoint))}/{bucket}"
        raise PublishError(
            layer,
            where,
            f"cannot use the bucket: {describe_error(exc, normalize_endpoint(endpoint), bucket)}",
        ) from None


# ------------------------------------------------------------------------------- index


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing says about an object (no user metadata: that needs a HEAD)."""

    size: int
    etag: str


@dataclass
class S3Index:
    """Cached, request-counted view of S3 for planning.

    `objects()` lists a prefix once per (endpoint, bucket, prefix); a listing of
    a shorter prefix answers for longer ones. HEADs are cached by key. An
    endpoint that cannot be reached is remembered, so a plan over hundreds of
    layers waits for a dead endpoint once, and every answer about it is None
    ("cannot tell"). Requests go through `s3read` where it reads as botocore
    does (static keys in the environment: no botocore import, no client
    creation), else through a botocore client; `client_factory` (tests)
    forces a client.
    """

    settings: S3Settings = field(default_factory=S3Settings.quick)
    client_factory: Callable[[str, S3Settings], Any] | None = None
    request_count: int = 0
    _clients: dict[str, Any] = field(default_factory=dict)
    _readers: dict[str, S3Reader | None] = field(default_factory=dict)
    _listings: dict[tuple[str, str, str], dict[str, ObjectInfo] | None] = field(default_factory=dict)
    _heads: dict[tuple[str, str, str], dict | None] = field(default_factory=dict)
    _unreachable: dict[str, str] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def _count(self, **kw: Any) -> None:
        with self._lock:
            self.request_count += 1

    def client(self, endpoint: str) -> Any:
        """The botocore client for `endpoint` (made once; gc deletes through it)."""
        endpoint = normalize_endpoint(endpoint)
        with self._lock:
            if endpoint not in self._clients:
                factory = self.client_factory or make_client
                c = factory(endpoint, self.settings)
                c.meta.events.register("before-send.s3", self._count)
                self._clients[endpoint] = c
            return self._clients[endpoint]

    def reader(self, endpoint: str) -> S3Reader | None:
        """The stdlib reader for `endpoint`, or None when botocore must answer."""
        endpoint = normalize_endpoint(endpoint)
        with self._lock:
            if endpoint not in self._readers:
                s = self.settings
                self._readers[endpoint] = (
                    None
                    if self.client_factory is not None
                    else reader_for(
                        endpoint,
                        region=s.region,
                        attempts=s.botocore_attempts,
                        connect_timeout=s.connect_timeout,
                        read_timeout=s.read_timeout,
                        on_request=self._count,
                        retry_timeouts=s.retry_timeouts,
                    )
                )
            return self._readers[endpoint]

    def unreachable(self, endpoint: str) -> str | None:
        """Why an endpoint could not be asked (None when it answered)."""
        return self._unreachable.get(normalize_endpoint(endpoint))

    def _list(self, endpoint: str, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
        reader = self.reader(endpoint)
        if reader is not None:
            return {k: ObjectInfo(size, etag) for k, size, etag in reader.list_objects(bucket, prefix)}
        result: dict[str, ObjectInfo] = {}
        paginator = self.client(endpoint).get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents") or []:
                result[obj["Key"]] = ObjectInfo(int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'))
        return result

    def objects(self, endpoint: str, bucket: str, prefix: str = "") -> dict[str, ObjectInfo] | None:
        """Every object under `prefix`: key -> ObjectInfo; {} for a missing bucket; None if unreachable."""
        endpoint = normalize_endpoint(endpoint)
        with self._lock:
            if endpoint in self._unreachable:
                return None
            if (endpoint, bucket, prefix) in self._listings:
                return self._listings[(endpoint, bucket, prefix)]
            for (e, b, p), listing in self._listings.items():
                if e == endpoint and b == bucket and prefix.startswith(p) and listing is not None:
                    return {k: v for k, v in listing.items() if k.startswith(prefix)}
            result: dict[str, ObjectInfo] | None
            try:
                result = self._list(endpoint, bucket, prefix)
            except Exception as exc:
                if error_code(exc) == "NoSuchBucket":
                    result = {}
                else:
                    self._note_unreachable(endpoint, exc)
                    result = None
            self._listings[(endpoint, bucket, prefix)] = result
            return result

    def _note_unreachable(self, endpoint: str, exc: BaseException) -> None:
        why = describe_error(exc, endpoint, "")
        self._unreachable[endpoint] = why
        # info: the callers report what it leaves unknown (the plan one line per bucket, naming its layers)
        get_logger().info("cannot ask S3", endpoint=redact(endpoint), error=why, step="plan")

    def _head_metadata(self, endpoint: str, bucket: str, key: str) -> dict:
        reader = self.reader(endpoint)
        if reader is not None:
            return reader.head_metadata(bucket, key)
        r = self.client(endpoint).head_object(Bucket=bucket, Key=key)
        return {k.lower(): v for k, v in (r.get("Metadata") or {}).items()}

    def metadata(self, endpoint: str, bucket: str, key: str) -> dict | None:
        """User metadata of one object (HEAD, cached); None when absent or unreachable."""
        endpoint = normalize_endpoint(endpoint)
        ck = (endpoint, bucket, key)
        with self._lock:
            if ck in self._heads:
                return self._heads[ck]
            if endpoint in self._unreachable:
                return None
        # The request goes without the lock (clients and readers are thread-safe): the prefetch reads
        # several objects' metadata at once. Two threads asking for one key both ask; the answers agree.
        meta: dict | None
        try:
            meta = self._head_metadata(endpoint, bucket, key)
        except Exception as exc:
            if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                with self._lock:
                    if endpoint not in self._unreachable:  # one warning, whichever HEAD failed first
                        self._note_unreachable(endpoint, exc)
            meta = None
        with self._lock:
            self._heads[ck] = meta
        return meta

    def invalidate(self) -> None:
        """Forget everything (after publishing)."""
        with self._lock:
            self._listings.clear()
            self._heads.clear()
            self._unreachable.clear()
