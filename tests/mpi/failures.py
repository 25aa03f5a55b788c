"""Under mpiexec: the ways a data-parallel run must fail, one per MODE.

    mpiexec -n 2 python tests/mpi/failures.py MODE

raise_on_rank1: rank 1's third batch has the wrong number of features; fit raises there
    alone, and the job must end non-zero, printing rank 1's error.
mismatch_check: rank 1's model has another hidden size; check_same_model raises on every
    rank, which prints "rank R refused: MESSAGE" and exits 0.
mismatch_fit: the same models given to fit: the job ends non-zero with the message.
ran_out: rank 1 has one batch fewer than rank 0.
raise_in_backward_overlap: with the overlapped reduction, rank 1 raises inside its third
    backward, right after starting the reduction of its top layer (requests in flight).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import cases  # noqa: E402
import fastbptt as fb  # noqa: E402
from fastbptt import distributed  # noqa: E402

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
mode = sys.argv[1]
name = "tanh"
batches = list(distributed.shard_batches(cases.global_batches(name), comm))
model = cases.model(name)
optimizer = fb.optim.SGD(model.params, lr=0.1)
if mode == "raise_on_rank1":
    if rank == 1:
        x, y = batches[2]
        batches[2] = (np.ones(x.shape[:2] + (x.shape[2] + 1,)), y)
    fb.train.fit(model, batches, steps=cases.STEPS, optimizer=optimizer, progress=False, comm=comm)
elif mode in ("mismatch_check", "mismatch_fit"):
    if rank == 1:
        model = fb.RNN(cases.I, cases.H + 1, output_size=cases.O, dtype="float64", seed=7)
    if mode == "mismatch_check":
        try:
            distributed.check_same_model(model, comm)
        except ValueError as exc:
            print(f"rank {rank} refused: {exc}", flush=True)
    else:
        fb.train.fit(model, batches, steps=cases.STEPS, optimizer=fb.optim.SGD(model.params, lr=0.1),
                     progress=False, comm=comm)
elif mode == "ran_out":
    fb.train.fit(model, batches[:-1] if rank == 1 else batches, steps=cases.STEPS,
                 optimizer=optimizer, progress=False, comm=comm)
elif mode == "raise_in_backward_overlap":
    distributed.OVERLAP = True
    name = "deep_bidirectional_gru"
    batches = list(distributed.shard_batches(cases.global_batches(name), comm))
    model = cases.model(name)
    if rank == 1:
        post, calls = distributed._Overlap.__call__, []

        def failing(self, flat, start, stop):
            post(self, flat, start, stop)
            calls.append(start)
            if len(calls) == 5:  # the third backward's layer 1, after the readout's
                raise RuntimeError(f"injected failure with {len(self.requests)} reductions in flight")
        distributed._Overlap.__call__ = failing
    fb.train.fit(model, batches, steps=cases.STEPS, optimizer=fb.optim.SGD(model.params, lr=0.1),
                 progress=False, comm=comm)
else:
    sys.exit(f"unknown mode {mode!r}")
print(f"rank {rank} finished", flush=True)
