"""Bad input gets a clear TypeError/ValueError naming the argument; good input in unusual
layouts (strided, read-only) is accepted; the caller's arrays are never modified.
"""
import re

import numpy as np
import pytest

import fastbptt as fb

T, B, I, H, L, O = 5, 3, 4, 6, 2, 2


def _model(backend, dtype=np.float32, output_size=None, num_layers=L):
    return fb.RNN(I, H, num_layers=num_layers, output_size=output_size, dtype=np.dtype(dtype).name,
                  seed=0, backend=backend)


def _data(dtype=np.float32, out_size=H, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, (L, B, H)).astype(dtype)
    d_out = rng.standard_normal((T, B, out_size)).astype(dtype)
    d_h_n = rng.standard_normal((L, B, H)).astype(dtype)
    return x, h0, d_out, d_h_n


def _with(a, index, value):
    a = a.copy()
    a[index] = value
    return a


# --------------------------------------------------------------------------- forward inputs

X_GOOD = _data()[0]

BAD_X = [
    ("2-d", X_GOOD[0], ValueError, r"\bx\b.*shape.*\(3, 4\)"),
    ("4-d", X_GOOD[None], ValueError, r"\bx\b.*shape"),
    ("features", np.zeros((T, B, I + 1), np.float32), ValueError, r"\bx\b.*shape.*4\).*\(5, 3, 5\)"),
    ("float64", X_GOOD.astype(np.float64), TypeError, r"\bx\b.*dtype float32.*float64"),
    ("int", np.ones((T, B, I), np.int64), TypeError, r"\bx\b.*dtype float32.*int64"),
    ("float16", X_GOOD.astype(np.float16), TypeError, r"\bx\b.*dtype float32"),
    ("big-endian", X_GOOD.astype(">f4"), TypeError, r"\bx\b.*dtype float32"),
    ("list", X_GOOD.tolist(), TypeError, r"\bx\b.*numpy.ndarray.*list"),
    ("scalar", 1.0, TypeError, r"\bx\b.*numpy.ndarray"),
    ("none", None, TypeError, r"\bx\b.*numpy.ndarray"),
    ("nan-first", _with(X_GOOD, (0, 0, 0), np.nan), ValueError, r"\bx\b.*(NaN|finite)"),
    ("nan-last", _with(X_GOOD, (-1, -1, -1), np.nan), ValueError, r"\bx\b.*(NaN|finite)"),
    ("inf", _with(X_GOOD, (2, 1, 3), np.inf), ValueError, r"\bx\b.*(NaN|finite)"),
    ("-inf", _with(X_GOOD, (4, 0, 1), -np.inf), ValueError, r"\bx\b.*(NaN|finite)"),
    ("empty-T", np.zeros((0, B, I), np.float32), ValueError, r"\bx\b.*empty"),
    ("empty-B", np.zeros((T, 0, I), np.float32), ValueError, r"\bx\b.*empty"),
]


@pytest.mark.parametrize("case,x,error,match", BAD_X, ids=[c[0] for c in BAD_X])
def test_bad_x(backend, case, x, error, match):
    with pytest.raises(error, match=match):
        _model(backend).forward(x)


def test_float32_into_a_float64_model(backend):
    with pytest.raises(TypeError, match=r"\bx\b.*dtype float64.*float32"):
        _model(backend, np.float64).forward(X_GOOD)


H0_GOOD = _data()[1]

