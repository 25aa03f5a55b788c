"""The benchmark command runs and prints its table, and the peers it and benchmarks/ compare
with run in processes of their own (smoke tests: no timing is checked)."""
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
        # GFLOP/s, % sgemm, % peak: the % peak is the rate over the peak printed below
        peak_line = out.split("FMA peak ")[1].split("\n")[0]   # "X GFLOP/s (before Y, after Z)"
        peak = float(peak_line.split()[0])
        before = float(peak_line.split("before ")[1].split(",")[0])
        after = float(peak_line.split("after ")[1].split(")")[0])
        assert peak == max(before, after)
        assert "% peak" in out and len(compiled) == 9
        assert float(compiled[8]) == pytest.approx(100 * float(compiled[6]) / peak, rel=0.02, abs=0.1)
    else:
        assert "compiled: not timed, the compiled kernels are not available" in out
        assert compiled[1] == "-" and numpy[5] == "-"
        assert "FMA peak: not measured (it needs the compiled kernels)" in out
        assert "% peak" not in out


@pytest.mark.parametrize("level", sorted(fb._backend.compiled_builds()))
@pytest.mark.parametrize("threads", [1, 2])
def test_fma_peak_is_a_rate_in_every_build(level, threads, restore_threads):
    """Each build's peak runs on the team it is given and returns FLOP/s: positive, finite,
    within what a CPU core can do. No speed is asserted: the lower bound only tells FLOP/s from
    GFLOP/s, since a team thread descheduled by a loaded machine (CI beside a compiler) made a
    2 ms baseline run measure 0.1 GFLOP/s."""
    fb.set_num_threads(threads)
    rate = fb._backend.compiled_builds()[level].fma_peak(0.002, 2)
    assert 1e6 < rate < threads * 1e13


@pytest.mark.parametrize("seconds, repeats", [(0.0, 5), (-1.0, 5), (0.01, 0)])
def test_fma_peak_rejects_bad_arguments(compiled_kernels, seconds, repeats):
    with pytest.raises(ValueError, match="seconds and repeats"):
        compiled_kernels.fma_peak(seconds, repeats)


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


def test_lengths_rows_rate_counts_the_running_rows_only():
    """A "+lengths" row's GFLOP/s and % peak count the running rows' multiply-adds: the
    padded step's FLOPs times the mean length over T (here the same time as the padded row,
    so its rate is that fraction of the padded row's)."""
    shape = bench.SHAPES["small"]
    t = bench.Timing(median=2e-3, q1=1.9e-3, q3=2.1e-3, rounds=10)
    out = bench.format_shape_table("small", shape, "gru", {"cython": t, "cython+lengths": t},
                                   sgemm_rate=200e9, peak_rate=400e9)
    padded, lengths = _row(out, "compiled"), _row(out, "compiled,")[1:]
    fraction = bench.mixed_lengths(shape).sum() / (shape.T * shape.B)
    full = bench.step_flops(shape, "gru") / 2e-3
    assert float(padded[6]) == pytest.approx(full / 1e9, rel=1e-3)
    assert float(lengths[6]) == pytest.approx(fraction * full / 1e9, rel=1e-3)
    assert float(lengths[8]) == pytest.approx(100 * fraction * full / 400e9, abs=0.06)
    assert float(padded[8]) == pytest.approx(100 * full / 400e9, abs=0.06)


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


def test_measure_in_turns_alternates_blocks_and_times_every_round():
    """Each implementation's rounds come in turns, after its own warm-up each turn, the
    implementations alternating, and every timed call is counted once."""
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    timings = bench.measure_in_turns(steps, rounds=7, warmup=1, settle=0, turns=3)
    assert {name: t.rounds for name, t in timings.items()} == {"a": 7, "b": 7}
    # turns of 2, 2, 3 rounds, each after one warm-up call
    assert "".join(calls) == "aaabbb" + "aaabbb" + "aaaabbbb"


