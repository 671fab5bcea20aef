"""The bundled example portrait and speech, put where ComfyUI's Load Image and Load Audio find them.

The templates name ``letstalk/portrait.png`` and ``letstalk/speech.wav`` in ComfyUI's input folder, so that
a template runs on its first click in any ComfyUI without an upload. The files are copied there once when
the pack loads, never over a file that is already there (a user's own file of that name stays as it is),
and each copy is written beside its target and renamed into place, so no half-written file is ever seen.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("letstalk")

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "workflows" / "examples"
INPUT_SUBFOLDER = "letstalk"  # under ComfyUI's input folder; the templates name files in it
EXAMPLE_FILES = ("portrait.png", "speech.wav")


def install_examples(input_dir: str | os.PathLike) -> list[Path]:
    """Copy the example files into ``input_dir/letstalk/`` where missing; returns the files it wrote.

    A folder that cannot be written (read-only, full disk) is logged and skipped: the pack still loads,
    and the templates then ask for the files as Load Image / Load Audio do for any missing file."""
    target_dir = Path(input_dir) / INPUT_SUBFOLDER
    written = []
    for name in EXAMPLE_FILES:
        source, target = EXAMPLES_DIR / name, target_dir / name
        if target.exists() or not source.is_file():
            continue
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(prefix=f".{name}.", dir=target_dir)
            try:
                with os.fdopen(handle, "wb") as out, open(source, "rb") as src:
                    shutil.copyfileobj(src, out)
                shutil.copymode(source, partial)  # as readable as the pack's own file (mkstemp makes it 0600)
                if target.exists():  # written meanwhile by someone else: theirs stays
                    continue
                os.replace(partial, target)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
        except OSError as error:
            log.warning("LetsTalk: could not put the example %s into %s (%s); the templates will ask for it",
                        name, target_dir, error)
            continue
        written.append(target)
    if written:
        log.info("LetsTalk: example portrait and speech copied to %s (the templates use them)", target_dir)
    return written