BAD_H0 = [
    ("layers", np.zeros((L + 1, B, H), np.float32), ValueError, r"\bh0\b.*shape.*\(2, 3, 6\).*\(3, 3, 6\)"),
    ("batch", np.zeros((L, B + 1, H), np.float32), ValueError, r"\bh0\b.*shape.*\(2, 3, 6\)"),
    ("hidden", np.zeros((L, B, H - 1), np.float32), ValueError, r"\bh0\b.*shape.*\(2, 3, 6\)"),
    ("2-d", np.zeros((B, H), np.float32), ValueError, r"\bh0\b.*shape.*\(2, 3, 6\).*\(3, 6\)"),
    ("float64", H0_GOOD.astype(np.float64), TypeError, r"\bh0\b.*dtype float32"),
    ("list", H0_GOOD.tolist(), TypeError, r"\bh0\b.*numpy.ndarray"),
    ("nan", _with(H0_GOOD, (1, 2, 5), np.nan), ValueError, r"\bh0\b.*(NaN|finite)"),
    ("inf", _with(H0_GOOD, (0, 0, 0), np.inf), ValueError, r"\bh0\b.*(NaN|finite)"),
    ("-inf", _with(H0_GOOD, (1, 0, 3), -np.inf), ValueError, r"\bh0\b.*(NaN|finite)"),
]


@pytest.mark.parametrize("case,h0,error,match", BAD_H0, ids=[c[0] for c in BAD_H0])
def test_bad_h0(backend, case, h0, error, match):
    with pytest.raises(error, match=match):
        _model(backend).forward(X_GOOD, h0)


# --------------------------------------------------------------------------- backward inputs


def test_backward_before_forward_raises(backend):
    with pytest.raises(RuntimeError, match=r"backward.*before.*forward"):
        _model(backend).backward(np.zeros((T, B, H), np.float32))


D_GOOD = _data()[2]
DHN_GOOD = _data()[3]

BAD_D_OUT = [
    ("time", np.zeros((T + 1, B, H), np.float32), ValueError, r"\bd_out\b.*shape.*\(5, 3, 6\).*\(6, 3, 6\)"),
    ("batch", np.zeros((T, B - 1, H), np.float32), ValueError, r"\bd_out\b.*shape.*\(5, 3, 6\)"),
    ("features", np.zeros((T, B, O), np.float32), ValueError, r"\bd_out\b.*shape.*\(5, 3, 6\).*\(5, 3, 2\)"),
    ("2-d", np.zeros((T * B, H), np.float32), ValueError, r"\bd_out\b.*shape.*\(5, 3, 6\)"),
    ("float64", D_GOOD.astype(np.float64), TypeError, r"\bd_out\b.*dtype float32"),
    ("int", np.zeros((T, B, H), np.int32), TypeError, r"\bd_out\b.*dtype float32"),
    ("list", D_GOOD.tolist(), TypeError, r"\bd_out\b.*numpy.ndarray"),
    ("nan", _with(D_GOOD, (3, 1, 2), np.nan), ValueError, r"\bd_out\b.*(NaN|finite)"),
    ("inf", _with(D_GOOD, (0, 2, 5), np.inf), ValueError, r"\bd_out\b.*(NaN|finite)"),
    ("-inf", _with(D_GOOD, (4, 2, 5), -np.inf), ValueError, r"\bd_out\b.*(NaN|finite)"),
]


@pytest.mark.parametrize("case,d_out,error,match", BAD_D_OUT, ids=[c[0] for c in BAD_D_OUT])
def test_bad_d_out(backend, case, d_out, error, match):
    model = _model(backend)
    model.forward(X_GOOD)
    with pytest.raises(error, match=match):
        model.backward(d_out)


def test_d_out_of_a_readout_model_has_the_output_size(backend):
    model = _model(backend, output_size=O)
    model.forward(X_GOOD)
    with pytest.raises(ValueError, match=r"\bd_out\b.*shape.*\(5, 3, 2\).*\(5, 3, 6\)"):
        model.backward(D_GOOD)


