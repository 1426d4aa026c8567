"""Benchmark: reading, storing and diffing a package inventory, against dpkg-query by hand.

The root is a directory holding a copy of this host's dpkg database (a real
Debian system's, several hundred packages), read as an image's would be.

1. In a fresh `python` process, after its imports: `read_inventory(root)` +
   `Inventory.compress()` (what a build adds after its last step).
2. The same `dpkg-query --admindir ROOT/var/lib/dpkg -W -f ...` run by hand
   from the shell's point of view (a subprocess, output thrown away): what the
   read costs at least.
3. In the same fresh process: diffing that inventory against a copy with 10%
   of the versions bumped and 5% of the packages removed (`diff_inventories`).
Alternating, ROUNDS times; medians. Also the inventory's JSON and stored sizes.
Usage: python bench/inventory_bench.py [ROUNDS]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# In a fresh process, after the imports (imagegraph's import time is not this feature's):
# seconds to read + compress, seconds to diff, package count, stored bytes, changes found.
CHILD = """
import dataclasses, io, sys, time
from imagegraph.diff import diff_inventories
from imagegraph.packages import read_inventory
from imagegraph.runner import Runner
t0 = time.perf_counter()
inv = read_inventory(sys.argv[1], Runner("bench", logfile=io.StringIO()))
blob = inv.compress()
t1 = time.perf_counter()
pkgs = [dataclasses.replace(p, version=p.version + "+b1") if i % 10 == 0 else p
        for i, p in enumerate(inv.packages) if i % 20 != 1]
t2 = time.perf_counter()
n = len(diff_inventories(inv, dataclasses.replace(inv, packages=pkgs)))
t3 = time.perf_counter()
print(t1 - t0, t3 - t2, len(inv.packages), len(blob), n)
"""


def timed(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    root = Path(tempfile.mkdtemp(prefix="inventory-bench-"))
    try:
        (root / "var/lib/dpkg/updates").mkdir(parents=True)
        shutil.copy("/var/lib/dpkg/status", root / "var/lib/dpkg/status")
        from imagegraph.packages import DPKG_SHOWFORMAT

        by_hand = ["dpkg-query", "--admindir", str(root / "var/lib/dpkg"), "-W", "-f", DPKG_SHOWFORMAT]
        ours, hand, diffs = [], [], []
        for _ in range(rounds):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(root)], capture_output=True, text=True, check=True
            ).stdout
            read_s, diff_s, count, stored, changes = out.strip().splitlines()[-1].split()
            ours.append(float(read_s))
            diffs.append(float(diff_s))
            hand.append(timed(by_hand)[0])
        import io
        import json

        from imagegraph.packages import read_inventory
        from imagegraph.runner import Runner

        inv = read_inventory(root, Runner("bench", logfile=io.StringIO()))
        raw = len(json.dumps(inv.to_json(), sort_keys=True).encode())
        m_ours, m_hand, m_diff = (statistics.median(x) for x in (ours, hand, diffs))
        print(f"packages: {count}; inventory JSON {raw / 1024:.0f} KiB, stored {int(stored) / 1024:.1f} KiB")
        print(f"read + compress:    {m_ours * 1000:.0f} ms (median of {rounds} fresh processes)")
        print(f"dpkg-query by hand: {m_hand * 1000:.0f} ms  (ratio {m_ours / m_hand:.2f}x)")
        print(f"diff ({changes} changes):   {m_diff * 1000:.0f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
