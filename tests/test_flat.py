"""The flat buffers: model.params are views into model.flat_params, g.params into g.flat, in
param_shapes() order; what writing into them, assigning them and copying the model do; the
gradients stay those of the parameters forward ran with; backward(input_grad=False)."""
import copy
import io
import pickle

import numpy as np
import pytest

import fastbptt as fb
from fastbptt.train import fit

CONFIGS = [dict(cell="tanh", num_layers=2, output_size=3),
           dict(cell="lstm", bidirectional=True),
           dict(cell="gru", num_layers=2, bidirectional=True, output_size=2)]
IDS = ["tanh-2-readout", "lstm-bidir", "gru-2-bidir-readout"]


def _model(backend, dtype="float64", seed=0, **kw):
    return fb.RNN(3, 4, dtype=dtype, seed=seed, backend=backend, **kw)


def _tiles(arrays, flat, shapes):
    """The arrays, in order, are views of ``flat`` of the given shapes, end to end."""
    offset = 0
    for a, shape in zip(arrays, shapes):
        assert a.base is flat and a.shape == shape and a.flags.c_contiguous
        assert np.shares_memory(a, flat[offset:offset + a.size])
        assert a.__array_interface__["data"][0] == flat[offset:].__array_interface__["data"][0]
        offset += a.size
    assert offset == flat.size


@pytest.mark.parametrize("kw", CONFIGS, ids=IDS)
def test_params_and_gradients_tile_one_buffer_each_in_param_shapes_order(backend, kw):
    model = _model(backend, **kw)
    shapes = model.param_shapes()
    flat = model.flat_params
    assert flat.ndim == 1 and flat.flags.c_contiguous and flat.dtype == model.dtype
    assert list(model.params) == list(shapes)
    _tiles(model.params.values(), flat, shapes.values())
    out, _ = model.forward(np.random.default_rng(0).standard_normal((5, 2, 3)))
    g = model.backward(np.ones_like(out))
    assert g.flat.shape == flat.shape and g.flat.dtype == flat.dtype
    assert list(g.params) == list(shapes)
    _tiles(g.params.values(), g.flat, shapes.values())
    assert not np.shares_memory(g.flat, flat)


def test_the_buffer_holds_the_seeded_initialisation(backend):
    """The same values as before the buffer: PyTorch's uniform ±1/√H, drawn per array in
    param_shapes() order from the seed."""
    model = _model(backend, num_layers=2, output_size=2)
    rng = np.random.default_rng(0)
    for name, shape in model.param_shapes().items():
        bound = 1 / np.sqrt(4)
        np.testing.assert_array_equal(model.params[name], rng.uniform(-bound, bound, shape), err_msg=name)


def test_writing_in_place_through_either_is_seen_by_the_other_and_by_forward(backend, rng):
    model, twin = _model(backend, output_size=2), _model(backend, output_size=2, seed=1)
    x = rng.standard_normal((4, 2, 3))
    model.flat_params[:] = twin.flat_params
    for name in model.params:
        np.testing.assert_array_equal(model.params[name], twin.params[name], err_msg=name)
    np.testing.assert_array_equal(model.forward(x)[0], twin.forward(x)[0])
    model.params["bias_out"] += 1.0
    n = model.params["bias_out"].size
    np.testing.assert_array_equal(model.flat_params[-n:], twin.params["bias_out"] + 1.0)
    np.testing.assert_array_equal(model.forward(x)[0], twin.forward(x)[0] + 1.0)


def test_assigning_a_key_copies_into_its_view(backend):
    model = _model(backend)
    view = model.params["weight_hh_l0"]
    new = np.eye(4)
    model.params["weight_hh_l0"] = new
    assert model.params["weight_hh_l0"] is view and view.base is model.flat_params
    np.testing.assert_array_equal(view, new)
    new[0, 0] = 5.0  # the caller's array is not the model's
    assert view[0, 0] == 1.0
    with pytest.raises(TypeError, match=r"model.params\['weight_hh_l0'\] must have dtype float64"):
        model.params["weight_hh_l0"] = np.eye(4, dtype=np.float32)


@pytest.mark.parametrize("write", ["in place", "flat", "assign", "optimizer", "load_state_dict"])
def test_gradients_belong_to_the_parameters_forward_ran_with(backend, rng, write):
    """Whatever writes the parameters between forward and backward, backward's gradients (and
    a checkpointed backward's recomputation) are those at forward's parameters."""
    for checkpoint in (None, 2):
        model = _model(backend, num_layers=2, output_size=2)
        x = rng.standard_normal((5, 3, 3))
        out, _ = model.forward(x, checkpoint=checkpoint)
        d_out = rng.standard_normal(out.shape)
        expected = model.backward(d_out)
        model.forward(x, checkpoint=checkpoint)
        if write == "in place":
            for value in model.params.values():
                value -= 0.1
        elif write == "flat":
            model.flat_params[:] = 0.5
        elif write == "assign":
            model.params["weight_hh_l1"] = np.zeros((4, 4))
        elif write == "optimizer":
            fb.optim.SGD(model.params, lr=1.0).step(expected.params)
        else:
            model.load_state_dict(_model(backend, num_layers=2, output_size=2, seed=7).state_dict())
        if write == "load_state_dict":  # it drops the cache: nothing to backpropagate through
            with pytest.raises(RuntimeError, match="before forward"):
                model.backward(d_out)
            continue
        assert not np.array_equal(model.flat_params, _model(backend, num_layers=2, output_size=2).flat_params)
        got = model.backward(d_out)
        np.testing.assert_array_equal(got.flat, expected.flat)
        np.testing.assert_array_equal(got.x, expected.x)


