"""Allreduce time against buffer size between the ranks of an MPI job, and the fit
t(n) = α + n·β (latency α, seconds per byte β) that the scaling model in the README uses.

    mpiexec -n 2 python benchmarks/bench_allreduce.py [--max-mb 64] [--repeat 20]

Each size is a float32 buffer reduced in place (MPI.IN_PLACE, SUM), as fit reduces the flat
gradient; each timing is the median over ``--repeat`` calls, each started after a Barrier so
that no rank's lateness is counted as transfer. Rank 0 prints the table. A script, not a
pytest-benchmark module: it needs mpiexec to start its ranks. Timings taken on a machine
that other work shares are not a measurement of it.
"""
import argparse
import sys
import time

import numpy as np

try:
    from mpi4py import MPI
except ImportError as exc:
    sys.exit(f"bench_allreduce needs mpi4py: pip install 'fastbptt[mpi]' ({exc})")


def time_allreduce(comm, nbytes, repeat):
    """Median seconds of one in-place Allreduce of ``nbytes`` of float32."""
    buffer = np.ones(max(1, nbytes // 4), np.float32)
    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)  # first touch, connection set-up
    times = []
    for _ in range(repeat):
        comm.Barrier()
        started = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times.append(time.perf_counter() - started)
    # the slowest rank's time is the collective's
    mine = np.array([np.median(times)])
    comm.Allreduce(MPI.IN_PLACE, mine, op=MPI.MAX)
    return float(mine[0])


def fit_alpha_beta(sizes, seconds):
    """Least squares of t = α + n·β weighted by 1/t, so that the small sizes (latency) and
    the large ones (bandwidth) count alike: returns (α seconds, β seconds per byte)."""
    n, t = np.asarray(sizes, float), np.asarray(seconds, float)
    a = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    return float(alpha), float(beta)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mb", type=float, default=64.0, help="largest buffer, MB (default 64)")
    parser.add_argument("--repeat", type=int, default=20, help="calls per size (default 20)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    sizes = [4 << k for k in range(0, 40) if (4 << k) <= args.max_mb * 2**20]
    seconds = [time_allreduce(comm, n, args.repeat) for n in sizes]
    if rank:
        return 0
    print(f"Allreduce (in place, SUM, float32) over {size} ranks; {MPI.Get_library_version().splitlines()[0]}")
    print(f"median of {args.repeat} calls each after a Barrier; the slowest rank's median\n")
    print(f"{'bytes':>12} {'microseconds':>13} {'GB/s':>8}")
    for n, t in zip(sizes, seconds):
        print(f"{n:>12} {t * 1e6:>13.1f} {n / t / 1e9:>8.2f}")
    alpha, beta = fit_alpha_beta(sizes, seconds)
    print(f"\nfit t = alpha + n*beta: alpha = {alpha * 1e6:.1f} us, beta = {beta * 1e9:.3f} ns/byte "
          f"({1 / beta / 1e9:.2f} GB/s)" if beta > 0 else f"\nfit: alpha = {alpha * 1e6:.1f} us, beta <= 0 (noise)")
    worst = max(abs(alpha + n * beta - t) / t for n, t in zip(sizes, seconds))
    print(f"largest relative misfit: {worst:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
