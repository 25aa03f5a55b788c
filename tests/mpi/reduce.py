"""Under mpiexec (up to 4 ranks): allreduce_gradients and broadcast_parameters on their
own; each rank writes OUTDIR/rank{r}.npz.

    mpiexec -n 3 python tests/mpi/reduce.py OUTDIR

Rank r's gradient is cases.reduce_gradient(r), over B_r = cases.REDUCE_BATCH[r] sequences,
in two layouts: separate arrays, and views into one flat buffer with ``g.flat`` (the layout
model.backward gives when the parameters are one buffer), reduced in place. Then every
rank's model (another seed on each) gets the last rank's parameters.
"""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import cases  # noqa: E402
from fastbptt import distributed  # noqa: E402

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
out_dir = Path(sys.argv[1])
model = cases.reduce_model(rank)
arrays = {}
for layout in ("arrays", "flat"):
    buffer = cases.reduce_gradient(rank)
    params, offset = {}, 0
    for name, shape in model.param_shapes().items():
        view = buffer[offset:offset + int(np.prod(shape))].reshape(shape)
        params[name] = view if layout == "flat" else view.copy()
        offset += view.size
    g = SimpleNamespace(params=params, flat=buffer) if layout == "flat" else SimpleNamespace(params=params)
    distributed.allreduce_gradients(g, comm, cases.REDUCE_BATCH[rank])
    for name, value in g.params.items():
        arrays[f"{layout}/{name}"] = value
    if layout == "flat":
        arrays["flat/views"] = np.array([np.shares_memory(v, buffer) for v in g.params.values()])
distributed.broadcast_parameters(model, comm, root=comm.Get_size() - 1)
for name, value in model.params.items():
    arrays[f"broadcast/{name}"] = value
arrays["threads"] = np.array(distributed.default_num_threads(comm))
arrays["affinity"] = np.array(sorted(os.sched_getaffinity(0)))
np.savez(out_dir / f"rank{rank}.npz", **arrays)
