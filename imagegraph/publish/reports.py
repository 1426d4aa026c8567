"""Where run reports go: a file the user names, and the project's `reports:` setting.

`reports: {dir: PATH}` writes `PATH/<run>.html` and `PATH/latest.html`;
`reports: {s3: ENDPOINT, bucket: B, prefix: P}` uploads `P<run>.html` and
`Platest.html` (prefix concatenated raw, as `s3_prefix` is). Files are written
atomically, so a web server never serves half a page.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import PublishError
from .s3 import describe_error, make_client, object_url


def write_file(path: Path, html: str) -> Path:
    """Write `html` to `path` atomically (readable by a web server: 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def publish_report(html: str, run_id: str, setting: dict, root: Path) -> list[str]:
    """Store the page where the project's `reports:` setting says; the paths or URLs written."""
    names = (f"{run_id}.html", "latest.html")
    if "dir" in setting:
        base = Path(setting["dir"])
        base = base if base.is_absolute() else root / base
        return [str(write_file(base / n, html)) for n in names]
    endpoint, bucket, prefix = setting["s3"], setting.get("bucket", "boot-images"), setting.get("prefix", "")
    client = make_client(endpoint)
    out = []
    for n in names:
        key = f"{prefix}{n}"
        try:
            client.put_object(
                Bucket=bucket, Key=key, Body=html.encode(), ContentType="text/html; charset=utf-8"
            )
        except Exception as exc:  # botocore's errors have no common base worth naming here
            raise PublishError(f"report {key}: {describe_error(exc, endpoint, bucket)}") from exc
        out.append(object_url(endpoint, bucket, key))
    return out
