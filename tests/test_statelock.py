"""statelock.py: the state directory's lock, and what an unusable state directory says."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegraph.state import StateError
from imagegraph.statelock import StateLock


def test_a_state_directory_that_cannot_be_made_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError) as info, StateLock(blocker / "st", "up"):
        pass
    assert info.value.exit_status == 2
    text = str(info.value)
    assert str(blocker / "st") in text and "--state PATH" in text and "up writes" in text


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    from imagegraph.errors import LockHeldError

    with StateLock(tmp_path, "up"):
        with pytest.raises(LockHeldError) as info, StateLock(tmp_path, "gc"):
            pass
        assert "(up)" in str(info.value) and "--wait" in str(info.value)
    with StateLock(tmp_path, "gc"):
        pass
