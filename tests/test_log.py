"""imagegraph.log: what reaches stderr besides structured events."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

RACE = """
import sys, threading, time, warnings
from imagegraph import log
log.configure("json")
inside = threading.Event()
def s3_thread():  # botocore's import: `with warnings.catch_warnings(): ...`
    with warnings.catch_warnings():
        inside.set()
        time.sleep(0.3)
t = threading.Thread(target=s3_thread)
t.start()
inside.wait()
import requests  # the registry thread: adds its filter inside the window
t.join()  # the window closes: the filters saved before it come back, requests' is gone
sys.modules.pop("urllib3.contrib.socks", None)
try:
    import urllib3.contrib.socks  # what a later import of requests' adapters does: warns, then fails
except ImportError:
    pass
"""


@pytest.mark.skipif(importlib.util.find_spec("socks") is not None, reason="PySocks installed: no warning")
def test_no_raw_socks_warning_when_threads_race_on_warning_filters() -> None:
    """Every line under JOURNAL_STREAM is JSON: urllib3's PySocks warning never reaches stderr."""
    r = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SOCKS" not in r.stderr, r.stderr
