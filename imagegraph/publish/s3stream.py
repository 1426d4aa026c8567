"""Sending a SquashFS to S3 while mksquashfs is still writing it.

mksquashfs writes a seekable file: the superblock at offset 0 last, and it
may rewind over the blocks of a file it finds to be a duplicate. So a part
sent early can be stale. `StreamedUpload` makes that safe:

- A multipart upload to a **staging key** (`<first tag's key>.staging-<hex>`)
  is begun once the file outgrows the multipart threshold (smaller files keep
  the plain upload). While the file grows, a part is sent once mksquashfs
  has written one more part beyond it; the first part (the superblock) is
  never sent early. Two parts in flight while mksquashfs runs (it has the
  CPU); `max_concurrency` after.
- When mksquashfs has exited 0, `finish` reads the final file once: every
  part is hashed and compared with the sha256 recorded when it was sent;
  parts that differ or were never sent are (re-)sent, then the upload is
  completed. The same read gives the whole file's sha256.
- The staging object carries no layer key (it never counts as published).
  Publishing copies it server-side onto the real key with the usual metadata
  (layer key, sha256, boot files' ETags: S3 fixes metadata when an upload
  begins, before the file's sha256 is known), then deletes it.
- Any failure, cancel or Ctrl-C aborts the multipart upload (and deletes a
  completed staging object): nothing under a final key, no incomplete
  upload left.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import botocore.exceptions

from ..redact import redact
from ..runner import Cancelled, cancel_requested
from .s3 import MiB, S3Target, error_code, sha256_file

STREAM_PART = 8 * MiB  # small parts, so a few hundred MB stream at all (S3's minimum is 5 MiB)
# Bigger parts later, within S3's 10,000: 1,000 x 8 MiB, 8,000 x 64 MiB, then 1 GiB (1.5 TiB in all).
LATER_PARTS = ((1000, 64 * MiB), (9000, 1024 * MiB))
EARLY_SENDERS = 2  # parts in flight while mksquashfs runs (it has the CPU; `max_concurrency` after)
POLL = 0.05  # seconds between looks at the growing file


def part_ranges(size: int, part: int = STREAM_PART) -> list[tuple[int, int]]:
    """(start, end) of each part of a `size`-byte file: `part` bytes for 1,000 parts, then bigger."""
    out: list[tuple[int, int]] = []
    start = 0
    while start < size:
        step = part
        for after, bigger in LATER_PARTS:
            if len(out) >= after:
                step = max(part, bigger)
        end = min(size, start + step)
        out.append((start, end))
        start = end
    if len(out) > 1 and out[-1][1] - out[-1][0] < 5 * MiB:
        # Every part but the last must be >= 5 MiB; a small tail joins the part before.
        last = out.pop()
        out[-1] = (out[-1][0], last[1])
    return out


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@dataclass
class StreamStats:
    """What streaming did (for the log and the tests)."""

    sent_early: int = 0  # parts sent while mksquashfs ran
    resent: int = 0  # parts whose bytes changed after they were sent
    sent_after: int = 0  # parts first sent after mksquashfs exited (the first, the tail)
    streamed: bool = False  # False: the file stayed below the threshold (plain upload)


@dataclass
class StreamedUpload:
    """A multipart upload to a staging key that follows a file as it is written.

    Use `writing(path)` around the command that writes the file, then
    `finish(path)`; `discard()` (idempotent) removes what was sent.
    """

    target: S3Target
    key: str  # the final key the staging key is named after
    part: int = STREAM_PART
    early_senders: int = EARLY_SENDERS
    stats: StreamStats = field(default_factory=StreamStats)
    staging_key: str = ""
    sha256: str = ""  # of the whole file, after finish
    size: int = 0
    _upload_id: str | None = None
    _completed: bool = False
    _sent: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # part no -> (sha256 hex, etag, b64)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    def __post_init__(self) -> None:
        self.staging_key = f"{self.key}.staging-{secrets.token_hex(6)}"
        self._checksum = self.target.checksum_enabled()

    # -- while mksquashfs runs

    @contextmanager
    def writing(self, path: Path) -> Iterator[None]:
        """Send parts of `path` while the body runs; on an exception, abort everything sent."""
        self._stop.clear()
        thread = threading.Thread(target=self._follow, args=(Path(path),), name="s3-stream", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            self._stop.set()
            thread.join()
            self.discard()
            raise
        self._stop.set()
        thread.join()

    def _follow(self, path: Path) -> None:
        inflight: dict[int, Future[None]] = {}
        pool = ThreadPoolExecutor(self.early_senders, thread_name_prefix="s3-early")
        try:
            with open(path, "rb") as f:
                while not self._stop.wait(POLL):
                    for n, fut in list(inflight.items()):
                        if fut.done():
                            del inflight[n]
                            if fut.exception() is None:
                                self.stats.sent_early += 1
                    size = os.fstat(f.fileno()).st_size
                    if self._upload_id is None and size <= self.target.settings.multipart_threshold:
                        continue
                    ranges = part_ranges(size, self.part)
                    # Parts 2.. whose end mksquashfs has passed by a whole part; never part 1.
                    for n, (start, end) in enumerate(ranges[:-1], start=1):
                        if len(inflight) >= self.early_senders or cancel_requested():
                            break
                        if n == 1 or n in self._sent or n in inflight or end + self.part > size:
                            continue
                        self._begin()
                        inflight[n] = pool.submit(self._send_range, path, n, start, end)
        except BaseException as exc:  # finish() re-sends what failed here; the error is kept for the log
            self._error = exc
        finally:
            pool.shutdown(wait=True)
            self.stats.sent_early += sum(1 for fut in inflight.values() if fut.exception() is None)

    def _send_range(self, path: Path, n: int, start: int, end: int) -> None:
        with open(path, "rb") as f:
            f.seek(start)
            self._send(n, f.read(end - start))

    # -- requests

    def _begin(self) -> None:
        if self._upload_id is not None:
            return
        t = self.target
        extra = {"ChecksumAlgorithm": "SHA256"} if self._checksum else {}
        for attempt in t.retrying():
            with attempt:
                r = t.client.create_multipart_upload(
                    Bucket=t.bucket, Key=self.staging_key, Metadata={"imagegraph-role": "staging"}, **extra
                )
        self._upload_id = r["UploadId"]
        self.stats.streamed = True
        t.log.info("streaming SquashFS to S3 while it is written", key=self.staging_key, step="s3")

    def _send(self, n: int, data: bytes) -> None:
        digest = hashlib.sha256(data).digest()
        self._put_part(n, data, digest)

    def _put_part(self, n: int, data: bytes, digest: bytes) -> None:
        t = self.target
        extra = {"ChecksumSHA256": _b64(digest)} if self._checksum else {}
        for attempt in t.retrying():
            with attempt:
                if cancel_requested():
                    raise Cancelled(f"{t.layer or 'run'}: cancelled while uploading")
                r = t.client.upload_part(
                    Bucket=t.bucket,
                    Key=self.staging_key,
                    UploadId=self._upload_id,
                    PartNumber=n,
                    Body=data,
                    **extra,
                )
        with self._lock:
            self._sent[n] = (digest.hex(), str(r["ETag"]), _b64(digest))

    # -- after mksquashfs

    def finish(self, path: Path) -> str:
        """Bring every part in line with the final file, complete the staging object; its sha256.

        Returns "" when the file stayed below the multipart threshold and
        nothing was sent, or when streaming failed (everything sent is then
        removed, with a warning): the plain upload applies. `sha256` is set
        either way. Raises Cancelled (after removing what was sent).
        """
        path = Path(path)
        t = self.target
        size = path.stat().st_size
        whole = hashlib.sha256()
        if self._upload_id is None and size <= t.settings.multipart_threshold:
            with open(path, "rb") as f:
                while chunk := f.read(4 * MiB):
                    whole.update(chunk)
            self.sha256, self.size = whole.hexdigest(), size
            return ""
        try:
            self._begin()
            ranges = part_ranges(size, self.part)
            todo: list[tuple[int, int, int, bytes]] = []  # (part, start, end, digest)
            with open(path, "rb") as f:
                for n, (start, end) in enumerate(ranges, start=1):
                    f.seek(start)
                    data = f.read(end - start)
                    whole.update(data)
                    digest = hashlib.sha256(data).digest()
                    sent = self._sent.get(n)
                    if sent is None or sent[0] != digest.hex():
                        if sent is not None:
                            self.stats.resent += 1
                        else:
                            self.stats.sent_after += 1
                        todo.append((n, start, end, digest))
            self._send_all(path, todo)
            parts = []
            for n in range(1, len(ranges) + 1):
                _, etag, b64 = self._sent[n]
                parts.append(
                    {"PartNumber": n, "ETag": etag, **({"ChecksumSHA256": b64} if self._checksum else {})}
                )
            for attempt in t.retrying():
                with attempt:
                    t.client.complete_multipart_upload(
                        Bucket=t.bucket,
                        Key=self.staging_key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": parts},
                    )
            self._completed = True
        except Cancelled:
            self.discard()
            raise
        except Exception as exc:  # PublishError included
            # The plain upload has its own retries, the checksum fallback and the clear errors.
            self.discard()
            t.log.warning(
                "streaming the SquashFS failed; uploading it whole instead",
                error=redact(str(exc)),
                step="s3",
            )
            self.stats.streamed = False
            self.sha256, self.size = sha256_file(path), size
            return ""
        self.sha256, self.size = whole.hexdigest(), size
        t.log.info(
            "SquashFS streamed",
            key=self.staging_key,
            size=size,
            parts=len(ranges),
            sent_early=self.stats.sent_early,
            resent=self.stats.resent,
            step="s3",
        )
        return self.staging_key

    def _send_all(self, path: Path, todo: list[tuple[int, int, int, bytes]]) -> None:
        def one(item: tuple[int, int, int, bytes]) -> None:
            n, start, end, digest = item
            with open(path, "rb") as f:
                f.seek(start)
                self._put_part(n, f.read(end - start), digest)

        workers = max(1, min(self.target.settings.max_concurrency, len(todo)))
        with ThreadPoolExecutor(workers, thread_name_prefix="s3-part") as pool:
            for fut in [pool.submit(one, item) for item in todo]:
                fut.result()

    # -- clean-up

    def discard(self) -> None:
        """Abort the multipart upload, or delete the completed staging object (best effort, logged)."""
        t = self.target
        upload_id, self._upload_id = self._upload_id, None
        completed, self._completed = self._completed, False
        try:
            if completed:
                for attempt in t.retrying(attempts=3):
                    with attempt:
                        t.client.delete_object(Bucket=t.bucket, Key=self.staging_key)
            elif upload_id is not None:
                for attempt in t.retrying(attempts=3):
                    with attempt:
                        t.client.abort_multipart_upload(
                            Bucket=t.bucket, Key=self.staging_key, UploadId=upload_id
                        )
                t.log.info("aborted streamed upload", key=self.staging_key, step="s3")
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in ("NoSuchUpload", "NoSuchKey", "404"):
                t.log.warning(
                    "could not remove streamed upload", key=self.staging_key, error=str(exc), step="s3"
                )
        except Exception as exc:
            t.log.warning(
                "could not remove streamed upload; it stays until the bucket's lifecycle rules remove it",
                key=self.staging_key,
                error=redact(str(exc)),
                step="s3",
            )
