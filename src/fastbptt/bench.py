"""Time one BPTT training step: the compiled kernels against the NumPy backend and PyTorch.

    python -m fastbptt bench [--shapes charrnn,small,medium,large] [--cell tanh|relu|lstm|gru]
                             [--lengths] [--rounds N] [--quick] [--no-torch]
    python -m fastbptt bench --train [...]     the whole training update (see bench_train)

A step is ``model.forward(x)`` then ``model.backward(d_out)`` on one layer, float32, no
readout, with a fixed random ``d_out`` (torch: the module's forward, then
``out.backward(d_out)`` with the gradients reset first). The implementations take turns
(``measure_in_turns``): each runs a fifth of its rounds, then the next, five times over, so
that all of them meet the same phases of a machine whose speed drifts; each turn starts
after a pause that lets the previous one's thread pool go idle (numpy, scipy and torch each
carry their own BLAS/OpenMP pool whose threads spin after a call, and on a machine with few
cores a spinning pool steals them from the next implementation) and its own warm-up calls.
All of a shape's implementations, their weights and caches, are alive at once. PyTorch runs
in a process of its own (``PeerProcess``), one for each of its rows, with
``torch.set_num_threads`` at fastbptt's thread count: none of its thread pools, allocator
or library state is in the compiled kernels' process, nor theirs in its; it builds its step
once and times a turn's block each time it is asked, so it takes its turns like the others.

Each rate is also put against the machine's limit, the FMA peak ("% peak"): float32
multiply-adds from registers on the compiled kernels' team (``fma_peak``), measured before
and after each shape, the higher of the two counting (a moment when another process holds a
core cannot then pass for the machine's limit; not shown without the compiled kernels);
and against an sgemm of the
large shape's size, ``(T·B, I+H) @ (I+H, H)``, through scipy's OpenBLAS (the compiled float32 kernels run their
own gemm, which beats it by a few percent at that size: above 100 % is possible),
timed again before each shape because this shared machine's speed drifts from one minute to
the next. The IQR pools the five turns, so it shows the drift within a shape's run too:
compare ratios taken in one run rather than times taken in two.

With ``--lengths`` it times variable-length batches instead: the same step with ``lengths``
spread evenly over 1..T (mean ≈ T/2, in shuffled order) against the padded batch, and
torch's ``pack_padded_sequence`` path against its padded one.

``benchmarks/`` runs the same steps under pytest-benchmark; both take their shapes, cells
and step builders from this module, and both time the peers in processes of their own, the
inference benchmark's (onnxruntime, torch: ``make_inference``) too.
"""
import argparse
import contextlib
import gc
import importlib.util
import io
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from . import _backend, _cells
from .model import RNN

DTYPE = np.float32


@dataclass(frozen=True)
class Shape:
    """One problem size: sequence length T, batch B, input I, hidden H, and how long to time it."""

    T: int
    B: int
    I: int  # noqa: E741  (the paper's name)
    H: int
    rounds: int
    warmup: int

    def __str__(self):
        return f"T={self.T} B={self.B} I={self.I} H={self.H}"


SHAPES = {
    "charrnn": Shape(25, 1, 65, 100, rounds=500, warmup=200),  # Karpathy's min-char-rnn
    "small": Shape(100, 32, 32, 128, rounds=100, warmup=20),
    "medium": Shape(50, 64, 256, 512, rounds=30, warmup=3),
    "large": Shape(25, 64, 1024, 1024, rounds=15, warmup=2),
}
# Warm-up is counted in rounds (pytest-benchmark's pedantic mode counts them), chosen to last
# ~0.1 s or more: the first calls after a pause are slow (page faults, waking thread pools).
QUICK_ROUNDS, QUICK_WARMUP = 3, 1


# Implementation name -> the label the tables print.
IMPLEMENTATIONS = {"cython": "compiled", "numpy": "numpy", "torch": "torch"}
# The same for ``--lengths``: each implementation padded, then with lengths (packed).
LENGTHS_IMPLEMENTATIONS = {"cython": "compiled", "cython+lengths": "compiled, lengths",
                           "torch": "torch", "torch+lengths": "torch, packed"}
# The peers: implementations that run in a process of their own (``PeerProcess``).
PEERS = ("torch", "onnxruntime")


