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


def test_bench_lengths_prints_padded_and_lengths_rows(capsys):
    assert bench.main(["--quick", "--lengths", "--shapes", "small", "--cell", "gru", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "variable lengths: spread evenly over 1..T" in out
    assert "small  T=100 B=32 I=32 H=128" in out
    if "cython" in fb.available_backends():
        assert float(_row(out, "compiled,")[2]) > 0   # "compiled, lengths": median ms
        assert float(_row(out, "compiled")[1]) > 0
    else:
        assert "compiled, lengths: not timed" in out
    assert "numpy" not in out.split("small  T=100")[1]


def test_mixed_lengths_average_half_of_t():
    for shape in bench.SHAPES.values():
        lengths = bench.mixed_lengths(shape)
        assert lengths.shape == (shape.B,)
        assert lengths.min() >= 1 and lengths.max() <= shape.T
        assert abs(lengths.mean() - shape.T / 2) <= 1
    small = bench.SHAPES["small"]
    assert sorted(bench.mixed_lengths(small)) != list(bench.mixed_lengths(small))  # shuffled


@pytest.mark.parametrize("argv", [["--shapes", "huge"], ["--cell", "elman"], ["--rounds", "0"]])
def test_bench_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert "usage: python -m fastbptt bench" in capsys.readouterr().err


def test_inputs_take_the_seed_as_their_second_argument():
    """bench.inputs(shape, seed): no unused ``cell`` before the seed to swallow it."""
    shape = bench.SHAPES["charrnn"]
    x0, d0 = bench.inputs(shape, 0)
    x1, d1 = bench.inputs(shape, 1)
    assert not (x0 == x1).all() and not (d0 == d1).all()
    x, d_out = bench.inputs(shape, seed=1)
    assert (x == x1).all() and (d_out == d1).all()
    assert x.shape == (shape.T, shape.B, shape.I) and d_out.shape == (shape.T, shape.B, shape.H)
