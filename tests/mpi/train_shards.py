"""Under mpiexec: every case of cases.py trained with each rank on its block of every
batch; each rank writes its final parameters and history to OUTDIR/rank{r}.npz.

    mpiexec -n 2 python tests/mpi/train_shards.py [--overlap] OUTDIR [CASE ...]

--overlap: fit reduces each layer's gradients while backward computes the layers below.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import cases  # noqa: E402
from fastbptt import distributed  # noqa: E402

comm = MPI.COMM_WORLD
args = sys.argv[1:]
distributed.OVERLAP = args[0] == "--overlap"
args = args[1:] if distributed.OVERLAP else args
out_dir = Path(args[0])
names = args[1:] or list(cases.CASES)
arrays = {}
for name in names:
    last_step = cases.CASES[name][1].get("last_step", False)
    shards = list(distributed.shard_batches(cases.global_batches(name), comm, last_step=last_step))
    params, history = cases.train(name, shards, comm=comm)
    for key, value in params.items():
        arrays[f"{name}/param/{key}"] = value
    for key in ("loss", "grad_norm", "eval_loss"):
        arrays[f"{name}/history/{key}"] = np.array(getattr(history, key), np.float64)
np.savez(out_dir / f"rank{comm.Get_rank()}.npz", **arrays)
