"""Fixtures for a real Slurm.

* `slurm_cluster` (session): munge, slurmctld and slurmd on 127.0.0.1 in a temporary
  directory (tests/slurmcluster.py); every test leaves it with no job queued or running.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurmcluster import SlurmCluster, have_slurm


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    if not have_slurm():
        pytest.skip(
            "needs root and Slurm (slurmctld, slurmd, slurm-client, munge: scripts/install-system-deps.sh)"
        )
    # Not under pytest's tmp (mode 0700): munged runs as the munge user and must reach its directory.
    root = Path(tempfile.mkdtemp(prefix="ig-slurm-cluster-"))
    try:
        cluster = SlurmCluster(root).start()
        yield cluster
        cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session's cluster, its queue emptied after the test (and its node back in service)."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
    if slurm_cluster.node_state() not in ("idle", "mixed", "allocated"):
        slurm_cluster.revive_node()
