"""Start a real ComfyUI headless with this pack installed, and drive it over its HTTP API.

Used by the test suite (one server per pytest session), by ``scripts/demo.sh`` and by the
benchmarks. Nothing here imports ComfyUI: the server runs in its own process and is reached on
127.0.0.1 only.

    python scripts/comfy_harness.py run workflows/api/letstalk_basic_api.json --output-dir output
    python scripts/comfy_harness.py serve --port 8188          # until Ctrl-C

ComfyUI is taken from ``$COMFYUI_DIR`` when it is set (a user's own install), otherwise from the
pinned copy that ``scripts/setup.sh`` puts in ``.comfyui/ComfyUI``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-LetsTalk"
DEFAULT_COMFYUI = REPO / ".comfyui" / "ComfyUI"
IMPORT_FAILURE_MARKS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint",
                       "did not return", "Skip ")
COMFYUI_MARKERS = ("main.py", "nodes.py", "folder_paths.py", "execution.py", "server.py", "comfy")


class ComfyError(RuntimeError):
    """Base class of every error this harness raises."""


class ComfyNotFoundError(ComfyError):
    pass


class ComfyStartError(ComfyError):
    pass


class ComfyValidationError(ComfyError):
    """POST /prompt answered 400: the workflow was refused before running."""

    def __init__(self, message: str, body: dict):
        super().__init__(message)
        self.body = body
        self.node_errors = body.get("node_errors") or {}


class ComfyExecutionError(ComfyError):
    """The prompt was accepted but a node raised while it ran."""

    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details
        self.node_id = details.get("node_id")
        self.node_type = details.get("node_type")
        self.exception_message = details.get("exception_message", "")
        self.exception_type = details.get("exception_type", "")


class ComfyInterrupted(ComfyError):
    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details


def comfyui_dir() -> Path:
    """The ComfyUI to use: ``$COMFYUI_DIR`` if set, else the pinned copy. Checked, not assumed."""
    env = os.environ.get("COMFYUI_DIR")
    path = Path(env).expanduser().resolve() if env else DEFAULT_COMFYUI
    missing = [m for m in COMFYUI_MARKERS if not (path / m).exists()]
    if missing:
        origin = f"COMFYUI_DIR={env}" if env else f"the pinned copy {path} (run scripts/setup.sh)"
        raise ComfyNotFoundError(
            f"{origin} is not a ComfyUI folder: missing {', '.join(missing)} "
            f"(expected a ComfyUI checkout containing main.py, nodes.py, folder_paths.py and comfy/)"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (connections in TIME_WAIT do not count, as for the server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def format_node_errors(body: dict) -> str:
    """One line per failed input of a 400 answer: node id, class, input name, message."""
    lines = []
    error = body.get("error") or {}
    if isinstance(error, dict) and error.get("message"):
        lines.append(f"{error.get('type', 'error')}: {error['message']}"
                     + (f" ({error['details']})" if error.get("details") else ""))
    for node_id, info in (body.get("node_errors") or {}).items():
        class_type = info.get("class_type", "?")
        for err in info.get("errors", []):
            extra = err.get("extra_info") or {}
            input_name = extra.get("input_name")
            where = f"node {node_id} ({class_type})" + (f" input '{input_name}'" if input_name else "")
            detail = err.get("details") or ""
            lines.append(f"{where}: {err.get('message', '')}" + (f": {detail}" if detail else ""))
    return "\n".join(lines) or json.dumps(body)


class ComfyClient:
    """A small client for ComfyUI's HTTP API."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        return status, body

    def get(self, path: str) -> Any:
        status, body = self._request("GET", path)
        if status != 200:
            raise ComfyError(f"GET {path} answered {status}: {body}")
        return body

    def system_stats(self) -> dict:
        return self.get("/system_stats")

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else ""))

    def queue(self) -> dict:
        return self.get("/queue")

    def history(self, prompt_id: str) -> dict:
        return self.get(f"/history/{prompt_id}")

    def submit(self, workflow: dict) -> str:
        """POST /prompt; returns the prompt id, or raises ComfyValidationError naming node and input."""
        status, body = self._request("POST", "/prompt", {"prompt": workflow, "client_id": self.client_id})
        if status == 200 and isinstance(body, dict) and "prompt_id" in body:
            if body.get("node_errors"):
                raise ComfyValidationError(format_node_errors(body), body)
            return body["prompt_id"]
        if isinstance(body, dict):
            raise ComfyValidationError(format_node_errors(body), body)
        raise ComfyError(f"POST /prompt answered {status}: {body}")

    def wait(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.2, on_poll=None) -> dict:
        """Follow a prompt until it is finished; returns its history entry or raises its error.
        ``on_poll``: called before each look at the history (a terminal following the server's log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_poll is not None:
                on_poll()
            entry = self.history(prompt_id).get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"].get("completed") or entry["status"].get("status_str") == "error"
            ):
                self._raise_for_status(prompt_id, entry)
                return entry
            time.sleep(poll)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    @staticmethod
    def _raise_for_status(prompt_id: str, entry: dict) -> None:
        status = entry.get("status", {})
        if status.get("status_str") == "success":
            return
        for kind, details in status.get("messages", []):
            if kind == "execution_error":
                message = (f"prompt {prompt_id}: node {details.get('node_id')} ({details.get('node_type')}) "
                           f"failed: {details.get('exception_type')}: {details.get('exception_message')}")
                raise ComfyExecutionError(message.strip(), details)
            if kind == "execution_interrupted":
                raise ComfyInterrupted(f"prompt {prompt_id} was interrupted at node "
                                       f"{details.get('node_id')} ({details.get('node_type')})", details)
        raise ComfyError(f"prompt {prompt_id} ended with status {status}")

    def run(self, workflow: dict, timeout: float = 600.0, on_poll=None) -> dict:
        """Submit, wait, and return the outputs by node id."""
        prompt_id = self.submit(workflow)
        return self.wait(prompt_id, timeout, on_poll=on_poll)["outputs"]

    def interrupt(self) -> None:
        self._request("POST", "/interrupt", {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        status, body = self._request("POST", "/free", {"unload_models": unload_models,
                                                        "free_memory": free_memory})
        if status != 200:
            raise ComfyError(f"POST /free answered {status}: {body}")


class ComfyServer:
    """One ComfyUI process on 127.0.0.1 with the pack linked into ``<base>/custom_nodes``.

    ``with ComfyServer() as server: server.client.run(workflow)``. The process runs in its own
    process group and is stopped (SIGTERM, then SIGKILL) on exit, even after an exception.
    """

    def __init__(self, base_dir: str | Path | None = None, *, port: int | None = None,
                 python: str | None = None, comfyui: Path | None = None,
                 output_dir: str | Path | None = None, extra_args: tuple[str, ...] = (),
                 startup_timeout: float = 180.0, env: dict | None = None, cpu: bool = True):
        self.comfyui = comfyui or comfyui_dir()
        self.cpu = cpu  # False: ComfyUI picks its device (a GPU where there is one), as users run it
        self._tmp = None
        if base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="letstalk-comfy-")
            base_dir = self._tmp.name
        self.base_dir = Path(base_dir).resolve()
        self.requested_port = port
        self.port: int | None = None
        self.python = python or sys.executable
        self.output_dir = Path(output_dir).resolve() if output_dir else None
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.env = env
        self.process: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui.log"
        self._log_handle = None

    # layout -------------------------------------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def default_output_dir(self) -> Path:
        return self.output_dir or self.base_dir / "output"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models/letstalk",
                    "models/audio_encoders", "models/vae", "models/diffusion_models"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_NAME
        if link.is_symlink() or link.exists():
            if link.resolve() != REPO:
                raise ComfyStartError(f"{link} exists and is not a link to {REPO}")
        else:
            link.symlink_to(REPO, target_is_directory=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # life cycle ---------------------------------------------------------------------------
    def start(self) -> "ComfyServer":
        self.prepare()
        tried = []
        for attempt in range(5):
            port = self.requested_port if (attempt == 0 and self.requested_port) else free_port()
            if not port_is_free(port):
                tried.append(f"{port} (in use)")
                continue
            if self._launch(port):
                return self
            tried.append(f"{port} (taken while starting)")
        raise ComfyStartError(f"could not start ComfyUI on a free port; tried {', '.join(tried)}; "
                              f"log: {self.log_path}")

    def _launch(self, port: int) -> bool:
        args = [self.python, str(self.comfyui / "main.py"), *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1",
                "--port", str(port), "--base-directory", str(self.base_dir),
                "--disable-api-nodes", "--disable-auto-launch",
                # its default database lives in the ComfyUI folder's user/; keep it in this base directory
                "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}"]
        if self.output_dir:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            args += ["--output-directory", str(self.output_dir)]
        args += list(self.extra_args)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log_handle = open(self.log_path, "ab")
        self._log_handle.write(f"\n=== {' '.join(args)}\n".encode())
        self._log_handle.flush()
        self.process = subprocess.Popen(args, cwd=self.comfyui, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
        self.port = port
        client = ComfyClient(self.url, timeout=5)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log()
                self._close_log()
                if "address already in use" in log.lower() or "errno 98" in log.lower():
                    return False
                raise ComfyStartError(f"ComfyUI exited with code {self.process.returncode} while "
                                      f"starting; last lines of {self.log_path}:\n"
                                      + "\n".join(log.splitlines()[-20:]))
            try:
                stats = client.system_stats()
            except (OSError, ComfyError):
                time.sleep(0.5)
                continue
            argv = stats.get("system", {}).get("argv", [])
            if str(self.base_dir) not in argv:  # someone else answered on this port
                self.stop()
                return False
            return True
        self.stop()
        raise ComfyStartError(f"ComfyUI did not answer GET /system_stats within "
                              f"{self.startup_timeout:.0f} s; see {self.log_path}")

    def _close_log(self) -> None:
        if self._log_handle:
            self._log_handle.close()
            self._log_handle = None

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout)
        self._close_log()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def client(self) -> ComfyClient:
        return ComfyClient(self.url, timeout=60)

    def __enter__(self) -> "ComfyServer":
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # log inspection -----------------------------------------------------------------------
    def pack_import_problems(self) -> list[str]:
        """Lines of the log saying the pack failed to import (empty when it imported cleanly)."""
        problems = []
        lines = self.log().splitlines()
        for i, line in enumerate(lines):
            if PACK_NAME in line and any(mark in line for mark in IMPORT_FAILURE_MARKS):
                problems.append("\n".join(lines[max(0, i - 15): i + 1]))
        return problems

    def follow_log(self, marker: str = "LetsTalk", out=None):
        """A callable that prints the server log's new lines that contain ``marker`` (the pack's own lines:
        the sampling settings, clip n/N with the time left), each time it is called; for ``wait(on_poll=)``."""
        position = self.log_path.stat().st_size if self.log_path.exists() else 0
        partial = b""

        def follow() -> None:
            nonlocal position, partial
            if not self.log_path.exists():
                return
            with open(self.log_path, "rb") as handle:
                handle.seek(position)
                chunk = handle.read()
            position += len(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip()
                if marker in text:
                    print(f"[comfyui] {text}", file=out or sys.stdout, flush=True)

        return follow

    def pack_imported(self) -> bool:
        """True when ComfyUI's import-time table lists the pack without a failure mark."""
        return any(PACK_NAME in line and "seconds" in line and "IMPORT FAILED" not in line
                   for line in self.log().splitlines())


