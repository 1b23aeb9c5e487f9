"""TensorFlow's start-up lines stay out of the `fmnist` command's output; errors in its import do not."""

import subprocess
import sys
import textwrap

import pytest


def run_python(code: str, tmp_path, level: str = "3") -> subprocess.CompletedProcess:
    environment = {"TF_CPP_MIN_LOG_LEVEL": level, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, cwd=tmp_path, timeout=120)  # fmt: skip


def test_a_failing_import_still_raises_and_only_the_chatter_of_the_load_is_hidden(tmp_path):
    package = tmp_path / "fake" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('import os\nos.write(2, b"chatter from C++\\n")\nraise ImportError("broken build")\n')
    result = run_python(f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path / "fake")!r})
        from fmnist import tensorflow_logs
        assert tensorflow_logs.quiet_import()
        import importlib.util
        assert importlib.util.find_spec("tensorflow")  # a search alone, as torch._dynamo makes: loads nothing
        try:
            import tensorflow
        except ImportError as error:
            os.write(2, f"raised: {{error}}\\n".encode())
        import tensorflow as again  # a second try is Python's usual one, not hidden
    """, tmp_path)
    assert "chatter from C++" in result.stderr.split("raised: broken build")[1]  # the second, unhidden import's
    assert result.stderr.count("chatter from C++") == 1
    assert result.stderr.startswith("raised: broken build")
    assert "ImportError: broken build" in result.stderr


def test_what_python_writes_to_stderr_during_the_load_still_gets_through(tmp_path):
    package = tmp_path / "fake" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent("""
        import logging, os, sys, warnings
        os.write(2, b"chatter from C++\\n")
        warnings.warn("a warning from Python")
        handler = logging.StreamHandler(sys.stderr)  # as TensorFlow's logger is made, with the stderr of the moment
        handler.stream.write("a log line during the load\\n")
    """))
    result = run_python(f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path / "fake")!r})
        from fmnist import tensorflow_logs
        assert tensorflow_logs.quiet_import()
        import tensorflow
        assert sys.stderr is sys.__stderr__, "sys.stderr was not put back"
        tensorflow.handler.stream.write("a log line after the load\\n")
        tensorflow.handler.flush()
        os.write(2, b"C++ after the load\\n")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "chatter from C++" not in result.stderr
    lines = ["UserWarning: a warning from Python", "a log line during the load", "a log line after the load",
             "C++ after the load"]
    assert [result.stderr.find(line) for line in lines] == sorted(result.stderr.find(line) for line in lines), result.stderr
    assert all(line in result.stderr for line in lines), result.stderr


@pytest.mark.parametrize("level", ["3", "0"])
def test_tensorflow_loads_without_its_start_up_lines_unless_they_are_asked_for(tmp_path, level):
    control = run_python("import tensorflow", tmp_path, level=level)
    quiet = run_python("from fmnist import tensorflow_logs; tensorflow_logs.quiet_import(); import tensorflow",
                       tmp_path, level=level)  # fmt: skip
    assert control.returncode == 0 and quiet.returncode == 0, control.stderr + quiet.stderr
    if level == "3":
        if not control.stderr:
            pytest.skip("this TensorFlow build writes nothing as it loads: nothing to hide")
        assert "oneDNN" in control.stderr or "absl" in control.stderr
        assert quiet.stderr == ""
    else:  # TF_CPP_MIN_LOG_LEVEL=0 asks for its information lines: they are left as they are
        assert quiet.stderr.count("\n") == control.stderr.count("\n") > 0
