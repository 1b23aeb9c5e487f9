"""Shared fixtures: the real Fashion-MNIST files, small arrays made here, a loopback file server."""

from __future__ import annotations

import getpass
import gzip
import http.server
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fmnist.data import DEBIAN_DATA_DIR, FILES, has_all_files, load_from

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session", autouse=True)
def commands_keep_their_temporary_files_here(tmp_path_factory):
    """The commands the tests start put their temporary files under pytest's own folders, which it prunes: TensorFlow
    writes the modules its autograph makes to the temporary folder and removes them only at a normal exit, so each
    command a test kills on purpose left a few in /tmp. PyTorch's compiled kernels stay where they were (torch's default
    under the temporary folder), so that a later session finds them: compiling anew doubled a torch.compile test."""
    with pytest.MonkeyPatch.context() as environment:
        if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            inductor_cache = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
            environment.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_cache)
        environment.setenv("TMPDIR", str(tmp_path_factory.mktemp("commands-tmp")))
        yield


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    directory = Path(os.environ.get("FMNIST_TEST_DATA_DIR", DEBIAN_DATA_DIR))
    if not has_all_files(directory):
        pytest.fail(f"the real Fashion-MNIST files are not in {directory}: apt-get install dataset-fashion-mnist")
    return directory


@pytest.fixture(scope="session")
def dataset(real_data_dir):
    return load_from(real_data_dir)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write a uint8 array as an IDX file, the way the dataset's files are laid out."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """An empty user cache and no FMNIST_DATA_DIR, so that lookups start from nothing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    return tmp_path / "cache" / "fmnist"


class FileServer:
    """A real HTTP server on 127.0.0.1 whose routes misbehave on request.

    routes: URL path -> (behaviour, payload), behaviour one of "ok", "missing" (404),
    "drop" (announce the full length, send half, close the connection), "busy" (503 to the
    first request for the path, then "ok").
    """

    def __init__(self):
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                behaviour, payload = server.routes.get(self.path, ("missing", b""))
                if behaviour == "missing":
                    self.send_error(404, "Not Found")
                    return
                if behaviour == "busy" and server.requests.count(self.path) == 1:
                    self.send_error(503, "Service Unavailable")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if behaviour == "drop":
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(payload)

            def log_message(self, *arguments):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{prefix}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def real_file_bytes(real_data_dir) -> dict[str, bytes]:
    return {spec.name + ".gz": (real_data_dir / f"{spec.name}.gz").read_bytes() for spec in FILES.values()}


def cli_command(*arguments: str) -> list[str]:
    """The installed `fmnist` console script beside this Python, with arguments."""
    script = Path(sys.executable).parent / "fmnist"
    return [str(script), *arguments] if script.exists() else [sys.executable, "-m", "fmnist", *arguments]


def as_numpy(tensor) -> np.ndarray:
    """A backend's tensor as NumPy: np.asarray fails on PyTorch tensors that require gradients."""
    import keras

    return keras.ops.convert_to_numpy(tensor)


def run_cli(*arguments: str, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `fmnist` command in a subprocess, as a user would."""
    command = cli_command(*arguments)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, run_dir, *options, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(cli_command("serve", str(run_dir), "--port", str(self.port), *options),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, **(env or {})})  # fmt: skip
        self.startup_lines: list[str] = []  # with several workers: what it printed up to the address
        if "--workers" in options:
            watchdog = threading.Timer(90, self.process.kill)  # a server that never says it serves ends the read
            watchdog.start()
            while not self.startup_lines or "open http" not in self.startup_lines[-1]:
                line = self.process.stdout.readline()
                if not line:
                    raise AssertionError(f"server exited: {''.join(self.startup_lines)}")
                self.startup_lines.append(line)
            watchdog.cancel()
            # a worker still loading the model would not answer for seconds (9 s here); one taking requests answers
            # within this even on a machine busy with other tests
            try:
                self.answered_at_once = httpx.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                self.answered_at_once = False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("server did not become ready")

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def served_run(tmp_path_factory, real_data_dir):
    """A baseline trained briefly (1 epoch, 3,000 images) into a run named "shop", for the server tests.

    Without the analysis report, which takes 15-30 s here and none of its users read; `fmnist evaluate`
    writes one (test_cli), and test_analysis tests it.
    """
    run_dir = tmp_path_factory.mktemp("serve") / "shop"
    result = run_cli("train", "--run-dir", str(run_dir), "--epochs", "1", "--train-subset", "3000", "--no-report",
                     "--data-dir", str(real_data_dir))  # fmt: skip
    assert "epoch 1/1" in result.stdout and "test accuracy" in result.stdout  # one line per epoch off a terminal
    return run_dir


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def kserve_body(images) -> dict:
    return {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.ravel().tolist()}]}


class Killed(Exception):
    """Stands for the training process being killed."""


@pytest.fixture
def kill_after_checkpoint(monkeypatch):
    """`kill_after_checkpoint(True)`: training raises Killed right after it writes its next checkpoint;
    `kill_after_checkpoint(False)`: it runs on as before."""
    import fmnist.train

    real_save_checkpoint = fmnist.train.save_checkpoint

    def save_then_die(*arguments):
        real_save_checkpoint(*arguments)
        raise Killed

    def arm(on: bool) -> None:
        monkeypatch.setattr(fmnist.train, "save_checkpoint", save_then_die if on else real_save_checkpoint)

    return arm
