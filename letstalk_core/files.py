"""Writing a file whole, and finding ffmpeg: the one way the package does each.

Lowest layer: imports nothing from the package, so every other part may use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(temporary)`` fills a hidden temporary file beside ``path``, which then replaces ``path`` in
    one rename: a reader never sees half a file, and when anything fails (or the process is interrupted)
    the temporary is removed and an existing ``path`` is left as it was. The file gets the permissions a
    plain ``open`` would give it (the umask), not ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def ffmpeg_exe() -> str:
    """The ffmpeg binary that imageio-ffmpeg ships (one lookup for reading, writing and decoding audio)."""
    try:
        import imageio_ffmpeg
    except ImportError as error:
        raise RuntimeError("ffmpeg is needed to read and write audio and video: pip install imageio-ffmpeg") from error
    return imageio_ffmpeg.get_ffmpeg_exe()
