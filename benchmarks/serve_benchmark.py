"""Inference and HTTP load benchmark of a run: engines alone, then the real server under wrk.

    python benchmarks/serve_benchmark.py RUN [--seconds 30] [--connections 64] [--workers 2]

1. The inference engine alone, Keras (`predict_on_batch`) and ONNX Runtime (after `fmnist export RUN`):
   median latency of one image and of a batch of 1,000 (images/s), over repeated calls.
2. `fmnist serve RUN` on a free loopback port, loaded by wrk (Debian's `wrk`) for a bounded time
   with single-image KServe v2 /infer requests: requests/s, p50/p99 latency, errors.
Prints Markdown rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fmnist.data import load_dataset
from fmnist.engine import load_engine


def time_calls(function, argument, repeats: int) -> float:
    """Median seconds of one call, after two warm-up calls."""
    function(argument)
    function(argument)
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(argument)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def engine_rows(run_dir: Path, images: np.ndarray) -> list[str]:
    rows = []
    for name in ("keras", "onnx"):
        try:
            engine = load_engine(run_dir, name)
        except Exception as error:  # no ONNX export yet: say so in the table
            rows.append(f"| {name} | not measured: {error} | | |")
            continue
        single = time_calls(engine.probabilities, images[:1], 200)
        batch = time_calls(engine.probabilities, images[:1000], 20)
        rows.append(f"| {engine.platform} | {single * 1000:.3f} ms | {batch * 1000:.1f} ms | {1000 / batch:,.0f} |")
    return rows


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the server did not become ready")


def parse_wrk(output: str) -> dict:
    def seconds(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", output, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "p50_ms": seconds(percentiles["50"]) * 1000, "p99_ms": seconds(percentiles["99"]) * 1000,
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }  # fmt: skip


def load_test(run_dir: Path, image: np.ndarray, arguments) -> dict:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fmnist = str(Path(sys.executable).parent / "fmnist")
    command = [fmnist, "serve", str(run_dir), "--port", str(port), "--workers", str(arguments.workers),
               "--engine", arguments.engine]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, server)
        model_name = run_dir.resolve().name
        body = {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": image.ravel().tolist()}]}
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT.format(body=json.dumps(body)))
        target = f"{url}/v2/models/{model_name}/infer"
        subprocess.run(["wrk", "-t2", "-c16", "-d3s", "-s", script.name, target], capture_output=True, check=True)  # warm-up
        result = subprocess.run(
            ["wrk", "-t2", f"-c{arguments.connections}", f"-d{arguments.seconds}s", "--latency", "-s", script.name, target],
            capture_output=True, text=True, check=True,
        )
        os.unlink(script.name)
        return parse_wrk(result.stdout) | {"raw": result.stdout}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--engine", default="auto", choices=("auto", "onnx", "keras"))
    parser.add_argument("--skip-engines", action="store_true")
    arguments = parser.parse_args()
    images = load_dataset().x_test
    if not arguments.skip_engines:
        print("| engine | 1 image (median) | 1,000 images (median) | images/s on batches |\n|---|---|---|---|")
        print("\n".join(engine_rows(arguments.run, images)), flush=True)
    load = load_test(arguments.run, images[0], arguments)
    print(load.pop("raw"))
    print("\n| server | clients | seconds | requests | requests/s | p50 | p99 | errors |\n|---|---|---|---|---|---|---|---|")
    print(f"| {arguments.workers} worker(s), engine {arguments.engine} | {arguments.connections} | {arguments.seconds} "
          f"| {load['requests']:,} | {load['requests_per_second']:,.0f} | {load['p50_ms']:.1f} ms | {load['p99_ms']:.1f} ms "
          f"| {load['errors']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
