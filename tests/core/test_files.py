"""The package's one atomic write and one ffmpeg lookup."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from letstalk_core.files import atomic_write, atomic_write_text, ffmpeg_exe


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "state.json", "old")
    assert path.read_text() == "old"

    def half_then_fail(temporary: str) -> None:
        with open(temporary, "w") as stream:
            stream.write("half of the new")
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_the_written_file_has_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_ffmpeg_is_found_and_runs():
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True)
    assert result.returncode == 0 and "ffmpeg version" in result.stdout
