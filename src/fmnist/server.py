"""Run the service: in this process, or in several uvicorn worker processes that share the port.

    serve(ServeConfig(run_dir="runs/baseline"), port=8000, workers=2)   # what `fmnist serve` calls

Everything that can be checked before the address is announced is (the port, and with one worker the model
itself); a worker that cannot load the model stops the whole server with its reason, rather than being
started again and again. Several workers each load the model in their own process (seconds, with Keras'
import): the address is announced once all of them have, so that the link printed answers at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from fastapi import FastAPI

from fmnist import runs
from fmnist.serve import ServeConfig, create_app

CONFIG_VARIABLE = "FMNIST_SERVE_CONFIG"
STARTUP_ERROR_VARIABLE = "FMNIST_SERVE_STARTUP_ERROR"  # the file where a worker that cannot start says why
READY_VARIABLE = "FMNIST_SERVE_READY"  # the folder where each worker that takes requests leaves an empty file


def app_from_environment() -> FastAPI:
    """The factory uvicorn's worker processes call: the config travels in an environment variable.

    A worker that cannot build its app (a model or an export that cannot be loaded) writes why for
    `serve` to report, and exits with uvicorn's startup-failure status, which stops the server: with
    any other, uvicorn would start it again, and it would fail again, forever.
    """
    import uvicorn.server

    from fmnist import tensorflow_logs
    from fmnist.allocator import keep_freed_memory

    keep_freed_memory()  # as the `fmnist` command does in the parent, before the worker's backend allocates
    tensorflow_logs.quiet_import()  # as the parent does: the workers' TensorFlow loads without its start-up lines
    values = json.loads(os.environ[CONFIG_VARIABLE])
    ready = os.environ.get(READY_VARIABLE)

    def say_ready() -> None:  # an empty file, made in one step: `serve` counts them
        if ready:
            (Path(ready) / f"worker-{os.getpid()}").touch()

    try:
        return create_app(ServeConfig(**{key: tuple(value) if isinstance(value, list) else value
                                         for key, value in values.items()}), on_ready=say_ready)  # fmt: skip
    except Exception as error:
        if STARTUP_ERROR_VARIABLE in os.environ:  # set by `serve`, which reports it
            runs.write_text(Path(os.environ[STARTUP_ERROR_VARIABLE]), str(error))
        else:
            print(f"fmnist: a server worker could not start: {error}", file=sys.stderr)
        sys.exit(uvicorn.server.STARTUP_FAILURE)


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    import uvicorn

    runs.require_run(config.run_dir)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    check_address(host, port)
    if not config.threads:  # share the cores among the workers rather than have each claim them all
        config = dataclasses.replace(config, threads=max(1, (os.cpu_count() or 1) // workers))
    # One process builds its app before the address is announced, so that a model or an export that cannot be
    # loaded stops the command with its error; each of several workers builds its own (the factory, below).
    app = create_app(config) if workers == 1 else "fmnist.server:app_from_environment"
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    announcement = (f"serving {config.served_name} version {config.model_version} from {config.run_dir}: "
                    f"open http://{shown_host}:{port}/ in a browser (API docs at /docs)")  # fmt: skip
    own_folder = startup_error = None
    if workers == 1:
        print(announcement, flush=True)
    else:
        # The workers' metrics meet in files of one folder: a new one for this server, removed when it stops,
        # unless the user named one (clearing that between runs is then theirs to do, as prometheus_client says)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            own_folder = tempfile.mkdtemp(prefix="fmnist-prometheus-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_folder
        startup_error = Path(tempfile.mkdtemp(prefix="fmnist-serve-")) / "startup-error.txt"
        os.environ[STARTUP_ERROR_VARIABLE] = str(startup_error)
        ready = startup_error.parent / "ready"
        ready.mkdir()
        os.environ[READY_VARIABLE] = str(ready)
        print(f"starting {workers} server processes on {shown_host}:{port}; each loads the model", flush=True)
        threading.Thread(target=announce_when_ready, args=(ready, workers, announcement), daemon=True).start()
    os.environ[CONFIG_VARIABLE] = json.dumps(dataclasses.asdict(config))
    try:
        uvicorn.run(app, factory=workers > 1, host=host, port=port, workers=workers, log_level="warning",
                    access_log=False)  # fmt: skip
        if startup_error and startup_error.exists():
            raise runs.RunError(f"the server stopped: a worker could not start: {startup_error.read_text()}")
    finally:
        if startup_error:
            shutil.rmtree(startup_error.parent, ignore_errors=True)
            for variable in (STARTUP_ERROR_VARIABLE, READY_VARIABLE):
                os.environ.pop(variable, None)
        if own_folder:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            shutil.rmtree(own_folder, ignore_errors=True)


def announce_when_ready(ready: Path, workers: int, announcement: str) -> None:
    """Print the announcement once `workers` processes have left their file in `ready`; give up if it goes."""
    while True:
        try:
            started = sum(1 for path in ready.iterdir() if path.name.startswith("worker-"))
        except FileNotFoundError:  # the server stopped first (a worker that could not start stops it)
            return
        if started >= workers:
            print(announcement, flush=True)
            return
        time.sleep(0.1)


def check_address(host: str, port: int) -> None:
    """Fail before announcing the server if it could not listen on host:port (uvicorn says so only afterwards)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ValueError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds, so a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as error:
            raise OSError(error.errno, f"cannot listen on {host}:{port} ({error.strerror}); choose another --port, "
                                       "or stop what is listening there") from None  # fmt: skip

