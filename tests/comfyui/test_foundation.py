"""The pack inside a real ComfyUI: it imports cleanly, registers its nodes, and a workflow runs."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from scripts import install_comfyui
from scripts.comfy_harness import (PACK_NAME, ComfyNotFoundError, ComfyServer, ComfyValidationError,
                                   comfyui_dir, port_is_free)

from tests.helpers import TEMPLATES

REPO = Path(__file__).resolve().parents[2]


def declared_node_ids() -> set[str]:
    """Every node id declared in the pack's source (``node_id="..."`` in nodes/*.py)."""
    ids = set()
    for path in (REPO / "nodes").glob("*.py"):
        ids.update(re.findall(r'node_id\s*=\s*"([^"]+)"', path.read_text()))
    return ids


def pack_nodes(object_info: dict) -> dict:
    return {name: info for name, info in object_info.items()
            if info.get("python_module", "").endswith(PACK_NAME)}


def test_pack_imports_without_error(comfy):
    assert comfy.pack_import_problems() == [], comfy.pack_import_problems()
    assert comfy.pack_imported(), "the pack is missing from ComfyUI's import table:\n" + comfy.log()[-3000:]


def test_every_declared_node_is_registered_with_inputs_and_outputs(comfy_client):
    declared = declared_node_ids()
    assert declared, "no node_id found in nodes/*.py"
    registered = pack_nodes(comfy_client.object_info())
    assert set(registered) == declared
    for name, info in registered.items():
        assert info["category"].startswith("LetsTalk"), name
        assert info["input"].get("required"), f"{name} has no required inputs"
        assert info["output"], f"{name} has no outputs"
        assert len(info["output"]) == len(info["output_name"]), name
        for input_name, spec in info["input"]["required"].items():
            options = spec[1] if len(spec) > 1 else {}
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
            # a recommendation lives in the checkpoint: a tooltip that types one model's values goes stale
            # when the bundled model changes (the sampler's once gave the cartoon model's guidance and overlap)
            assert "demo model:" not in options["tooltip"], f"{name}.{input_name}: {options['tooltip']}"
        for input_name, spec in info["input"].get("optional", {}).items():
            tooltip = (spec[1] if len(spec) > 1 else {}).get("tooltip", "")
            assert "demo model:" not in tooltip, f"{name}.{input_name}: {tooltip}"


def test_template_browser_lists_the_ui_workflows_each_with_its_thumbnail(comfy, comfy_client):
    """Templates -> Extensions -> ComfyUI-LetsTalk: the UI workflows by their readable names (the API
    twins sit in workflows/api/, which the browser does not scan), each with a JPEG of what it makes."""
    import urllib.parse
    import urllib.request

    from PIL import Image

    listed = comfy_client.get("/workflow_templates")
    assert sorted(listed[PACK_NAME]) == sorted(TEMPLATES)
    for name in TEMPLATES:
        url = f"{comfy.url}/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(name)}.jpg"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg"
            thumbnail = Image.open(io.BytesIO(response.read()))
        assert thumbnail.format == "JPEG" and min(thumbnail.size) >= 128, (name, thumbnail.size)


def test_refused_workflow_names_node_and_input(comfy_client):
    workflow = {"1": {"class_type": "LoadAudio", "inputs": {"audio": "no-such-file.wav"}},
                "2": {"class_type": "PreviewAudio", "inputs": {"audio": ["1", 0]}}}
    with pytest.raises(ComfyValidationError) as info:
        comfy_client.submit(workflow)
    assert "node 1 (LoadAudio) input 'audio'" in str(info.value)
    assert "1" in info.value.node_errors


def test_comfyui_dir_that_is_not_comfyui_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_DIR", str(tmp_path))
    with pytest.raises(ComfyNotFoundError, match=re.escape(str(tmp_path))):
        comfyui_dir()


def test_setup_refuses_a_comfyui_dir_that_is_not_comfyui_in_one_line(tmp_path):
    env = dict(os.environ, COMFYUI_DIR=str(tmp_path))
    result = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path) in lines[0] and "not a ComfyUI folder" in lines[0], result.stderr