BAD_D_H_N = [
    ("layers", np.zeros((1, B, H), np.float32), ValueError, r"\bd_h_n\b.*shape.*\(2, 3, 6\).*\(1, 3, 6\)"),
    ("batch", np.zeros((L, B + 2, H), np.float32), ValueError, r"\bd_h_n\b.*shape.*\(2, 3, 6\)"),
    ("float64", DHN_GOOD.astype(np.float64), TypeError, r"\bd_h_n\b.*dtype float32"),
    ("list", DHN_GOOD.tolist(), TypeError, r"\bd_h_n\b.*numpy.ndarray"),
    ("nan", _with(DHN_GOOD, (1, 1, 1), np.nan), ValueError, r"\bd_h_n\b.*(NaN|finite)"),
    ("inf", _with(DHN_GOOD, (0, 2, 0), np.inf), ValueError, r"\bd_h_n\b.*(NaN|finite)"),
    ("-inf", _with(DHN_GOOD, (1, 0, 5), -np.inf), ValueError, r"\bd_h_n\b.*(NaN|finite)"),
]


@pytest.mark.parametrize("case,d_h_n,error,match", BAD_D_H_N, ids=[c[0] for c in BAD_D_H_N])
def test_bad_d_h_n(backend, case, d_h_n, error, match):
    model = _model(backend)
    model.forward(X_GOOD)
    with pytest.raises(error, match=match):
        model.backward(D_GOOD, d_h_n)


BAD_CLIP = [
    (0, ValueError), (0.0, ValueError), (-1.0, ValueError), (-np.inf, ValueError),
    (np.nan, ValueError), (np.inf, ValueError), ("1.0", TypeError), (True, TypeError),
    ([1.0], TypeError), (np.float32(np.nan), ValueError),
]


@pytest.mark.parametrize("clip_step,error", BAD_CLIP, ids=[repr(c[0]) for c in BAD_CLIP])
def test_bad_clip_step(backend, clip_step, error):
    model = _model(backend)
    model.forward(X_GOOD)
    with pytest.raises(error, match=r"\bclip_step\b.*positive"):
        model.backward(D_GOOD, clip_step=clip_step)


@pytest.mark.parametrize("clip_step", [1, 0.5, np.float32(0.5), np.int64(2), 1e-30])
def test_good_clip_step_values_are_accepted(backend, clip_step):
    model = _model(backend)
    model.forward(X_GOOD)
    g = model.backward(D_GOOD, clip_step=clip_step)
    assert np.isfinite(g.x).all()


# --------------------------------------------------------------------------- the model's parameters


def _strided(a):
    """The same values in a non-contiguous view."""
    big = np.zeros(a.shape + (2,), a.dtype)
    big[..., 0] = a
    return big[..., 0]


# Assigning into model.params copies into the one buffer: a wrong array is refused at once,
# naming its key, and nothing changes.
BAD_ASSIGNMENTS = [
    ("shape", lambda p: p.update(weight_hh_l0=np.zeros((H, H + 1), np.float32)), ValueError,
     r"weight_hh_l0.*shape.*\(6, 6\).*\(6, 7\)"),
    ("transposed-ih", lambda p: p.update(weight_ih_l0=np.zeros((I, H), np.float32)), ValueError,
     r"weight_ih_l0.*shape.*\(6, 4\)"),
    ("bias-2d", lambda p: p.update(bias_ih_l1=np.zeros((1, H), np.float32)), ValueError,
     r"bias_ih_l1.*shape.*\(6,?\).*\(1, 6\)"),
    ("dtype", lambda p: p.update(weight_ih_l1=p["weight_ih_l1"].astype(np.float64)), TypeError,
     r"weight_ih_l1.*dtype float32.*float64"),
    ("int", lambda p: p.__setitem__("bias_hh_l0", np.zeros(H, np.int32)), TypeError,
     r"bias_hh_l0.*dtype float32"),
    ("list", lambda p: p.__setitem__("bias_hh_l1", [0.0] * H), TypeError,
     r"bias_hh_l1.*numpy.ndarray"),
    ("one-good-one-bad", lambda p: p.update(bias_hh_l1=np.zeros(H, np.float32),
                                            bias_hh_l0=np.zeros(H + 1, np.float32)), ValueError,
     r"bias_hh_l0.*shape"),
    ("pop", lambda p: p.pop("bias_hh_l1"), TypeError, r"model.params has fixed keys"),
    ("del", lambda p: p.__delitem__("bias_hh_l1"), TypeError, r"model.params has fixed keys"),
    ("clear", lambda p: p.clear(), TypeError, r"model.params has fixed keys"),
    ("extra", lambda p: p.update(weight_out=np.zeros((1, H), np.float32)), ValueError,
     r"no array 'weight_out' \(unexpected key\)"),
]


