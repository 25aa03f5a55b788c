"""The benchmark command runs and prints its table (a smoke test: no timing is checked)."""
import pytest

import fastbptt as fb
from fastbptt import bench


def _row(out, label):
    """The fields of the table row of ``label`` ("compiled", "numpy", ...)."""
    rows = [line.split() for line in out.splitlines() if line.startswith(f"  {label} ")]
    assert len(rows) == 1, out
    return rows[0]


def test_bench_quick_prints_a_table(capsys):
    assert bench.main(["--quick", "--shapes", "charrnn", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "charrnn  T=25 B=1 I=65 H=100" in out
    assert "sgemm reference: " in out and "GFLOP/s" in out
    assert "torch: left out (--no-torch)" in out
    assert "  torch " not in out
    numpy = _row(out, "numpy")
    assert float(numpy[1]) > 0  # median ms
    compiled = _row(out, "compiled")
    if "cython" in fb.available_backends():
        assert float(compiled[1]) > 0
        assert compiled[5] == "1.00x" and numpy[5].endswith("x")  # time / compiled's
    else:
        assert "compiled: not timed, the compiled kernels are not available" in out
        assert compiled[1] == "-" and numpy[5] == "-"


@pytest.mark.parametrize("argv", [["--shapes", "huge"], ["--cell", "elman"], ["--rounds", "0"]])
def test_bench_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert "usage: python -m fastbptt bench" in capsys.readouterr().err
