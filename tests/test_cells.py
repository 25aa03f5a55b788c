"""The cell table (``fastbptt._cells``) and the layer functions it stands on: the NumPy oracle
and every compiled build expose the same functions with the same parameters, and every cell's
adapters give one return shape, with two bias gradients that are never one array."""
import inspect

import _support
import numpy as np
import pytest
from _support import ALL_CELLS, BUILDS, COMPILED_BUILDS

import fastbptt as fb
from fastbptt import _cells, _reference


def _parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("level", COMPILED_BUILDS)
def test_oracle_and_every_build_expose_the_same_layer_functions(level):
    """Every function of the oracle's ``__all__`` exists in the build with the same parameter
    names, kinds and defaults, and the build has no layer function the oracle lacks."""
    kernels = BUILDS[level]
    for name in _reference.__all__:
        assert hasattr(kernels, name), f"the {level} build has no {name}"
        assert _parameters(getattr(kernels, name)) == _parameters(getattr(_reference, name)), name
    layer_functions = {name for name in dir(kernels)
                       if name.endswith(("_forward", "_backward")) and not name.startswith("_")}
    assert layer_functions <= set(_reference.__all__), layer_functions - set(_reference.__all__)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_every_cell_names_kernels_both_backends_have(cell):
    for name in _cells.CELLS[cell].kernels:
        assert name in _reference.__all__, name
        for level, kernels in BUILDS.items():
            assert hasattr(kernels, name), f"{level}: {name}"


def test_the_table_covers_the_models_cells():
    assert fb.model.CELLS == tuple(_cells.CELLS)
    for name, cell in _cells.CELLS.items():
        assert cell.name == name
        assert cell.gates >= 1 and cell.state_count == len(cell.states) >= 1
        assert cell.states[0] == "h"  # the output is the first state


def test_unknown_cell_is_a_value_error_listing_the_cells():
    with pytest.raises(ValueError, match=r"cell must be one of \('tanh', 'relu', 'lstm', 'gru'\), got 'elman'"):
        _cells.get("elman")
    with pytest.raises(ValueError, match="got None"):
        _cells.get(None)
    assert _cells.get("gru") is _cells.CELLS["gru"]


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_adapters_return_one_shape_for_every_cell(backend, cell, rng):
    """Forward: a tuple whose first state_count entries are the state sequences (T+1, B, H)
    from state0. Backward: LayerGradients with one (B, H) array per state and two separate
    bias gradients (a kernel that computes one for both gives two copies)."""
    kernels = fb._backend.resolve(backend)[1]
    spec = _cells.CELLS[cell]
    T, B, I, H = 4, 3, 2, 5
    a = _support.layer_arrays(rng, cell, T, B, I, H)
    cache = _support.layer_forward(kernels, cell, a)
    assert isinstance(cache, tuple)
    for i, s in enumerate(_support.state0(cell, a)):
        assert cache[i].shape == (T + 1, B, H)
        np.testing.assert_array_equal(cache[i][0], s)
    g = spec.backward(kernels, a["d_out"], _support.d_state_n(cell, a), a["x"], cache, a["w_ih"],
                      a["w_hh"], None, None, None)
    assert isinstance(g, _cells.LayerGradients)
    assert g.dx.shape == (T, B, I)
    assert len(g.d_state0) == spec.state_count and all(d.shape == (B, H) for d in g.d_state0)
    G = spec.gates
    assert g.dw_ih.shape == (G * H, I) and g.dw_hh.shape == (G * H, H)
    assert g.db_ih.shape == g.db_hh.shape == (G * H,)
    assert not np.shares_memory(g.db_ih, g.db_hh)
    # Writing one bias gradient (as clipping does, in place) leaves the other alone.
    before = g.db_hh.copy()
    g.db_ih[...] = 0
    np.testing.assert_array_equal(g.db_hh, before)


def _out_arrays(spec, I, H, dtype, fill=np.nan):
    """Arrays for a backward's ``out`` (dw_ih, dw_hh, db_ih, db_hh), filled with ``fill`` so
    that an element the kernels leave unwritten shows."""
    G = spec.gates * H
    return tuple(np.full(shape, fill, dtype) for shape in ((G, I), (G, H), (G,), (G,)))


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inputs", ["floats", "ids", "lengths"])
def test_a_backward_writes_its_weight_gradients_into_out(backend, cell, dtype, inputs, rng):
    """With ``out`` given, the layer's weight gradients are those arrays, written whole, with
    the same bits as the backward without it; dx and the state gradients are unchanged.
    The model hands its flat buffer's views so (one segment), saving the copy into it."""
    kernels = fb._backend.resolve(backend)[1]
    spec = _cells.CELLS[cell]
    T, B, I, H = 5, 3, 4, 6
    a = _support.layer_arrays(rng, cell, T, B, I, H, dtype)
    sizes = None
    if inputs == "ids":
        a["x"] = rng.integers(0, I, (T, B)).astype(np.intp)
    elif inputs == "lengths":
        sizes = np.array([3, 3, 2, 1, 1], dtype=np.intp)
    cache = spec.forward(kernels, a["x"], _support.state0(cell, a), a["w_ih"], a["w_hh"],
                         a["b_ih"], a["b_hh"], sizes)

    def run(out):
        return spec.backward(kernels, a["d_out"], _support.d_state_n(cell, a), a["x"], cache,
                             a["w_ih"], a["w_hh"], None, None, sizes, True, out)

    want = run(None)
    out = _out_arrays(spec, I, H, dtype)
    got = run(out)
    for name, array, given in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), got[2:], out):
        assert array is given, name
    for name, g, w in zip(_cells.LayerGradients._fields, got, want):
        if name == "d_state0":
            for gs, ws in zip(g, w):
                np.testing.assert_array_equal(gs, ws)
        elif g is None or w is None:
            assert g is None and w is None, name
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.mark.parametrize("backend", fb.available_backends())
def test_linear_backward_writes_dw_and_db_into_out(backend, rng):
    kernels = fb._backend.resolve(backend)[1]
    dy, x, w = rng.standard_normal((7, 3)), rng.standard_normal((7, 5)), rng.standard_normal((3, 5))
    want = kernels.linear_backward(dy, x, w)
    out = (np.full((3, 5), np.nan), np.full(3, np.nan))
    got = kernels.linear_backward(dy, x, w, out)
    assert got[1] is out[0] and got[2] is out[1]
    for g, e in zip(got, want):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("level", COMPILED_BUILDS)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_a_compiled_backward_refuses_an_out_of_the_wrong_shape_or_dtype(level, cell, rng):
    kernels = BUILDS[level]
    spec = _cells.CELLS[cell]
    T, B, I, H = 3, 2, 4, 5
    a = _support.layer_arrays(rng, cell, T, B, I, H)
    cache = _support.layer_forward(kernels, cell, a)
    good = _out_arrays(spec, I, H, np.float64)
    for bad in (good[:1] + (np.zeros((1, 1)),) + good[2:],
                tuple(o.astype(np.float32) for o in good)):
        with pytest.raises(ValueError, match="out must hold arrays of shapes"):
            spec.backward(kernels, a["d_out"], None, a["x"], cache, a["w_ih"], a["w_hh"], None,
                          None, None, True, bad)
    with pytest.raises(ValueError, match="out must hold arrays of shapes"):
        kernels.linear_backward(np.ones((2, 3)), np.ones((2, 4)), np.ones((3, 4)),
                                (np.zeros((4, 3)), np.zeros(3)))
