"""Keep TensorFlow's start-up lines out of what the `fmnist` command prints.

    from fmnist import tensorflow_logs
    tensorflow_logs.quiet_import()   # before anything imports TensorFlow; the `fmnist` command calls it

TensorFlow 2.19 and later write two lines to stderr as they load ("oneDNN custom operations are on ..." and absl's
"All log messages before absl::InitializeLog() is called ..."), which `TF_CPP_MIN_LOG_LEVEL` no longer filters
(tensorflow/tensorflow#100442). `quiet_import` points file descriptor 2 at /dev/null while the `tensorflow` package
loads, whichever module imports it and whenever: Keras, or a command that never needs it (`fmnist predict` on an ONNX
export) and so never pays for it. What Python itself writes to `sys.stderr` meanwhile (a warning, a log record) still
gets through, and an error in the import still raises, once stderr is back. Nothing is hidden where
`TF_CPP_MIN_LOG_LEVEL` asks for TensorFlow's information lines (0), or where TensorFlow is already loaded.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys


def quiet_import() -> bool:
    """Silence stderr while TensorFlow loads, from now on; False where nothing is to be done."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        return False
    if not any(isinstance(finder, QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlow())
    return True


class QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds the `tensorflow` package as Python would, and loads it with stderr closed; other modules it leaves alone."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        # a search alone, as torch._dynamo makes for TensorFlow with importlib.util.find_spec, loads nothing
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            if self in sys.meta_path:  # once: any later search goes the usual way
                sys.meta_path.remove(self)
            with stderr_closed():
                load(module)

        spec.loader.exec_module = exec_module  # the loader of this one spec, made for this import
        return spec


@contextlib.contextmanager
def stderr_closed():
    """File descriptor 2, which C++ libraries write to, pointed at /dev/null for the block; Python's `sys.stderr` kept."""
    python_stderr = sys.stderr
    if python_stderr is not None:
        python_stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    # Python's own writes (a warning, a log record) are not chatter: where they went to fd 2 they go to its copy
    forwarding = None
    if writes_to_fd_2(python_stderr):
        encoding = getattr(python_stderr, "encoding", None) or "utf-8"  # a stand-in for stderr may lack these two
        errors = getattr(python_stderr, "errors", None) or "backslashreplace"
        forwarding = Forwarding(open(saved, "w", encoding=encoding, errors=errors, closefd=False, buffering=1))
    try:
        os.dup2(null, 2)
        if forwarding:
            sys.stderr = forwarding
        yield
    finally:
        if forwarding:
            copy, forwarding.target = forwarding.target, python_stderr  # for a logging handler made during the import
            copy.close()
            if sys.stderr is forwarding:
                sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def writes_to_fd_2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError: no file descriptor
        return False


class Forwarding:
    """A text stream that writes to `target`, which can be changed: TensorFlow's logging handler, made as it loads,
    keeps the `sys.stderr` of that moment."""

    def __init__(self, target):
        self.target = target

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def __getattr__(self, name):
        return getattr(self.target, name)
