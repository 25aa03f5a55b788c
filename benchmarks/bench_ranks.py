"""One process with 2 threads against 2 MPI ranks with 1 thread each, on the same global
batch: the training step, and the gradient reduction's share of the 2-rank step.

    python benchmarks/bench_ranks.py [--shapes charrnn,small,medium,large] [--rounds 10]

The step is fit's update without its bookkeeping: forward, backward of a fixed d_out,
the reduction (2 ranks), global-norm clipping and an SGD step, on fastbptt.bench's shapes
(tanh, float32, no readout). Each rank holds half of the batch; charrnn's B = 1 cannot be
halved, so both sides run it at B = 2. The script runs the 1-process side itself, then
starts ``mpiexec -n 2`` on itself for the other (Open MPI's root and oversubscription
settings are added to the environment). Columns:

- step: median seconds per step (2 ranks: the slower rank's median);
- reduction: the median time in ``sum_gradients``, waiting for the other rank included;
- Allreduce: one in-place Allreduce of the gradient's bytes after a Barrier (transfer only);
- share: reduction / step;
- buckets: the same bytes as one non-blocking Iallreduce per parameter array (top layer
  first, as DDP's buckets), all started then waited for: what overlap would cost before it
  hides anything.

``--overlap`` measures the overlapped reduction instead (``fastbptt.distributed.OVERLAP``):
2 ranks x 1 thread at the same shapes, with 2 layers and a readout (output size I), so
that backward has segments to give early (readout, layer 1, then layer 0; one layer without a
readout has nothing below to overlap with). Steps with and without overlap alternate in
each rank, on the same model; the reduction is the time left after backward (the wait for
the in-flight Iallreduces, or the one Allreduce), i.e. what overlap did not hide. Columns:
step ms off/on, reduction ms off/on, share (reduction/step) off/on; the slower rank's medians.

Timings taken on a machine that other work shares are not a measurement of it.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fastbptt import RNN, bench, clip_grad_norm, optim


def _shape(name):
    shape = bench.SHAPES[name]
    return replace(shape, B=2) if shape.B == 1 else shape


def _step_parts(shape, rank=0, size=1, seed=0):
    """(model, optimizer, x, d_out) of this rank's block of the global batch."""
    x, d_out = bench.inputs(shape, seed=seed)
    rows = slice(rank * shape.B // size, (rank + 1) * shape.B // size)
    model = RNN(shape.I, shape.H, dtype=bench.DTYPE, seed=seed)
    return model, optim.SGD(model.params, lr=1e-6), np.ascontiguousarray(x[:, rows]), \
        np.ascontiguousarray(d_out[:, rows])


def _time_steps(shape, rounds, warmup, comm=None):
    """(median step seconds, median reduction seconds, gradient bytes)."""
    from fastbptt import distributed
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    model, optimizer, x, d_out = _step_parts(shape, rank, size)
    steps, reductions = [], []
    for i in range(warmup + rounds):
        started = time.perf_counter()
        model.forward(x)
        g = model.backward(d_out)
        reduced = time.perf_counter()
        if comm is not None:
            distributed.sum_gradients(g, comm)
        done_reducing = time.perf_counter()
        clip_grad_norm(g.params, 1.0)
        optimizer.step(g.params)
        if i >= warmup:
            steps.append(time.perf_counter() - started)
            reductions.append(done_reducing - reduced)
    nbytes = sum(v.nbytes for v in g.params.values())
    return float(np.median(steps)), float(np.median(reductions)), nbytes


def _time_overlap(shape, rounds, comm):
    """{False: (step, reduction), True: ...}: median seconds, steps alternating off and on."""
    from fastbptt import distributed
    rank, size = comm.Get_rank(), comm.Get_size()
    x, _ = bench.inputs(shape, seed=0)
    rows = slice(rank * shape.B // size, (rank + 1) * shape.B // size)
    x = np.ascontiguousarray(x[:, rows])
    d_out = np.random.default_rng(1).standard_normal(x.shape).astype(bench.DTYPE) / x.size
    model = RNN(shape.I, shape.H, num_layers=2, output_size=shape.I, dtype=bench.DTYPE, seed=0)
    optimizer = optim.SGD(model.params, lr=1e-6)
    times = {False: ([], []), True: ([], [])}
    warmup = 2 * min(3, shape.warmup)
    for i in range(warmup + 2 * rounds):
        overlap = bool(i % 2)
        comm.Barrier()
        started = time.perf_counter()
        model.forward(x)
        hook = distributed._Overlap(comm) if overlap else None
        if hook is None:
            g = model.backward(d_out, input_grad=False)
        else:
            g = model.backward(d_out, input_grad=False, _on_final=hook)
        reduced = time.perf_counter()
        if hook is None:
            distributed.sum_gradients(g, comm)
        else:
            hook.wait(g)
        done_reducing = time.perf_counter()
        clip_grad_norm(g.params, 1.0)
        optimizer.step(g.params)
        if i >= warmup:
            times[overlap][0].append(time.perf_counter() - started)
            times[overlap][1].append(done_reducing - reduced)
    return {k: (float(np.median(a)), float(np.median(b))) for k, (a, b) in times.items()}


def overlap_worker(names, rounds):
    """Under mpiexec: --overlap's measurement; rank 0 prints a JSON line per shape."""
    from mpi4py import MPI

    from fastbptt import distributed
    comm = MPI.COMM_WORLD
    distributed.limit_threads(comm, 1)
    for name in names:
        shape = _shape(name)
        t = _time_overlap(shape, rounds, comm)
        worst = np.array([*t[False], *t[True]])
        comm.Allreduce(MPI.IN_PLACE, worst, op=MPI.MAX)
        if comm.Get_rank() == 0:
            print(json.dumps({"shape": name, "off": worst[:2].tolist(), "on": worst[2:].tolist()}),
                  flush=True)


def worker(names, rounds):
    """Under mpiexec: each rank one thread, its half of each shape's batch; rank 0 prints a
    JSON line per shape."""
    from mpi4py import MPI

    from fastbptt import distributed
    comm = MPI.COMM_WORLD
    distributed.limit_threads(comm, 1)
    for name in names:
        shape = _shape(name)
        step, reduction, nbytes = _time_steps(shape, rounds, min(3, shape.warmup), comm)
        worst = np.array([step, reduction])
        comm.Allreduce(MPI.IN_PLACE, worst, op=MPI.MAX)
        buffer = np.ones(nbytes // 4, np.float32)
        # buckets: one segment per parameter array, top layer's first, as DDP's; started
        # together and waited for together (what a backward hook would start one by one)
        sizes = [v.size for v in RNN(shape.I, shape.H, dtype=bench.DTYPE).params.values()][::-1]
        edges = np.cumsum([0] + sizes)
        segments = [buffer[a:b] for a, b in zip(edges[:-1], edges[1:])]
        alone, buckets = [], []
        for _ in range(10):
            comm.Barrier()
            started = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            alone.append(time.perf_counter() - started)
            comm.Barrier()
            started = time.perf_counter()
            MPI.Request.Waitall([comm.Iallreduce(MPI.IN_PLACE, seg, op=MPI.SUM) for seg in segments])
            buckets.append(time.perf_counter() - started)
        if comm.Get_rank() == 0:
            print(json.dumps({"shape": name, "step": worst[0], "reduction": worst[1],
                              "allreduce": float(np.median(alone)),
                              "buckets": float(np.median(buckets)), "nbuckets": len(segments),
                              "bytes": nbytes}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="charrnn,small,medium,large")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per shape (default 10)")
    parser.add_argument("--overlap", action="store_true",
                        help="measure the reduction overlapped with backward against after it")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.shapes.split(",")]
    unknown = [n for n in names if n not in bench.SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; choose from {', '.join(bench.SHAPES)}")
    if args.worker:
        (overlap_worker if args.overlap else worker)(names, args.rounds)
        return 0
    if args.overlap:
        rows = _mpiexec(names, args.rounds, ["--overlap"])
        print("2 ranks x 1 thread, tanh float32, 2 layers + readout: reduction after backward (off) "
              "or overlapped with it (on)")
        print(f"medians of {args.rounds} alternating steps each; the slower rank's\n")
        print(f"{'shape':<8} {'T,B,I,H':<18} {'step off':>8} {'step on':>8} {'on/off':>7} "
              f"{'red. off':>8} {'red. on':>8} {'share off':>9} {'share on':>8}")
        for name in names:
            s, r = _shape(name), rows[name]
            (step0, red0), (step1, red1) = r["off"], r["on"]
            print(f"{name:<8} {f'{s.T},{s.B},{s.I},{s.H}':<18} {step0 * 1e3:>8.2f} {step1 * 1e3:>8.2f} "
                  f"{step1 / step0:>7.2f} {red0 * 1e3:>8.2f} {red1 * 1e3:>8.2f} {red0 / step0:>9.1%} "
                  f"{red1 / step1:>8.1%}")
        return 0
    from threadpoolctl import threadpool_limits
    single = {}
    with threadpool_limits(2):
        for name in names:
            shape = _shape(name)
            single[name] = _time_steps(shape, args.rounds, min(3, shape.warmup))
    ranks = _mpiexec(names, args.rounds)
    print("training step (tanh, float32): 1 process x 2 threads vs 2 ranks x 1 thread, same global batch")
    print(f"median of {args.rounds} steps; 2 ranks: the slower rank's median\n")
    print(f"{'shape':<8} {'T,B,I,H':<18} {'grad MB':>7} {'1x2 ms':>8} {'2x1 ms':>8} {'2x1/1x2':>8} "
          f"{'reduce ms':>9} {'Allreduce':>9} {'share':>6} {'buckets':>8}")
    for name in names:
        s, r = _shape(name), ranks[name]
        step1 = single[name][0]
        print(f"{name:<8} {f'{s.T},{s.B},{s.I},{s.H}':<18} {r['bytes'] / 1e6:>7.2f} {step1 * 1e3:>8.2f} "
              f"{r['step'] * 1e3:>8.2f} {r['step'] / step1:>8.2f} {r['reduction'] * 1e3:>9.2f} "
              f"{r['allreduce'] * 1e3:>9.2f} {r['reduction'] / r['step']:>6.1%} "
              f"{r['buckets'] * 1e3:>8.2f}")
    return 0


def _mpiexec(names, rounds, extra=()):
    """{shape: the JSON line rank 0 printed} of this script's worker under mpiexec -n 2."""
    mpiexec = Path(sys.executable).with_name("mpiexec")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    proc = subprocess.run([str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", "2", sys.executable,
                           __file__, "--worker", *extra, "--shapes", ",".join(names), "--rounds",
                           str(rounds)], env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        sys.exit(f"mpiexec failed ({proc.returncode}):\n{proc.stderr}")
    return {r["shape"]: r for r in map(json.loads, proc.stdout.splitlines())}


if __name__ == "__main__":
    sys.exit(main())