def _set_inputs(workflow: dict, assignments: list[str]) -> None:
    for item in assignments:
        key, _, value = item.partition("=")
        node_id, _, input_name = key.partition(".")
        if node_id not in workflow or not input_name:
            raise SystemExit(f"--set {item!r}: expected NODE_ID.INPUT=VALUE with a node id of the workflow "
                             f"({', '.join(workflow)})")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        workflow[node_id]["inputs"][input_name] = parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run ComfyUI with ComfyUI-LetsTalk, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start ComfyUI, run one API-format workflow, stop")
    run.add_argument("workflow", type=Path)
    run.add_argument("--base-dir", type=Path, help="ComfyUI base directory (default: a temporary one)")
    run.add_argument("--output-dir", type=Path, default=REPO / "output")
    run.add_argument("--input", action="append", default=[], type=Path,
                     help="a file to copy into ComfyUI's input folder (repeatable)")
    run.add_argument("--model", action="append", default=[],
                     help="FOLDER=FILE: link FILE into models/FOLDER (repeatable)")
    run.add_argument("--set", action="append", default=[], help="NODE_ID.INPUT=VALUE (repeatable)")
    run.add_argument("--timeout", type=float, default=3600)
    sub.add_parser("check", help="check that the ComfyUI to use ($COMFYUI_DIR or the pinned copy) is one")
    serve = sub.add_parser("serve", help="start ComfyUI and keep it running until interrupted")
    serve.add_argument("--base-dir", type=Path, required=True)
    serve.add_argument("--port", type=int, default=8188)
    args = parser.parse_args(argv)

    try:
        if args.command == "check":
            print(comfyui_dir())
            return 0
        if args.command == "serve":
            with ComfyServer(args.base_dir, port=args.port) as server:
                print(f"ComfyUI with {PACK_NAME} at {server.url} (log: {server.log_path}); Ctrl-C stops it",
                      flush=True)
                while server.process and server.process.poll() is None:
                    time.sleep(1)
            return 0

        if not args.workflow.is_file():
            raise SystemExit(f"workflow {args.workflow} does not exist")
        workflow = json.loads(args.workflow.read_text())
        _set_inputs(workflow, args.set)
        with ComfyServer(args.base_dir, output_dir=args.output_dir) as server:
            for item in args.input:
                target = server.input_dir / item.name
                if not target.exists():
                    target.write_bytes(item.read_bytes())
            for spec in args.model:
                folder, _, file = spec.partition("=")
                src = Path(file).resolve()
                dst = server.models_dir / folder / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    dst.symlink_to(src)
            if server.pack_import_problems():
                raise ComfyError("the pack failed to import:\n" + "\n".join(server.pack_import_problems()))
            follow = server.follow_log()  # the pack's lines (settings, clip n/N, time left) as the server works
            outputs = server.client.run(workflow, timeout=args.timeout, on_poll=follow)
            follow()
            files = []
            for node_outputs in outputs.values():
                for items in node_outputs.values():
                    if not isinstance(items, list):
                        continue
                    for item in items:
                        if isinstance(item, dict) and "filename" in item and item.get("type") == "output":
                            files.append(server.default_output_dir / item.get("subfolder", "") / item["filename"])
            for path in files:
                print(path)
            if not files:
                print(json.dumps(outputs, indent=1))
        return 0
    except ComfyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
