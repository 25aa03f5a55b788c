"""What the tests share besides tolerances (those live in conftest.py): one builder of random
layers, and the forward and backward of one layer of any cell through the cell table.

Test modules ``import _support`` (conftest.py puts this folder on ``sys.path``, which works in
pytest's importlib and prepend import modes alike); the builders are also fixtures.
"""
import numpy as np
import pytest

from fastbptt import _backend
from fastbptt._cells import CELLS

ALL_CELLS = list(CELLS)
GATED_CELLS = [name for name, cell in CELLS.items() if cell.gates > 1]

BUILDS = _backend.compiled_builds()
NO_BUILD = "the compiled kernels are not in use (FASTBPTT_PUREPYTHON=1, or not built)"
# Every compiled build this CPU runs, as a parameter (the backend uses only the widest).
COMPILED_BUILDS = ([pytest.param(level, id=level)
                    for level in sorted(BUILDS, key=_backend.CPU_LEVELS.index)]
                   or [pytest.param(None, id="compiled", marks=pytest.mark.skip(reason=NO_BUILD))])


def layer_arrays(rng, cell, T, B, I, H, dtype=np.float64, *, saturate=1.0):
    """Random, non-trivial inputs of one layer of ``cell``, a dict of C-contiguous arrays.

    x (T, B, I); for each state array s of the cell (h; for an LSTM h and c) its initial
    value ``s0`` (B, H) and its upstream gradient ``ds_n`` (B, H) (so: h0, dh_n, and c0,
    dc_n for an LSTM); w_ih (G·H, I), w_hh (G·H, H), b_ih, b_hh (G·H,); d_out (T, B, H).
    Nothing is zero or one: h0 in (-0.9, 0.9) (its absolute value for relu), other states
    and all gradients standard normal, weights scaled so that states neither saturate nor
    vanish over tens of steps, random biases (leaning positive for relu, so that most units
    are active). ``saturate`` scales x, to drive the gates into saturation.
    """
    spec = CELLS[cell]
    G, relu = spec.gates, cell == "relu"
    a = dict(x=rng.standard_normal((T, B, I)) * saturate)
    for i, s in enumerate(spec.states):
        initial = rng.uniform(-0.9, 0.9, (B, H)) if i == 0 else rng.standard_normal((B, H))
        a[f"{s}0"] = np.abs(initial) if relu else initial
    a.update(w_ih=rng.standard_normal((G * H, I)) / np.sqrt(I),
             w_hh=rng.standard_normal((G * H, H)) * (0.9 / np.sqrt(H)),
             b_ih=rng.standard_normal(G * H) * 0.3 + (0.2 if relu else 0.0),
             b_hh=rng.standard_normal(G * H) * 0.3,
             d_out=rng.standard_normal((T, B, H)))
    for s in spec.states:
        a[f"d{s}_n"] = rng.standard_normal((B, H))
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in a.items()}


def state0(cell, a):
    """The initial state of layer ``a`` as the cell table takes it: a tuple of (B, H)."""
    return tuple(a[f"{s}0"] for s in CELLS[cell].states)


def d_state_n(cell, a):
    """The upstream gradients of layer ``a``'s final state: a tuple of (B, H)."""
    return tuple(a[f"d{s}_n"] for s in CELLS[cell].states)


def cache_names(cell, cache):
    """Names of the entries of ``cell``'s forward cache: its state sequences (hs, cs) first,
    then whatever else the cell keeps (cache[i])."""
    states = [f"{s}s" for s in CELLS[cell].states]
    return tuple(states + [f"cache[{i}]" for i in range(len(states), len(cache))])


def backward_names(cell):
    """Names of the fields of ``cell``'s layer gradients, d_state0 spread out (dh0, dc0)."""
    return ("dx", *(f"d{s}0" for s in CELLS[cell].states), "dw_ih", "dw_hh", "db_ih", "db_hh")


def layer_forward(kernels, cell, a):
    """``cell``'s forward through ``kernels`` (a backend's module) on layer ``a``: the cache."""
    return CELLS[cell].forward(kernels, a["x"], state0(cell, a), a["w_ih"], a["w_hh"], a["b_ih"],
                               a["b_hh"], None)


def layer_backward(kernels, cell, a, cache, clip_step=None, step_norms=None, finals=True,
                   batch_sizes=None):
    """``cell``'s backward through ``kernels`` from ``cache``: a dict by :func:`backward_names`.
    finals=False passes no upstream gradient of the final state (None)."""
    g = CELLS[cell].backward(kernels, a["d_out"], d_state_n(cell, a) if finals else None, a["x"],
                             cache, a["w_ih"], a["w_hh"], clip_step, step_norms, batch_sizes)
    values = (g.dx, *g.d_state0, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh)
    return dict(zip(backward_names(cell), values))


def run_layer(kernels, cell, a, sizes=None, clip_step=0.5):
    """Forward and backward of one layer of ``cell`` through ``kernels`` on the arrays of
    :func:`layer_arrays`, with batch_sizes ``sizes`` and per-step clipping; returns (cache,
    gradients, step norms): two lists of arrays (the gradients in :func:`backward_names`
    order) and an array."""
    T, B = a["x"].shape[:2]
    norms = np.full((T, B), np.nan, dtype=a["x"].dtype)
    spec = CELLS[cell]
    cache = spec.forward(kernels, a["x"], state0(cell, a), a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                         sizes)
    grads = layer_backward(kernels, cell, a, cache, clip_step, norms, batch_sizes=sizes)
    return list(cache), list(grads.values()), norms


def assert_layer_matches_oracle(kernels, cell, a, sizes, dtype, label, assert_close, *,
                                check_norms=True):
    """One layer of ``cell`` run through ``kernels`` and through the NumPy oracle with
    :func:`run_layer`: every cache array, gradient and (``check_norms``) step norm equal at
    the oracle tolerance of ``dtype`` ("gated" for cells with gates)."""
    from fastbptt import _reference

    kind = "gated" if CELLS[cell].gates > 1 else "oracle"
    expected = run_layer(_reference, cell, a, sizes)
    actual = run_layer(kernels, cell, a, sizes)
    for what, exp, act in zip(("cache", "gradients"), expected[:2], actual[:2]):
        for i, (e, g) in enumerate(zip(exp, act)):
            assert_close(g, e, dtype, f"{label} {cell} {what}[{i}]", kind=kind)
    if check_norms:
        assert_close(actual[2], expected[2], dtype, f"{label} {cell} step norms", kind=kind)


def random_state(rng, cell, shape):
    """A random recurrent state of ``shape`` as the model takes it: an array, or for a cell
    whose state is several arrays (an LSTM's (h, c)) a tuple of them."""
    parts = tuple(rng.standard_normal(shape) for _ in CELLS[cell].states)
    return parts[0] if len(parts) == 1 else parts


def state_parts(state):
    """A model's state (an array, or a tuple of arrays) as a list of arrays."""
    return list(state) if isinstance(state, tuple) else [state]


def as_state(cell, parts):
    """A list of state arrays (or tensors) as the model (and torch) take a state of ``cell``:
    the one array, or a tuple of them."""
    parts = list(parts)
    assert len(parts) == CELLS[cell].state_count, (cell, len(parts))
    return parts[0] if len(parts) == 1 else tuple(parts)


def torch_module(torch, cell, input_size, hidden_size, **kwargs):
    """The float64 ``torch.nn`` module of ``cell`` (``_cells.Cell.torch_module``)."""
    return CELLS[cell].torch_module(torch, input_size, hidden_size, **kwargs).double()