@pytest.mark.parametrize("case,corrupt,error,match", BAD_ASSIGNMENTS, ids=[c[0] for c in BAD_ASSIGNMENTS])
def test_bad_assignment_into_params_is_refused_and_changes_nothing(backend, case, corrupt, error, match):
    model, twin = _model(backend), _model(backend)
    before = model.flat_params.copy()
    with pytest.raises(error, match=match):
        corrupt(model.params)
    np.testing.assert_array_equal(model.flat_params, before)
    assert list(model.params) == list(twin.params)
    for name, view in model.params.items():
        assert view.base is model.flat_params, name
    out, _ = model.forward(X_GOOD)
    np.testing.assert_array_equal(out, twin.forward(X_GOOD)[0])


# Values written in place are checked by forward, once over the whole buffer.
BAD_VALUES = [
    ("nan", lambda p: p["weight_hh_l1"].__setitem__((2, 3), np.nan), r"weight_hh_l1.*(NaN|finite)"),
    ("inf", lambda p: p["bias_hh_l0"].__setitem__(5, -np.inf), r"bias_hh_l0.*(NaN|finite)"),
    ("flat", lambda p: p.flat.__setitem__(-1, np.nan), r"bias_hh_l1.*(NaN|finite)"),  # the last
]


@pytest.mark.parametrize("case,corrupt,match", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_non_finite_parameter_is_rejected_not_crashed_on(backend, case, corrupt, match):
    model = _model(backend)
    corrupt(model.params)
    with pytest.raises(ValueError, match=match):
        model.forward(X_GOOD)


@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_assigning_a_strided_array_copies_its_values_into_the_buffer(backend, layout):
    model, twin = _model(backend), _model(backend)
    view = model.params["weight_hh_l1"]
    new = np.asarray(np.random.default_rng(1).uniform(-0.3, 0.3, view.shape), np.float32)
    given = np.asfortranarray(new) if layout == "fortran" else _strided(new)
    model.params["weight_hh_l1"] = given
    assert model.params["weight_hh_l1"] is view and view.base is model.flat_params
    np.testing.assert_array_equal(view, new)
    given[0, 0] = 7  # a copy: the caller's array stays the caller's
    assert view[0, 0] == new[0, 0]
    twin.params["weight_hh_l1"][...] = new
    np.testing.assert_array_equal(model.forward(X_GOOD)[0], twin.forward(X_GOOD)[0])


def test_params_must_stay_a_dict(backend):
    model = _model(backend)
    with pytest.raises(TypeError, match=r"model.params must be a dict of arrays, got list"):
        model.params = list(model.params.values())
    model.forward(X_GOOD)


def test_assigning_model_params_copies_a_whole_dict_in(backend):
    model, other = _model(backend), fb.RNN(I, H, num_layers=L, seed=5, backend=backend)
    params = model.params
    model.params = other.state_dict()
    assert model.params is params
    np.testing.assert_array_equal(model.flat_params, other.flat_params)
    with pytest.raises(ValueError, match=r"model.params keys do not match the model: missing \['bias_hh_l1'\]"):
        model.params = {k: v for k, v in other.state_dict().items() if k != "bias_hh_l1"}


def test_a_failed_call_leaves_the_model_usable(backend):
    model, twin = _model(backend), _model(backend)
    x, h0, d_out, d_h_n = _data()
    with pytest.raises(ValueError):
        model.forward(_with(x, (1, 1, 1), np.nan), h0)
    model.forward(x, h0)
    with pytest.raises(ValueError):
        model.backward(d_out, _with(d_h_n, (0, 0, 0), np.inf))
    g = model.backward(d_out, d_h_n)
    twin.forward(x, h0)
    expected = twin.backward(d_out, d_h_n)
    for name in expected.params:
        np.testing.assert_array_equal(g.params[name], expected.params[name])
    np.testing.assert_array_equal(g.x, expected.x)


# --------------------------------------------------------------------------- the constructor


BAD_CONSTRUCTOR = [
    (dict(cell="lstmx"), ValueError, r"\bcell\b"),
    (dict(cell="Tanh"), ValueError, r"\bcell\b"),
    (dict(cell=None), ValueError, r"\bcell\b"),
    (dict(init="xavier"), ValueError, r"\binit\b"),
    (dict(init=None), ValueError, r"\binit\b"),
    (dict(dtype="float16"), TypeError, r"\bdtype\b.*float32.*float64"),
    (dict(dtype="int32"), TypeError, r"\bdtype\b.*float32.*float64"),
    (dict(dtype=np.complex128), TypeError, r"\bdtype\b.*float32.*float64"),
    (dict(dtype="double precision"), TypeError, r"\bdtype\b.*float32.*float64"),
    (dict(dtype="foo"), TypeError, r"\bdtype\b.*float32.*float64"),
    (dict(dtype=None), TypeError, r"\bdtype\b.*float32.*float64"),
    (dict(input_size=0), ValueError, r"\binput_size\b"),
    (dict(input_size=-2), ValueError, r"\binput_size\b"),
    (dict(input_size=2.0), TypeError, r"\binput_size\b.*int"),
    (dict(input_size="2"), TypeError, r"\binput_size\b.*int"),
    (dict(hidden_size=0), ValueError, r"\bhidden_size\b"),
    (dict(hidden_size=3.5), TypeError, r"\bhidden_size\b.*int"),
    (dict(hidden_size=True), TypeError, r"\bhidden_size\b.*int"),
    (dict(num_layers=0), ValueError, r"\bnum_layers\b"),
    (dict(num_layers=1.0), TypeError, r"\bnum_layers\b.*int"),
    (dict(output_size=0), ValueError, r"\boutput_size\b"),
    (dict(output_size=-1), ValueError, r"\boutput_size\b"),
    (dict(output_size=2.0), TypeError, r"\boutput_size\b.*int"),
    (dict(seed=1.5), TypeError, r"\bseed\b.*int"),
    (dict(seed="1"), TypeError, r"\bseed\b.*int"),
    (dict(seed=True), TypeError, r"\bseed\b.*int"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(bidirectional="no"), TypeError, r"\bbidirectional\b.*bool"),
    (dict(backend="gpu"), ValueError, r"\bbackend\b"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_CONSTRUCTOR,
                         ids=["-".join(f"{k}={v!r}" for k, v in c[0].items()) for c in BAD_CONSTRUCTOR])
def test_bad_constructor_arguments(kwargs, error, match):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fb.RNN(args.pop("input_size"), args.pop("hidden_size"), **args)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32, np.float64, np.dtype("float32")])
def test_dtype_spellings_are_accepted(dtype):
    assert fb.RNN(2, 3, dtype=dtype).dtype == np.dtype(dtype)


