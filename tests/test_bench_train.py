"""The whole-update benchmark on a tiny setting: it runs each peer in a process and prints a row."""
import numpy as np
import pytest

from fastbptt import bench_train


def test_every_case_trains_on_data_of_its_own_shapes():
    for name, case in bench_train.CASES.items():
        x, target = bench_train.case_data(case)
        if case.ids or case.embedding:
            assert x.shape == (case.T, case.B) and x.dtype.kind == "i", name
            assert x.min() >= 0 and x.max() < case.I, name
        else:
            assert x.shape == (case.T, case.B, case.I) and x.dtype == np.float32, name
        scored = (case.B,) if case.last_step else (case.T, case.B)
        if case.loss == "cross_entropy":
            assert target.shape == scored and target.min() >= 0 and target.max() < case.O, name
        else:
            assert target.shape == scored + (case.O,), name


def test_the_fastbptt_update_changes_the_parameters_each_round():
    import fastbptt as fb

    case = bench_train.CASES["adding-irnn"]
    update = bench_train.fastbptt_update(case, threads=1)
    cell = update.__closure__  # the model lives in the closure; compare a fresh one instead
    assert cell is not None
    fresh = fb.RNN(case.I, case.H, cell=case.cell, output_size=case.O, init=case.init, seed=0)
    model = next(c.cell_contents for c in cell if isinstance(c.cell_contents, fb.RNN))
    update()
    moved = [name for name in fresh.params
             if not np.array_equal(fresh.params[name], model.params[name])]
    assert moved, "one update left every parameter where it was"


def test_quick_run_prints_a_row_per_case(capsys):
    assert bench_train.main(["--quick", "--cases", "charrnn-tanh", "--peers", "fastbptt"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("charrnn-tanh"))
    assert float(row.split()[1]) > 0


def test_unknown_cases_are_refused():
    with pytest.raises(SystemExit):
        bench_train.main(["--cases", "charrnn-transformer"])


def test_the_command_line_bench_train_runs_the_update_table(capsys):
    from fastbptt.__main__ import main

    assert main(["bench", "--train", "--quick", "--cases", "adding-irnn", "--peers", "fastbptt"]) == 0
    assert "adding-irnn" in capsys.readouterr().out


def test_a_shape_names_its_case():
    case = bench_train.case_of("gru-50x8x32x64x10")
    assert (case.cell, case.T, case.B, case.I, case.H, case.O) == ("gru", 50, 8, 32, 64, 10)
    assert case.loss == "cross_entropy" and case.last_step and case.init == "default"
    assert bench_train.case_of("relu-5x2x3x4x6").init == "identity"
    assert bench_train.case_of("charrnn-tanh") is bench_train.CASES["charrnn-tanh"]
    for bad in ("gru-50x8x32x64", "elman-5x2x3x4x6", "gru-0x8x32x64x10", "gru-50x8x32x64x10x1"):
        assert bench_train.case_of(bad) is None, bad


def test_the_sweep_covers_every_cell_at_small_batches_and_widths():
    cases = [bench_train.case_of(n) for n in bench_train.sweep_names()]
    assert {c.cell for c in cases} == {"tanh", "relu", "lstm", "gru"}
    assert max(c.B for c in cases) <= 32 and max(c.H for c in cases) <= 128
    assert len({(c.cell, c.B, c.H) for c in cases}) == len(cases) == 36


def test_a_quick_run_of_shapes_prints_a_row_per_shape(capsys):
    names = "tanh-3x2x3x4x5,lstm-3x2x3x4x5"
    assert bench_train.main(["--quick", "--cases", names, "--peers", "fastbptt"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("tanh-", "lstm-"))]
    assert [r[0] for r in rows[:2]] == names.split(",") and all(float(r[1]) > 0 for r in rows[:2])


def test_sweep_and_cases_are_not_given_together():
    with pytest.raises(SystemExit):
        bench_train.main(["--sweep", "--cases", "charrnn-tanh"])