def test_torch_peer_process_times_blocks_in_a_process_of_its_own():
    pytest.importorskip("torch")
    import os

    with bench.PeerProcess("torch", "charrnn", "gru", threads=1) as peer:
        assert peer.pid != os.getpid()
        first = peer.time_calls(rounds=4, warmup=1, settle=0)
        second = peer.time_calls(rounds=2, warmup=0, settle=0)
    assert len(first) == 4 and len(second) == 2
    assert all(isinstance(s, float) and s > 0 for s in first + second)
    assert peer._process.returncode == 0  # it left when its input ended


def test_bench_torch_rows_are_timed_without_importing_torch_here():
    """The step bench prints torch's rows while its own process never imports torch."""
    pytest.importorskip("torch")
    import subprocess
    import sys

    code = ("import sys; from fastbptt import bench; "
            "bench.main(['--quick', '--shapes', 'charrnn', '--lengths']); "
            "print('torch imported:', 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stdout
    for label in ("torch", "torch, packed"):
        median_ms = _row(done.stdout, label)[len(label.split())]  # the first figure after the label
        assert float(median_ms) > 0


def test_peer_process_that_fails_raises_with_its_stderr():
    with pytest.raises(RuntimeError, match=r"(?s)the torch process exited with code 2.*--shape"):
        bench.PeerProcess("torch", "no-such-shape", "tanh", threads=1)


def test_peer_process_that_stays_silent_raises_after_its_timeout():
    with pytest.raises(RuntimeError, match="the torch process gave no answer within 0.001 s"):
        bench.PeerProcess("torch", "charrnn", "tanh", threads=1, timeout=0.001)


def test_peer_process_refuses_an_implementation_its_task_cannot_build():
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 2.*the step peers are torch"):
        bench.PeerProcess("onnxruntime", "charrnn", "tanh", threads=1)


def test_onnxruntime_and_torch_inference_peers_time_blocks_in_processes_of_their_own():
    for module in ("onnx", "onnxruntime", "torch"):
        pytest.importorskip(module)
    import os

    for impl in ("onnxruntime", "torch"):
        with bench.PeerProcess(impl, "charrnn", "lstm", threads=1, task="inference") as peer:
            assert peer.pid != os.getpid()
            seconds = peer.time_calls(rounds=3, warmup=1, settle=0)
        assert len(seconds) == 3 and all(isinstance(s, float) and s > 0 for s in seconds)
        assert peer._process.returncode == 0


# A pytest plugin for the benchmarks' own pytest (_run_benchmarks): it keeps the seconds each
# PeerProcess answered, and writes them at the end of the session with which of the peers'
# libraries that process imported.
_PROBE = '''
import json, pathlib, sys
from fastbptt import bench

answers = []
_time_calls = bench.PeerProcess.time_calls


def time_calls(self, *args, **kwargs):
    seconds = _time_calls(self, *args, **kwargs)
    answers.append([self.impl, seconds])
    return seconds


bench.PeerProcess.time_calls = time_calls


def pytest_sessionfinish(session):
    imported = [m for m in ("torch", "onnxruntime") if m in sys.modules]
    pathlib.Path(__file__).with_suffix(".json").write_text(
        json.dumps({"imported": imported, "answers": answers}))
'''


def _run_benchmarks(tmp_path, args):
    """Run benchmarks/ files in a pytest of their own, with the _PROBE plugin: (its stdout,
    {benchmark name: its entry of --benchmark-json}, the plugin's record)."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "conftest.py").exists():
        pytest.skip("no benchmarks/ beside the tests")
    (tmp_path / "peer_probe.py").write_text(_PROBE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    report = tmp_path / "benchmarks.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "peer_probe", f"--benchmark-json={report}", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {b["name"]: b for b in json.loads(report.read_text())["benchmarks"]}
    return done.stdout, rows, json.loads((tmp_path / "peer_probe.json").read_text())


def test_benchmarks_time_torch_steps_in_processes_of_their_own(tmp_path):
    """benchmarks/: torch's training steps (padded and packed) are timed in processes of their
    own, pytest never imports torch, and pytest-benchmark's rounds and the closing table are the
    seconds the peers answered, exactly; the in-process rows keep pytest-benchmark's clock."""
    pytest.importorskip("torch")
    pytest.importorskip("pytest_benchmark")
    import numpy as np

    out, rows, probe = _run_benchmarks(tmp_path, [
        "benchmarks/test_bench_cells.py", "benchmarks/test_bench_lengths.py",
        "-k", "tanh-charrnn-numpy or tanh-charrnn-torch or tanh-small-torch+lengths"])
    assert probe["imported"] == []
    answers = dict(probe["answers"])
    assert sorted(answers) == ["torch", "torch+lengths"]  # one request for each row
    peers = {"torch": ("test_training_step[tanh-charrnn-torch]", "charrnn"),
             "torch+lengths": ("test_lengths_step[tanh-small-torch+lengths]", "small")}
    for impl, (name, shape_name) in peers.items():
        stats = rows[name]["stats"]
        assert stats["data"] == answers[impl]
        assert stats["rounds"] == bench.SHAPES[shape_name].rounds
        assert rows[name]["options"]["timer"] == f"time.perf_counter in the {impl} process"
    numpy = rows["test_training_step[tanh-charrnn-numpy]"]
    assert numpy["options"]["timer"] == "perf_counter"
    median_ms = float(_row(out, "torch")[1])  # the closing table's row of tanh-charrnn
    assert median_ms == pytest.approx(np.median(answers["torch"]) * 1e3, abs=5e-4)


def test_builds_benchmark_times_every_compiled_build(tmp_path):
    """benchmarks/test_bench_builds.py: one row for each compiled build this CPU runs, side by
    side in one group per cell and shape, each labelled with its build."""
    pytest.importorskip("pytest_benchmark")
    from fastbptt import _backend

    builds = _backend.compiled_builds()
    if not builds:
        pytest.skip("the compiled kernels are not in use")
    _, rows, _ = _run_benchmarks(tmp_path, ["benchmarks/test_bench_builds.py", "-k", "charrnn and tanh"])
    names = {f"test_layer_step_of_each_build[charrnn-tanh-{level}]": level for level in builds}
    assert sorted(rows) == sorted(names)
    for name, level in names.items():
        assert rows[name]["group"] == "builds-tanh-charrnn"
        assert rows[name]["extra_info"] == {"T": 25, "B": 1, "I": 65, "H": 100, "build": level}
        assert rows[name]["stats"]["rounds"] >= 1 and rows[name]["stats"]["median"] > 0


def test_inference_benchmarks_time_onnxruntime_and_torch_in_processes_of_their_own(tmp_path):
    """benchmarks/test_bench_predict.py: onnxruntime's and torch's rows are the seconds their
    own processes answered, exactly, and pytest imports neither."""
    for module in ("onnx", "onnxruntime", "torch", "pytest_benchmark"):
        pytest.importorskip(module)

    _, rows, probe = _run_benchmarks(tmp_path, [
        "benchmarks/test_bench_predict.py", "-k", "test_inference and tanh-charrnn"])
    assert probe["imported"] == []
    answers = dict(probe["answers"])
    assert sorted(answers) == ["onnxruntime", "torch"]
    for impl in ("onnxruntime", "torch"):
        row = rows[f"test_inference[tanh-charrnn-{impl}]"]
        assert row["stats"]["data"] == answers[impl]
        assert row["stats"]["rounds"] == bench.SHAPES["charrnn"].rounds
        assert row["options"]["timer"] == f"time.perf_counter in the {impl} process"
    assert rows["test_inference[tanh-charrnn-predict]"]["options"]["timer"] == "perf_counter"