def is_peer(impl):
    """Whether ``impl`` (with or without "+lengths") runs in a process of its own."""
    return impl.partition("+")[0] in PEERS


# What a peer's process can build (``PeerProcess``'s task), and for which implementations:
# the training step of make_step, or the inference of make_inference.
PEER_TASKS = {"step": tuple(impl for impl in LENGTHS_IMPLEMENTATIONS if is_peer(impl)),
              "inference": ("onnxruntime", "torch")}

# Seconds to wait before timing an implementation. OpenBLAS threads spin for about 2^28
# cycles (~0.1 s here) after a call before they sleep.
SETTLE_SECONDS = 0.5
# A shape's implementations are timed in turns, each turn a block of its rounds: this
# machine's speed drifts by up to 2x over minutes, and timed one after the other the
# implementations would each meet another phase of it. In turns they meet the same phases.
TURNS = 5
SGEMM_ROUNDS = 10
PEAK_SECONDS = 0.02      # each of fma_peak's runs (the best of five counts)


def step_flops(shape, cell="tanh"):
    """Multiply-adds ×2 of one step: forward 2·T·B·G·H·(I+H), backward twice that."""
    G = _cells.CELLS[cell].gates
    return 3 * 2 * shape.T * shape.B * G * shape.H * (shape.I + shape.H)