# --------------------------------------------------------------------------- unusual layouts and copies


def _layouts(a):
    """Views of ``a``'s values that are not plain C-contiguous writable arrays."""
    fortran = np.asfortranarray(a)
    reversed_ = np.ascontiguousarray(a[::-1])[::-1]
    strided = _strided(a)
    readonly = a.copy()
    readonly.flags.writeable = False
    return {"fortran": fortran, "negative-strides": reversed_, "strided": strided, "read-only": readonly}


@pytest.mark.parametrize("layout", ["fortran", "negative-strides", "strided", "read-only"])
@pytest.mark.parametrize("output_size", [None, O], ids=["no_readout", "readout"])
def test_unusual_layouts_are_accepted_and_give_the_same_result(backend, dtype, layout, output_size):
    out_size = output_size or H
    x, h0, d_out, d_h_n = _data(dtype, out_size)
    model = _model(backend, dtype, output_size)
    out, h_n = model.forward(x, h0)
    expected = model.backward(d_out, d_h_n, clip_step=0.7)
    views = [_layouts(a)[layout] for a in (x, h0, d_out, d_h_n)]
    for v, a in zip(views, (x, h0, d_out, d_h_n)):
        np.testing.assert_array_equal(v, a)
        assert layout == "read-only" or not v.flags.c_contiguous
    out2, h_n2 = model.forward(views[0], views[1])
    got = model.backward(views[2], views[3], clip_step=0.7)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(h_n2, h_n)
    for name in expected.params:
        np.testing.assert_array_equal(got.params[name], expected.params[name], err_msg=name)
    np.testing.assert_array_equal(got.x, expected.x)
    np.testing.assert_array_equal(got.h0, expected.h0)


