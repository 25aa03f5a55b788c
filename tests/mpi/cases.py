"""Training runs shared by tests/test_distributed.py (one process, whole batches) and
tests/mpi/train_shards.py (each rank its block of every batch): the same seeded data,
model and settings on both sides, float64.

Each case's global batch has 5 sequences, so that 2 ranks hold 2 and 3 of them: an
unequal split is what tells Σ_r (B_r/ΣB) g_r from a plain mean of the ranks' gradients.
"""
import numpy as np

import fastbptt as fb

T, B, I, H, O, V = 9, 5, 3, 6, 2, 4
STEPS = 4
EVAL_B = 7  # 3 and 4 rows on 2 ranks; on 8 ranks some would have none


def _floats(rng, b, last_step):
    x = rng.standard_normal((T, b, I))
    y = rng.standard_normal((b, O) if last_step else (T, b, O))
    return x, y


def _labels(rng, b, last_step):
    x = rng.standard_normal((T, b, I))
    y = rng.integers(0, O, size=(b,) if last_step else (T, b))
    return x, y


def _one_hot(rng, b, last_step):
    x = np.eye(V)[rng.integers(0, V, size=(T, b))]
    y = rng.integers(0, O, size=(b,) if last_step else (T, b))
    return x, y


def _ids(rng, b, last_step):
    x = rng.integers(0, V, size=(T, b))
    y = rng.integers(0, O, size=(b,) if last_step else (T, b))
    return x, y


def _lengths(rng, b):
    lengths = rng.integers(1, T + 1, size=b)
    lengths[0] = T
    return lengths


def _batch(name, rng, b):
    _, fit_kw, data, with_lengths = CASES[name]
    x, y = DATA[data](rng, b, fit_kw.get("last_step", False))
    return (x, y, _lengths(rng, b)) if with_lengths else (x, y)


# name: (model keywords, fit keywords, data: a key of DATA, with lengths)
CASES = {
    "tanh": (dict(cell="tanh", num_layers=2), dict(loss="mse", clip_norm=0.5), "floats", False),
    "relu": (dict(cell="relu"), dict(loss="mse"), "floats", False),
    "lstm": (dict(cell="lstm"), dict(loss="cross_entropy", last_step=True), "labels", False),
    "gru_bidirectional": (dict(cell="gru", bidirectional=True), dict(loss="mse", clip_norm=1.0),
                          "floats", False),
    "lengths_gru": (dict(cell="gru"), dict(loss="cross_entropy", clip_norm=0.3), "labels", True),
    "lengths_last_step_lstm": (dict(cell="lstm", num_layers=2), dict(loss="mse", last_step=True),
                               "floats", True),
    "clipping": (dict(cell="tanh"), dict(loss="mse", clip_norm=0.2, clip_value=0.05, clip_step=0.1),
                 "floats", False),
    "bptt": (dict(cell="lstm"), dict(loss="mse", bptt=(3, 5), clip_norm=1.0), "floats", False),
    "bptt_last_step": (dict(cell="tanh"), dict(loss="mse", bptt=(2, 4), last_step=True), "floats", False),
    "carry_state_one_hot": (dict(cell="gru", input_size=V), dict(loss="cross_entropy", carry_state=True,
                                                             bptt=(4, 4)), "one_hot", False),
    # the overlapped reduction's segments: readout, layer 1's two directions, layer 0's,
    # and (embedding) a part backward leaves to the end
    **{f"deep_bidirectional_{cell}": (dict(cell=cell, num_layers=2, bidirectional=True),
                                      dict(loss="mse", clip_norm=1.0), "floats", False)
       for cell in ("tanh", "relu", "lstm", "gru")},
    "deep_bidirectional_embedding_lstm": (dict(cell="lstm", input_size=V, embedding_size=3, num_layers=2,
                                               bidirectional=True), dict(loss="cross_entropy"), "ids", True),
}
DATA = {"floats": _floats, "labels": _labels, "one_hot": _one_hot, "ids": _ids}

# the cases whose reduction overlap on and off must give the same bits
OVERLAP_CASES = [name for name in CASES if name.startswith("deep_bidirectional_")]


def model(name):
    model_kw, _, _, _ = CASES[name]
    kw = dict(input_size=I, hidden_size=H, output_size=O, dtype="float64", seed=7)
    kw.update(model_kw)
    return fb.RNN(kw.pop("input_size"), kw.pop("hidden_size"), **kw)


def global_batches(name, seed=0):
    """The STEPS global batches of case ``name``: (x, target) or (x, target, lengths)."""
    rng = np.random.default_rng(seed)
    return [_batch(name, rng, B) for _ in range(STEPS)]


def eval_data(name, seed=1):
    """The held-out set of case ``name``, EVAL_B sequences (whole on every rank)."""
    return _batch(name, np.random.default_rng(seed), EVAL_B)


def train(name, batches, comm=None):
    """Fit case ``name``'s model on ``batches``; returns (params, history)."""
    _, fit_kw, _, _ = CASES[name]
    net = model(name)
    optimizer = fb.optim.Adam(net.params, lr=0.05)
    history = fb.train.fit(net, batches, steps=STEPS, optimizer=optimizer, progress=False,
                           eval_data=eval_data(name), eval_every=2, comm=comm, **fit_kw)
    return {k: v.copy() for k, v in net.params.items()}, history


# --------------------------------------------------------------------------- reduce.py

REDUCE_BATCH = (3, 0, 5, 2)  # B_r of rank r; rank 1 holds no sequence


def reduce_model(rank):
    """Rank ``rank``'s model in reduce.py: the same configuration, another seed."""
    return fb.RNN(3, 4, cell="gru", output_size=2, dtype="float64", seed=10 + rank)


def reduce_gradient(rank):
    """Rank ``rank``'s gradient in reduce.py, one flat float64 buffer in param_shapes order;
    the rank with no sequences has a NaN in it, which must not reach the result."""
    size = sum(int(np.prod(s)) for s in reduce_model(0).param_shapes().values())
    buffer = np.random.default_rng(100 + rank).standard_normal(size)
    if REDUCE_BATCH[rank] == 0:
        buffer[0] = np.nan
    return buffer
