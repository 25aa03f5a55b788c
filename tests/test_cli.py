"""The command line on tiny settings: every subcommand runs and prints what it promises."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastbptt
from fastbptt.__main__ import main

PUREPYTHON = os.environ.get("FASTBPTT_PUREPYTHON", "") not in ("", "0")


def test_demo_prints_the_table_and_the_gradient_flow(capsys):
    assert main(["demo", "--T", "12", "--steps", "30", "--batch", "4", "--hidden", "8",
                 "--cells", "tanh,irnn", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "T=12" in out
    for name in ("tanh", "irnn"):
        assert any(line.startswith(name) and "." in line for line in out.splitlines())
    assert "‖∂E/∂s_t‖" in out and "t=12" in out


def test_demo_first_line_names_the_backend_it_runs_on(capsys):
    assert main(["demo", "--T", "4", "--steps", "2", "--batch", "2", "--hidden", "3",
                 "--cells", "irnn", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    if PUREPYTHON:
        assert first.startswith("backend: numpy") and "FASTBPTT_PUREPYTHON" in first
    else:
        assert first.startswith(f"backend: cython ({fastbptt._backend.compiled_level} build), ")
        assert "thread" in first


def test_the_fallback_line_says_why_and_how_to_fix_it():
    """A package without its extension (the source tree run in place) says so in plain words."""
    package = Path(fastbptt.__file__).parent
    code = ("import sys, importlib.abc\n"
            "class NoExtension(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.startswith('fastbptt._kernels'):\n"
            "            raise ImportError('no compiled kernels in this test')\n"
            "sys.meta_path.insert(0, NoExtension())\n"
            "import warnings; warnings.simplefilter('ignore')\n"
            "from fastbptt import _backend; print(_backend.describe())\n")
    env = dict(os.environ, PYTHONPATH=str(package.parent))
    env.pop("FASTBPTT_PUREPYTHON", None)
    line = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()
    assert line.startswith("backend: numpy -- the compiled kernels did not import")
    assert "no compiled kernels in this test" in line and "Fix:" in line


def test_demo_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "demo.png"
    assert main(["demo", "--T", "6", "--steps", "10", "--batch", "2", "--hidden", "4",
                 "--cells", "irnn", "--no-progress", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_an_unknown_cell():
    with pytest.raises(SystemExit, match="unknown cells"):
        main(["demo", "--cells", "tanh,transformer", "--no-progress"])


def test_char_trains_and_samples(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the river runs to the sea and the sea runs to the sky. " * 20, encoding="utf-8")
    assert main(["char", str(text), "--steps", "40", "--sample-every", "20", "--hidden", "16",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- after") == 2 and "smoothed loss" in out
    sample = out.rstrip().splitlines()[-1]
    assert sample and set(sample) <= set("the river runs to the sea and the sky. ")


def test_char_names_a_missing_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises((OSError, ValueError), match="nope.txt"):
        main(["char", str(missing), "--steps", "1", "--no-progress"])


def test_bench_runs_quickly(capsys):
    assert main(["bench", "--quick", "--shapes", "charrnn", "--no-torch"]) == 0
    assert "charrnn" in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["demo", "--help"], ["char", "--help"]])
def test_help_and_usage(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main(command + (["--help"] if not command else []))
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()
