"""One real ComfyUI per test session, with this pack linked into its custom_nodes folder.

The server listens on 127.0.0.1 on a free port, in a temporary base directory, and is stopped at
the end of the session even when tests fail (the fixture's finaliser runs on any outcome).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.comfy_harness import ComfyServer


def pytest_collection_modifyitems(config, items):
    """Every test here runs in the real ComfyUI server, whose start alone takes longer than the fast tier
    allows: all are ``comfyui`` and ``slow`` (``bash scripts/test.sh -m "not slow"`` leaves them out)."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.comfyui)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui-base")
    server = ComfyServer(base)
    try:
        server.start()
    except BaseException:
        server.cleanup()
        raise
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def comfy_client(comfy):
    return comfy.client
