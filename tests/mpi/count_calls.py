"""Under mpiexec: the collectives fit makes, counted through a proxy communicator; rank 0
prints one line per method, "CALLS name count", after 3 batches of full BPTT."""
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mpi4py import MPI  # noqa: E402

import cases  # noqa: E402
import fastbptt as fb  # noqa: E402
from fastbptt import distributed  # noqa: E402


class Counting:
    """Forwards every attribute to the communicator, counting the calls by name."""

    def __init__(self, comm):
        self._comm, self.calls = comm, Counter()

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return call


comm = Counting(MPI.COMM_WORLD)
name = "tanh"
batches = list(distributed.shard_batches(cases.global_batches(name), MPI.COMM_WORLD))
model = cases.model(name)
fb.train.fit(model, batches, steps=3, optimizer=fb.optim.SGD(model.params, lr=0.1),
             progress=False, comm=comm)
if MPI.COMM_WORLD.Get_rank() == 0:
    for method, count in sorted(comm.calls.items()):
        print(f"CALLS {method} {count}")
