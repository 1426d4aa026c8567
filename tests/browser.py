"""Headless Chromium for page tests: a screenshot and the DOM after rendering.

Debian's chromium, with the flags that work on a closed network as root, and a
fresh profile per call so no state leaks between tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
]


@dataclass
class Rendered:
    screenshot: Path
    dom: str


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        why = "chromium is not installed (scripts/install-system-deps.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)  # CI installs it: missing there is a broken setup, not a skip
        pytest.skip(why)
    return path


def render(page: Path, out_dir: Path, size: tuple[int, int] = (1400, 1000)) -> Rendered:
    """Open `page` (a local file) headless: a PNG screenshot in `out_dir` and the rendered DOM."""
    exe = chromium()
    shot = out_dir / f"{page.stem}.png"
    url = page.absolute().as_uri()
    with tempfile.TemporaryDirectory(prefix="ig-chromium-") as profile:
        common = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
        subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    with tempfile.TemporaryDirectory(prefix="ig-chromium-") as profile:
        common = [exe, *FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
        ).stdout
    return Rendered(shot, dom)


def ink(png: Path) -> float:
    """The share of pixels that are not the page's background (the most common colour)."""
    from PIL import Image

    with Image.open(png) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=rgb.width * rgb.height)
    total = sum(n for n, _ in colours)
    background = max(n for n, _ in colours)
    return (total - background) / total