def test_damaged_comfyui_copy_is_detected_and_repaired(tmp_path):
    dest = tmp_path / "ComfyUI"
    cache = REPO / ".comfyui" / "cache"
    assert install_comfyui.install(dest, cache) == "installed"
    assert install_comfyui.damaged_files(dest) == []
    (dest / "execution.py").unlink()
    (dest / "comfy" / "sd.py").write_text("# changed\n")
    assert sorted(install_comfyui.damaged_files(dest)) == ["comfy/sd.py", "execution.py"]
    result = install_comfyui.install(dest, cache)
    assert result.startswith("repaired 2 file(s)")
    assert install_comfyui.damaged_files(dest) == []
    assert not (dest / "extra_model_paths.yaml").exists()


def test_taken_port_moves_to_another_and_stop_leaves_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        with ComfyServer(tmp_path / "base", port=taken, startup_timeout=240) as server:
            assert server.port != taken
            assert server.client.system_stats()["system"]["comfyui_version"]
            pid = server.process.pid
            port = server.port
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert port_is_free(port)  # nothing listens there any more


def _examples_module():
    """``nodes/examples.py`` on its own (it imports nothing of ComfyUI; the ``nodes`` package does)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("letstalk_examples", REPO / "nodes" / "examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pack_puts_the_examples_in_input_once_and_never_over_a_users_file(comfy, tmp_path):
    for name in ("portrait.png", "speech.wav"):  # the session's server, started in a fresh base directory
        assert (comfy.input_dir / "letstalk" / name).read_bytes() == (REPO / "workflows" / "examples" / name).read_bytes()
    install_examples = _examples_module().install_examples
    (tmp_path / "letstalk").mkdir()
    (tmp_path / "letstalk" / "portrait.png").write_bytes(b"the user's own")
    written = install_examples(tmp_path)
    assert written == [tmp_path / "letstalk" / "speech.wav"]
    assert (tmp_path / "letstalk" / "portrait.png").read_bytes() == b"the user's own"
    assert install_examples(tmp_path) == []  # a second load writes nothing
    assert sorted(p.name for p in (tmp_path / "letstalk").iterdir()) == ["portrait.png", "speech.wav"]  # no partial
    mode = (tmp_path / "letstalk" / "speech.wav").stat().st_mode & 0o777
    assert mode == (REPO / "workflows" / "examples" / "speech.wav").stat().st_mode & 0o777


def test_an_input_folder_that_cannot_be_written_is_logged_and_the_pack_goes_on(tmp_path, caplog):
    blocked = tmp_path / "input"
    blocked.write_text("a file where the input folder should be")
    with caplog.at_level("WARNING", logger="letstalk"):
        assert _examples_module().install_examples(blocked) == []
    assert "could not put the example portrait.png" in caplog.text


def test_run_follows_the_servers_log_printing_the_packs_lines_as_they_come(tmp_path):
    """What `comfy_harness.py run` (and so demo.sh) prints while the server works: the pack's new lines of
    the server log, each once, a line cut mid-write printed when it is whole."""
    server = ComfyServer(tmp_path)
    server.log_path.write_text("=== start\nLetsTalk: an old line\n")
    out = io.StringIO()
    follow = server.follow_log(out=out)
    with open(server.log_path, "a") as log:
        log.write("Requested to load PatchableParts\nLetsTalk sampling: dpmpp_2m 25 steps\nLetsTalk: clip 1/3 do")
    follow()
    assert out.getvalue() == "[comfyui] LetsTalk sampling: dpmpp_2m 25 steps\n"
    with open(server.log_path, "a") as log:
        log.write("ne, 18 s so far, about 36 s left\n")
    follow()
    follow()
    assert out.getvalue().splitlines() == ["[comfyui] LetsTalk sampling: dpmpp_2m 25 steps",
                                           "[comfyui] LetsTalk: clip 1/3 done, 18 s so far, about 36 s left"]
