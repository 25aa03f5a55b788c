"""Inference: ``model.predict`` against onnxruntime on the model's own export and torch's
``inference_mode``, at bench.SHAPES for each cell; and the latency of ``model.step`` at B = 1.

One layer, float32; the char-RNN shape with its readout (O = I = 65), the others without
(``bench.inference_model``). onnxruntime runs the graph ``export_onnx`` writes, with
``intra_op_num_threads`` set to fastbptt's thread count (and one inter-op thread); torch runs
nn.RNN/LSTM/GRU loaded with the same weights, ``torch.set_num_threads`` likewise. Both are
peers, each benchmark of theirs run in a process of its own (``bench.PeerProcess`` building
``bench.make_inference``; conftest.py's ``time_peer``) that times the warm-up and rounds
itself: none of their thread pools or library state is in the process of ``predict`` and
``forward``, nor that process's in theirs. pytest-benchmark puts the implementations side by
side, each one's rounds run in one go after the ``settle`` pause; the script form prints each
one's ratio to predict's:

    python -m pytest benchmarks/test_bench_predict.py -p no:cacheprovider \\
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group [-k lstm]
    PYTHONPATH=src python benchmarks/test_bench_predict.py [--quick] [--shapes charrnn,small]

Timings are reported, never asserted.
"""
import argparse
import importlib.util
import sys

import numpy as np
import pytest

from fastbptt import _backend, bench

CELLS = ["tanh", "lstm", "gru"]
# predict and forward run here, the peers (bench.is_peer) in processes of their own.
IMPLEMENTATIONS = ["predict", "forward", "onnxruntime", "torch"]


def fastbptt_threads():
    """The float32 kernels' OpenMP team (1 on the NumPy backend, whose BLAS has its own pool)."""
    kernels = _backend.resolve("auto")[1]
    return kernels.threads() if hasattr(kernels, "threads") else bench.blas_threads()


def status(impl):
    """Why ``impl`` cannot run here, or None."""
    if impl == "onnxruntime":
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed (pip install fastbptt[test-onnx])"
    if impl == "torch" and importlib.util.find_spec("torch") is None:
        return "torch not installed"
    return None


def make_run(impl, shape, cell, seed=0):
    """A no-argument callable running one inference over (T, B, I) with fastbptt's ``impl``,
    predict or forward, in this process (the peers': bench.make_inference, in theirs)."""
    model = bench.inference_model(shape, cell, seed)
    x, _ = bench.inputs(shape, seed)
    if impl == "predict":
        return lambda: model.predict(x)
    if impl == "forward":
        return lambda: model.forward(x)
    raise ValueError(f"unknown implementation {impl!r}")


def measure_peer(impl, shape_name, cell, rounds, warmup):
    """The Timing of ``rounds`` inferences of the peer ``impl``, timed in a process of its own
    after ``warmup`` untimed ones."""
    with bench.PeerProcess(impl, shape_name, cell, fastbptt_threads(), task="inference") as peer:
        return bench.Timing.of(peer.time_calls(rounds, warmup))


def make_step_run(shape, cell):
    """One model.step at B = 1, its state carried from call to call."""
    model = bench.inference_model(shape, cell)
    x_t = np.random.default_rng(1).standard_normal((1, shape.I)).astype(np.float32)
    state = [None]

    def run():
        _, state[0] = model.step(x_t, state[0])
    return run


CASES = [pytest.param(cell, shape, impl, id=f"{cell}-{shape}-{impl}")
         for cell in CELLS for shape in bench.SHAPES for impl in IMPLEMENTATIONS]


@pytest.mark.parametrize("cell, shape_name, impl", CASES)
def test_inference(benchmark, time_peer, cell, shape_name, impl):
    reason = status(impl)
    if reason:
        pytest.skip(reason)
    shape = bench.SHAPES[shape_name]
    benchmark.group = f"predict-{cell}-{shape_name}"
    benchmark.extra_info.update(shape=str(shape), cell=cell, threads=fastbptt_threads())
    if bench.is_peer(impl):
        time_peer(impl, shape_name, cell, fastbptt_threads(), task="inference")
    else:
        benchmark.pedantic(make_run(impl, shape, cell), rounds=shape.rounds,
                           warmup_rounds=shape.warmup)


@pytest.mark.parametrize("cell", CELLS)
def test_step_latency(benchmark, cell):
    shape = bench.SHAPES["charrnn"]
    benchmark.group = "step-B1"
    benchmark.extra_info.update(shape=f"I={shape.I} H={shape.H} B=1", cell=cell)
    benchmark.pedantic(make_step_run(shape, cell), rounds=2000, warmup_rounds=200)


def main(argv=None):
    """Print, per cell and shape, each implementation's median and its ratio to predict's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(bench.SHAPES))
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--quick", action="store_true", help="a few rounds only")
    args = parser.parse_args(argv)
    print(_backend.describe())
    for cell in args.cells.split(","):
        for name in args.shapes.split(","):
            shape = bench.SHAPES[name]
            rounds, warmup = ((bench.QUICK_ROUNDS, bench.QUICK_WARMUP) if args.quick
                              else (shape.rounds, shape.warmup))
            times = {}
            for impl in args.impls.split(","):
                reason = status(impl)
                if reason:
                    print(f"  {impl}: left out ({reason})")
                    continue
                if bench.is_peer(impl):
                    timing = measure_peer(impl, name, cell, rounds, warmup)
                else:
                    timing = bench.measure(make_run(impl, shape, cell), rounds, warmup)
                times[impl] = timing.median
            base = times.get("predict")
            print(f"{cell} {name} ({shape}):")
            for impl, t in times.items():
                ratio = f"{t / base:6.2f}x predict's time" if base else ""
                print(f"  {impl:12s} {t * 1e3:10.4f} ms  {ratio}")
        step = bench.measure(make_step_run(bench.SHAPES["charrnn"], cell),
                             200 if args.quick else 2000, 20 if args.quick else 200).median
        print(f"  step at B=1 (I=65, H=100): {step * 1e6:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