def test_a_forward_refused_on_its_inputs_keeps_the_previous_cache(backend, rng):
    model = _model(backend, output_size=2)
    x = rng.standard_normal((5, 3, 3))
    out, _ = model.forward(x)
    d_out = rng.standard_normal(out.shape)
    expected = model.backward(d_out)
    model.flat_params[:] += 0.25   # a new forward would copy these into its snapshot
    for bad in (dict(x=x[..., :2]), dict(x=x, lengths=[1, 2]), dict(x=x, h0=np.zeros((2, 3, 4)))):
        with pytest.raises(ValueError):
            model.forward(**bad)
    got = model.backward(d_out)
    np.testing.assert_array_equal(got.flat, expected.flat)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_model_has_its_own_buffer_and_views(backend, how):
    model = _model(backend, cell="lstm", output_size=2)
    twin = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert not np.shares_memory(twin.flat_params, model.flat_params)
    np.testing.assert_array_equal(twin.flat_params, model.flat_params)
    _tiles(twin.params.values(), twin.flat_params, twin.param_shapes().values())
    twin.params["bias_out"][...] = 3.0
    assert twin.flat_params[-1] == 3.0 and model.flat_params[-1] != 3.0


def test_state_dict_save_and_load_are_unchanged_by_the_buffer(backend, tmp_path):
    model = _model(backend, cell="gru", num_layers=2, output_size=2, seed=4)
    sd = model.state_dict()
    assert type(sd) is dict and all(v.base is None for v in sd.values())  # copies, not views
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = fb.load(path, backend=backend)
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    _tiles(loaded.params.values(), loaded.flat_params, loaded.param_shapes().values())
    buf = io.BytesIO()
    model.save(buf)
    assert buf.getbuffer().nbytes > 0


# --------------------------------------------------------------------------- input_grad


# checkpoint is unidirectional only
RUNS = [pytest.param(kw, run, id=f"{i}-{run}") for kw, i in zip(CONFIGS, IDS)
        for run in ("full", "lengths", "checkpoint") if not (run == "checkpoint" and kw.get("bidirectional"))]


@pytest.mark.parametrize("kw, run", RUNS)
def test_input_grad_false_leaves_out_dx_and_nothing_else(backend, kw, run, rng):
    model = _model(backend, **kw)
    x = rng.standard_normal((6, 3, 3))
    args = dict(lengths=[6, 2, 4]) if run == "lengths" else dict(checkpoint=4) if run == "checkpoint" else {}
    out, _ = model.forward(x, **args)
    d_out = rng.standard_normal(out.shape)
    full = model.backward(d_out, clip_step=0.5, step_norms=True)
    lean = model.backward(d_out, clip_step=0.5, step_norms=True, input_grad=False)
    assert full.x is not None and lean.x is None
    np.testing.assert_array_equal(lean.flat, full.flat)
    for a, b in zip(lean.h0 if isinstance(lean.h0, tuple) else (lean.h0,),
                    full.h0 if isinstance(full.h0, tuple) else (full.h0,)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(lean.step_norms, full.step_norms)


@pytest.mark.parametrize("value", [0, 1, "no", None])
def test_input_grad_must_be_a_bool(value):
    model = _model("numpy")
    out, _ = model.forward(np.zeros((2, 1, 3)))
    with pytest.raises(TypeError, match="input_grad must be a bool"):
        model.backward(np.ones_like(out), input_grad=value)


def test_fit_asks_for_no_input_gradient(backend):
    model = _model(backend, output_size=2)
    calls = []
    backward = model.backward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("input_grad", True))
        return backward(*args, **kwargs)

    model.backward = spy
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 2))) for _ in range(3)]
    fit(model, batches, steps=3, optimizer=fb.optim.SGD(model.params, lr=0.01), bptt=(2, 3),
        progress=False)
    assert calls == [False] * 6


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the overflow is the point
def test_fit_names_the_parameter_whose_gradient_overflowed(backend):
    model = _model(backend, dtype="float32", output_size=2)

    def huge(out, target, last_step=False):
        return 1.0, np.full(out.shape, 3e38, np.float32)

    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((4, 2, 3)).astype(np.float32), rng.standard_normal((4, 2, 2)))
    with pytest.raises(FloatingPointError, match=r"the gradient of 'weight_\w+' is not finite at batch 0"):
        fit(model, [batch], steps=1, optimizer=fb.optim.SGD(model.params, lr=0.01), loss=huge,
            progress=False)