@pytest.mark.parametrize("num_layers,output_size", [(1, None), (2, None), (2, O)])
def test_callers_arrays_are_never_modified(backend, dtype, num_layers, output_size):
    out_size = output_size or H
    model = _model(backend, dtype, output_size, num_layers)
    rng = np.random.default_rng(num_layers)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, (num_layers, B, H)).astype(dtype)
    d_out = rng.standard_normal((T, B, out_size)).astype(dtype)
    d_h_n = rng.standard_normal((num_layers, B, H)).astype(dtype)
    arrays = dict(x=x, h0=h0, d_out=d_out, d_h_n=d_h_n)
    copies = {k: v.copy() for k, v in arrays.items()}
    params = model.state_dict()
    model.forward(x, h0)
    model.backward(d_out, d_h_n, clip_step=0.3, step_norms=True)
    model.backward(d_out, d_h_n)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], copies[k], err_msg=k)
    for k in params:  # nor are the parameters, by forward and backward
        np.testing.assert_array_equal(model.params[k], params[k], err_msg=k)


def test_error_messages_name_the_expected_dtype_conversion(backend):
    with pytest.raises(TypeError, match=re.escape(".astype(np.float32)")):
        _model(backend).forward(X_GOOD.astype(np.float64))


# --------------------------------------------------------------------------- state_dict, state_at


@pytest.mark.parametrize("value", [[("weight_ih_l0", np.zeros((4, 3)))], "weights", None])
def test_load_state_dict_needs_a_mapping(value):
    model = fb.RNN(3, 4, seed=0)
    with pytest.raises(TypeError, match=r"state_dict must be a dict of arrays"):
        model.load_state_dict(value)


def test_params_and_state_dict_key_errors_are_worded_alike():
    model = fb.RNN(3, 4, seed=0)
    sd = model.state_dict()
    del sd["bias_hh_l0"]
    with pytest.raises(ValueError, match=r"^state_dict keys do not match the model: missing \['bias_hh_l0'\], unexpected \[\]$"):
        model.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"^model.params keys do not match the model: missing \['bias_hh_l0'\], unexpected \[\]$"):
        model.params = sd


def test_state_at_checks_its_step_and_the_cache():
    model = fb.RNN(3, 4, seed=0, dtype="float64")
    with pytest.raises(RuntimeError, match="no full, unidirectional, unpacked forward cache"):
        model.state_at(0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out, h_n = model.forward(x)
    np.testing.assert_array_equal(model.state_at(5), h_n)
    np.testing.assert_array_equal(model.state_at(0), np.zeros_like(h_n))
    np.testing.assert_array_equal(model.state_at(2)[0], out[1])
    for t in (-1, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"t must be an int in \[0, 5\]"):
            model.state_at(t)
    model.forward(x, checkpoint=2)
    with pytest.raises(RuntimeError, match="no full"):
        model.state_at(1)