def inputs(shape, seed=0):
    """The fixed x (T, B, I) and d_out (T, B, H) every implementation is timed on (the same
    for every cell: each cell's layer outputs (T, B, H))."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape.T, shape.B, shape.I)).astype(DTYPE)
    d_out = rng.standard_normal((shape.T, shape.B, shape.H)).astype(DTYPE)
    return x, d_out


def mixed_lengths(shape, seed=0):
    """Lengths spread evenly over 1..T (mean ≈ T/2), in a seeded shuffled order; T//2 for B = 1."""
    if shape.B == 1:
        return np.array([max(1, shape.T // 2)])
    lengths = np.rint(np.linspace(1, shape.T, shape.B)).astype(np.int64)
    return np.random.default_rng(seed).permutation(lengths)


def torch_available():
    return importlib.util.find_spec("torch") is not None


def implementation_status(impl):
    """None when ``impl`` can run here, else why it cannot."""
    impl = impl.split("+")[0]
    if impl == "cython" and "cython" not in _backend.available_backends():
        return f"the compiled kernels are not available ({_backend._import_error})"
    if impl == "torch" and not torch_available():
        return "torch is not installed"
    return None


def make_step(impl, shape, cell="tanh", seed=0):
    """A callable running one training step of ``impl`` ("cython", "numpy", "torch"; with
    "+lengths" appended, on the batch of :func:`mixed_lengths`).

    Every implementation gets the same weights (fastbptt's seeded initialisation, loaded
    into torch under the same names) and the same x and d_out, so that they run in the same
    numeric regime.
    """
    x, d_out = inputs(shape, seed)
    impl, _, packed = impl.partition("+")
    lengths = mixed_lengths(shape, seed) if packed else None
    if impl == "torch":
        reference = RNN(shape.I, shape.H, cell=cell, dtype=DTYPE, seed=seed, backend="numpy")
        return _torch_step(cell, reference.params, x, d_out, lengths)
    model = RNN(shape.I, shape.H, cell=cell, dtype=DTYPE, seed=seed, backend=impl)

    def step():
        model.forward(x, lengths=lengths)
        model.backward(d_out)

    return step


def _torch_layer(torch, cell, params):
    """torch's nn.RNN/LSTM/GRU for ``cell``, loaded with the layer-0 weights of a fastbptt
    model's ``params`` (the same names; a readout's are left out)."""
    I, H = params["weight_ih_l0"].shape[1], params["weight_hh_l0"].shape[1]
    module = _cells.CELLS[cell].torch_module(torch, I, H)
    module.load_state_dict({name: torch.from_numpy(value.copy())
                            for name, value in params.items() if name.endswith("_l0")})
    return module


def _torch_step(cell, params, x, d_out, lengths=None):
    import torch

    B = x.shape[1]
    H = params["weight_hh_l0"].shape[1]
    spec = _cells.CELLS[cell]
    module = _torch_layer(torch, cell, params)
    # fastbptt's backward always returns dx and dh0: ask torch for them too.
    x_t = torch.from_numpy(x).requires_grad_(True)
    states = tuple(torch.zeros((1, B, H), dtype=torch.float32, requires_grad=True)
                   for _ in spec.states)
    state = states[0] if len(states) == 1 else states
    d_out_t = torch.from_numpy(d_out)
    if lengths is not None:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        lengths_t = torch.from_numpy(lengths)

    def step():
        module.zero_grad(set_to_none=True)
        x_t.grad = None
        for s in states:
            s.grad = None
        if lengths is None:
            out, _ = module(x_t, state)
        else:
            packed = pack_padded_sequence(x_t, lengths_t, enforce_sorted=False)
            out, _ = pad_packed_sequence(module(packed, state)[0], total_length=x_t.shape[0])
        out.backward(d_out_t)

    return step


def inference_model(shape, cell="tanh", seed=0):
    """The model of the inference benchmarks (benchmarks/test_bench_predict.py): one layer,
    float32; the char-RNN shape with its readout (O = I = 65), the others without."""
    output_size = shape.I if shape is SHAPES["charrnn"] else None
    return RNN(shape.I, shape.H, cell=cell, output_size=output_size, seed=seed)


def make_inference(impl, shape, cell, threads, seed=0):
    """A callable running one inference of :func:`inference_model` over the x of
    :func:`inputs` with a peer: "onnxruntime" on the graph ``export_onnx`` writes, with
    ``intra_op_num_threads`` at ``threads`` and one inter-op thread; "torch" under
    ``inference_mode``, nn.RNN/LSTM/GRU (and the readout) loaded with the same weights, on the
    threads its process set (``_serve``)."""
    model = inference_model(shape, cell, seed)
    x, _ = inputs(shape, seed)
    if impl == "onnxruntime":
        import onnxruntime as ort

        from .export import export_onnx

        f = io.BytesIO()
        export_onnx(model, f)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(f.getvalue(), options, providers=["CPUExecutionProvider"])
        feeds = {"x": x}
        return lambda: session.run(None, feeds)
    if impl == "torch":
        import torch

        rnn = _torch_layer(torch, cell, model.params)
        readout = None
        if model.output_size is not None:
            readout = torch.nn.Linear(shape.H, model.output_size)
            readout.load_state_dict({"weight": torch.from_numpy(model.params["weight_out"].copy()),
                                     "bias": torch.from_numpy(model.params["bias_out"].copy())})
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                out, _ = rnn(xt)
                return readout(out) if readout is not None else out
        return run
    raise ValueError(f"unknown inference peer {impl!r}")


def sgemm_dims(shape=SHAPES["large"]):
    """(M, K, N) of the sgemm reference: the (T·B, I+H) @ (I+H, H) of one forward step's work."""
    return shape.T * shape.B, shape.I + shape.H, shape.H


def make_sgemm(shape=SHAPES["large"]):
    """(callable, flops) of the sgemm reference, run into a preallocated C.

    Fortran-ordered operands, so that scipy passes them to OpenBLAS without a copy.
    """
    from scipy.linalg.blas import sgemm

    M, K, N = sgemm_dims(shape)
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((M, K)), dtype=DTYPE)
    b = np.asfortranarray(rng.standard_normal((K, N)) / np.sqrt(K), dtype=DTYPE)
    c = np.zeros((M, N), dtype=DTYPE, order="F")

    def run():
        sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=1)

    return run, 2 * M * K * N


def blas_threads():
    """The thread count of the BLAS pools fastbptt runs on; torch is set to the same."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        pass
    else:
        counts = [pool["num_threads"] for pool in threadpool_info()
                  if pool.get("internal_api") == "openblas"]
        if counts:
            return max(counts)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, quartiles and how many rounds they come from."""

    median: float
    q1: float
    q3: float
    rounds: int

    @property
    def iqr(self):
        return self.q3 - self.q1

    @classmethod
    def of(cls, seconds):
        q1, median, q3 = np.percentile(seconds, [25, 50, 75])
        return cls(float(median), float(q1), float(q3), len(seconds))


def measure(fn, rounds, warmup, settle=SETTLE_SECONDS):
    """Time ``rounds`` back-to-back calls of ``fn`` after ``warmup`` untimed ones."""
    return Timing.of(time_calls(fn, rounds, warmup, settle))


def time_calls(fn, rounds, warmup, settle=SETTLE_SECONDS):
    """The seconds of each of ``rounds`` back-to-back calls of ``fn``, after a pause of
    ``settle`` seconds and ``warmup`` untimed calls."""
    if settle:
        time.sleep(settle)
    for _ in range(warmup):
        fn()
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return seconds


def measure_in_turns(steps, rounds, warmup, settle=SETTLE_SECONDS, turns=TURNS):
    """Time ``rounds`` calls of each of ``steps`` (name -> a callable timed here, or a
    ``PeerProcess``, which times its blocks in its own process), in ``turns`` turns of
    about rounds / turns calls each, the implementations taking turns (each turn after a
    pause and its own warm-up calls: another implementation ran just before); a dict name ->
    Timing over all of its calls."""
    seconds = {name: [] for name in steps}
    turns = max(1, min(turns, rounds))
    for turn in range(turns):
        block = rounds * (turn + 1) // turns - rounds * turn // turns
        for name, step in steps.items():
            if isinstance(step, PeerProcess):
                seconds[name].extend(step.time_calls(block, warmup, settle))
            else:
                seconds[name].extend(time_calls(step, block, warmup, settle))
    return {name: Timing.of(s) for name, s in seconds.items()}


class PeerProcess:
    """One implementation's training step, or inference, in a process of its own, timed on
    request.

    The process (``python -m fastbptt.bench --serve IMPL ...``) builds, for a shape of
    ``SHAPES``, the step of :func:`make_step` (``task`` "step") or the inference of
    :func:`make_inference` ("inference") once, with ``OMP_NUM_THREADS``, torch's
    ``set_num_threads`` and onnxruntime's intra-op threads at ``threads``, then answers each
    :meth:`time_calls` with the seconds of a block of calls it timed itself, so that only the
    peer's own work is in them. A process that dies or stays silent for ``timeout`` seconds
    raises RuntimeError with its stderr. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, impl, shape_name, cell, threads, seed=0, timeout=600.0, task="step"):
        self.impl = impl
        self.timeout = timeout
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        command = [sys.executable, "-m", "fastbptt.bench", "--serve", impl, "--task", task,
                   "--shape", shape_name, "--cell", cell, "--threads", str(threads),
                   "--seed", str(seed)]
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr,
                                         text=True, env=env)
        try:
            self.pid = self._reply()["pid"]
        except BaseException:
            self.close()
            raise

    def time_calls(self, rounds, warmup, settle=SETTLE_SECONDS):
        """As :func:`time_calls`, in the peer's process: a list of ``rounds`` seconds."""
        request = {"rounds": int(rounds), "warmup": int(warmup), "settle": float(settle)}
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except OSError:
            pass  # the process has gone: _reply says why
        return self._reply()["seconds"]

    def _reply(self):
        stdout = self._process.stdout
        ready, _, _ = select.select([stdout], [], [], self.timeout)
        line = stdout.readline() if ready else ""
        if not line:
            self._process.kill()
            self._process.wait()
            self._stderr.seek(0)
            why = (f"exited with code {self._process.returncode}" if ready
                   else f"gave no answer within {self.timeout:g} s")
            raise RuntimeError(f"bench: the {self.impl} process {why}:\n"
                               f"{self._stderr.read()[-2000:]}")
        return json.loads(line)

    def close(self):
        """End the process (it leaves on the end of its input) and wait for it."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdin, self._process.stdout, self._stderr):
            with contextlib.suppress(OSError):
                stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(argv):
    """The peer's side of :class:`PeerProcess`: build the step (or inference), then time
    blocks on request (one JSON line in, one out) until the input ends."""
    parser = argparse.ArgumentParser(prog="python -m fastbptt.bench --serve")
    parser.add_argument("--serve", required=True,
                        choices=sorted({impl for impls in PEER_TASKS.values() for impl in impls}))
    parser.add_argument("--task", choices=list(PEER_TASKS), default="step")
    parser.add_argument("--shape", choices=list(SHAPES), required=True)
    parser.add_argument("--cell", choices=list(_cells.CELLS), required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.serve not in PEER_TASKS[args.task]:
        parser.error(f"--serve: the {args.task} peers are {', '.join(PEER_TASKS[args.task])}")
    if args.serve.startswith("torch"):
        import torch

        torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    step = (make_step(args.serve, shape, args.cell, args.seed) if args.task == "step"
            else make_inference(args.serve, shape, args.cell, args.threads, args.seed))
    print(json.dumps({"pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        seconds = time_calls(step, request["rounds"], request["warmup"], request["settle"])
        print(json.dumps({"seconds": seconds}), flush=True)
    return 0


def fma_peak(compiled, quick, settle):
    """The compiled kernels' FMA peak (FLOP/s) now, after a pause (threads that OpenBLAS or a
    peer leave spinning after their last call halve it); None without them."""
    if compiled is None:
        return None
    if settle:
        time.sleep(settle)
    return compiled.fma_peak(0.002 if quick else PEAK_SECONDS)


def format_shape_table(name, shape, cell, timings, sgemm_rate=None, peak_rate=None):
    """The table of one shape.

    timings: {implementation: Timing, or a str saying why it did not run}, in print order.
    sgemm_rate: the reference's FLOP/s, or None to leave out the "% sgemm" column.
    peak_rate: the FMA peak's FLOP/s (``fma_peak``), or None to leave out "% peak".
    A "+lengths" row's rates count the multiply-adds of the running rows only (the padded
    batch's times the mean length over T), the work its kernels do.
    """
    flops = step_flops(shape, cell)
    running = float(np.mean(mixed_lengths(shape))) / shape.T
    baseline = timings.get("cython")
    baseline = baseline if isinstance(baseline, Timing) else None
    lines = [f"{name}  {shape}  ({flops / 1e6:,.1f} MFLOP per step)"]
    header = f"  {'implementation':<18}{'median ms':>11}{'IQR ms':>10}{'IQR %':>7}{'rounds':>8}" \
             f"{'/ compiled':>12}{'GFLOP/s':>9}"
    if sgemm_rate:
        header += f"{'% sgemm':>9}"
    if peak_rate:
        header += f"{'% peak':>8}"
    lines.append(header)
    for impl, t in timings.items():
        label = LABELS.get(impl, impl)
        if not isinstance(t, Timing):
            lines.append(f"  {label:<18}{'-':>11}   ({t})")
            continue
        ratio = f"{t.median / baseline.median:.2f}x" if baseline else "-"
        rate = flops * (running if impl.endswith("+lengths") else 1.0) / t.median
        row = (f"  {label:<18}{t.median * 1e3:>11.3f}{t.iqr * 1e3:>10.3f}"
               f"{100 * t.iqr / t.median:>7.1f}{t.rounds:>8d}{ratio:>12}{rate / 1e9:>9.2f}")
        if sgemm_rate:
            row += f"{100 * rate / sgemm_rate:>9.1f}"
        if peak_rate:
            row += f"{100 * rate / peak_rate:>8.1f}"
        lines.append(row)
    return "\n".join(lines)


LABELS = {**IMPLEMENTATIONS, **LENGTHS_IMPLEMENTATIONS}


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fastbptt bench",
        description="Time one BPTT training step (forward + backward, float32, one layer, no "
                    "readout): fastbptt's compiled kernels, its NumPy backend and PyTorch.",
    )
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated, from {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--cell", choices=list(_cells.CELLS), default="tanh",
                        help="the recurrent cell (default: tanh)")
    parser.add_argument("--lengths", action="store_true",
                        help="variable-length batches (lengths spread over 1..T) against the "
                             "padded batch, compiled and torch")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per implementation and shape (default: per shape)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ROUNDS} rounds, no pauses: checks that it runs, not a measurement")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--train", action="store_true",
                        help="time the whole training update (forward, loss, backward, clip, "
                             "Adam) against PyTorch and JAX instead; --train --help for its options")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SHAPES]
    if unknown or not names:
        parser.error(f"--shapes: unknown {unknown}; choose from {', '.join(SHAPES)}")
    args.shapes = names
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be a positive integer")
    return args


def main(argv=None):
    """Run the comparison and print one table per shape; returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--train" in argv:
        from .bench_train import main as train_main
        return train_main([a for a in argv if a != "--train"])
    if "--serve" in argv:
        return _serve(argv)
    args = _parse(argv)
    out = sys.stdout
    threads = blas_threads()  # numpy's and scipy's pools (torch is not imported here)
    settle = 0 if args.quick else SETTLE_SECONDS

    impls = [impl for impl in (LENGTHS_IMPLEMENTATIONS if args.lengths else IMPLEMENTATIONS)
             if not (impl.startswith("torch") and args.no_torch)]
    unavailable = {impl: implementation_status(impl) for impl in impls}
    runnable = [impl for impl in impls if unavailable[impl] is None]

    print(f"fastbptt bench: one training step (forward + backward), {args.cell} cell, "
          f"float32, one layer, no readout", file=out)
    if args.lengths:
        print("variable lengths: spread evenly over 1..T (mean ~T/2), shuffled; rates count "
              "the padded batch's FLOPs", file=out)
    print(f"threads: {threads} per BLAS pool (numpy's and scipy's OpenBLAS)"
          + ("; torch.set_num_threads(%d), in processes of its own" % threads
             if "torch" in runnable else ""), file=out)
    if "cython" in runnable:
        print(f"compiled kernels: the {_backend.compiled_level} build, float32 products on its "
              f"own gemm, OpenMP team of {_backend._compiled.threads()}", file=out)
    for impl in impls:
        if unavailable[impl]:
            print(f"{LABELS[impl]}: not timed, {unavailable[impl]}", file=out)
    if args.no_torch:
        print("torch: left out (--no-torch)", file=out)

    sgemm, sgemm_flops = make_sgemm()
    M, K, N = sgemm_dims()
    print(f"sgemm reference: scipy.linalg.blas.sgemm ({M}, {K}) @ ({K}, {N}), timed just before "
          "each shape (this machine's speed drifts over minutes)", file=out)
    compiled = _backend._compiled
    if compiled is not None:
        print(f"FMA peak: float32 multiply-adds from registers on the compiled kernels' team "
              f"({compiled.threads()} threads, the {_backend.compiled_level} build's vectors), "
              "measured before and after each shape, the higher counting", file=out)
    else:
        print("FMA peak: not measured (it needs the compiled kernels)", file=out)
    for name in args.shapes:
        shape = SHAPES[name]
        rounds = args.rounds or (QUICK_ROUNDS if args.quick else shape.rounds)
        warmup = QUICK_WARMUP if args.quick else shape.warmup
        peaks = [fma_peak(compiled, args.quick, settle)]
        reference = measure(sgemm, QUICK_ROUNDS if args.quick else SGEMM_ROUNDS, 1, settle)
        sgemm_rate = sgemm_flops / reference.median
        # the peers' processes end, and the caches are freed, before the next shape's start
        with contextlib.ExitStack() as peers:
            steps = {impl: (peers.enter_context(PeerProcess(impl, name, args.cell, threads))
                            if is_peer(impl)
                            else make_step(impl, shape, args.cell))
                     for impl in runnable}
            measured = measure_in_turns(steps, rounds, warmup, settle,
                                        1 if args.quick else TURNS)
            del steps
        timings = {impl: measured.get(impl, "not available") for impl in impls}
        peaks.append(fma_peak(compiled, args.quick, settle))
        peak_rate = max(peaks) if compiled is not None else None
        print(file=out)
        print(format_shape_table(name, shape, args.cell, timings, sgemm_rate, peak_rate),
              file=out)
        print(f"  sgemm reference: {sgemm_rate / 1e9:.1f} GFLOP/s (median of "
              f"{reference.rounds}, IQR {100 * reference.iqr / reference.median:.1f}%)"
              + (f"; FMA peak {peak_rate / 1e9:.1f} GFLOP/s (before {peaks[0] / 1e9:.1f}, "
                 f"after {peaks[1] / 1e9:.1f})" if peak_rate else ""), file=out)
        out.flush()
    print(file=out)
    print("median and interquartile range of the wall time of one step, over rounds taken in "
          "turns of the implementations; '/ compiled' is the median's ratio to the compiled "
          "kernels'.", file=out)
    if args.quick:
        print("--quick: a few rounds without pauses between implementations; not a measurement.",
              file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
