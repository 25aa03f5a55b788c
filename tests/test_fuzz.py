"""A fuzz of the public API: fb.RNN(...).forward/backward, the losses, clipping.

Random configurations and shapes (B = 1, T = 1, I != H), dtypes right and wrong, strided,
Fortran-ordered and read-only arrays, lengths valid and not, NaN and infinity, bidirectional,
checkpoint, clip_step, wrong shapes. Every call either answers as the NumPy backend does (the
oracle, at the tolerances of conftest.py) or raises ValueError/TypeError whose message names
the argument at fault; the caller's arrays are never changed. Each example plants at most one
fault, so the argument the message must name is known.

Hypothesis runs derandomized and without a database: CI sees the same examples every time.
"""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastbptt as fb

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CELLS = ("tanh", "relu", "lstm", "gru")
GOOD_DTYPES = (np.float32, np.float64)
# Wrong element types for a float array: each must be refused with a TypeError.
BAD_DTYPES = (np.int64, np.int32, np.float16, np.complex128, object, bool)

MODEL_FAULTS = ("x_dtype", "x_other_float", "x_shape", "x_nan", "x_inf", "x_list",
                "h0_shape", "h0_nan", "h0_not_pair", "lengths_zero", "lengths_long",
                "lengths_shape", "lengths_float", "checkpoint_zero", "checkpoint_float",
                "clip_step_zero", "clip_step_nan", "clip_step_str", "d_out_shape", "d_out_nan",
                "d_out_dtype", "param_nan")
# The argument each fault is in: the error message must name it.
FAULT_NAMES = {"x": "x", "h0": "h0", "lengths": "lengths", "checkpoint": "checkpoint",
               "clip_step": "clip_step", "d_out": "d_out", "param": "params"}


def _fault(draw, faults):
    """"none" half of the time (valid calls, compared with the oracle), else one of ``faults``."""
    return draw(st.sampled_from(faults)) if draw(st.booleans()) else "none"


def _names(message, name):
    """Whether ``message`` mentions ``name`` as a word (so "x" is not found in "expected")."""
    return re.search(rf"(?<![\w']){re.escape(name)}(?!\w)", message) is not None


def _backends():
    return fb.available_backends()  # ('cython', 'numpy'), or ('numpy',) in FASTBPTT_PUREPYTHON mode


def _layout(a, layout, rng):
    """``a``'s values in an array of another memory layout: strided, Fortran or read-only."""
    if layout == "strided":
        big = np.zeros((a.shape[0], 2 * a.shape[1]) + a.shape[2:], dtype=a.dtype)
        big[:, ::2] = a
        return big[:, ::2]
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    return a


@st.composite
def model_cases(draw):
    cfg = dict(cell=draw(st.sampled_from(CELLS)), num_layers=draw(st.integers(1, 2)),
               bidirectional=draw(st.booleans()), output_size=draw(st.one_of(st.none(), st.integers(1, 3))),
               dtype=draw(st.sampled_from(GOOD_DTYPES)))
    I = draw(st.integers(1, 5))
    H = draw(st.integers(1, 5).filter(lambda h: h != I) if draw(st.booleans()) else st.integers(1, 5))
    T, B = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    return dict(cfg=cfg, I=I, H=H, T=T, B=B, seed=draw(st.integers(0, 2**16)),
                use_h0=draw(st.booleans()), use_lengths=draw(st.booleans()),
                checkpoint=draw(st.one_of(st.none(), st.integers(1, 6))),
                clip_step=draw(st.one_of(st.none(), st.floats(1e-3, 10.0))),
                step_norms=draw(st.booleans()), d_h_n=draw(st.booleans()),
                layout=draw(st.sampled_from(("contiguous", "strided", "fortran", "readonly"))),
                scale=draw(st.sampled_from((1.0, 1e-3, 30.0))),
                fault=_fault(draw, MODEL_FAULTS),
                bad_dtype=draw(st.sampled_from(BAD_DTYPES)))


def _inputs(case, rng):
    """The call's arguments as the case wants them, and the names of those at fault (a set:
    empty for a valid call; an error must name one of them)."""
    cfg, T, B, I, H = case["cfg"], case["T"], case["B"], case["I"], case["H"]
    dtype, fault = np.dtype(cfg["dtype"]), case["fault"]
    D, L = 2 if cfg["bidirectional"] else 1, cfg["num_layers"]
    O = cfg["output_size"] or D * H
    x = (rng.standard_normal((T, B, I)) * case["scale"]).astype(dtype)
    h0 = None
    if case["use_h0"] or fault.startswith("h0"):
        shape = (D * L, B, H)
        h0 = rng.uniform(-0.9, 0.9, shape).astype(dtype)
        if cfg["cell"] == "lstm":
            h0 = (h0, rng.uniform(-0.9, 0.9, shape).astype(dtype))
    lengths = rng.integers(1, T + 1, B) if case["use_lengths"] or fault.startswith("lengths") else None
    kw = dict(checkpoint=case["checkpoint"], clip_step=case["clip_step"])
    d_out = rng.standard_normal((T, B, O)).astype(dtype)
    d_h_n = None
    if case["d_h_n"]:
        d_h_n = rng.standard_normal((D * L, B, H)).astype(dtype)
        if cfg["cell"] == "lstm":
            d_h_n = (d_h_n, rng.standard_normal((D * L, B, H)).astype(dtype))
    other = np.float64 if dtype == np.float32 else np.float32
    where = tuple(int(rng.integers(s)) for s in x.shape)
    if fault == "x_dtype":
        x = x.astype(case["bad_dtype"])
    elif fault == "x_other_float":
        x = x.astype(other)
    elif fault == "x_shape":
        x = x[..., :-1] if I > 1 else np.concatenate([x, x], axis=2)
    elif fault in ("x_nan", "x_inf"):
        x[where] = np.nan if fault == "x_nan" else -np.inf
    elif fault == "x_list":
        x = x.tolist()
    elif fault == "h0_shape":
        h0 = tuple(h[:, :, :-1] if H > 1 else h[:1, :1] for h in h0) if isinstance(h0, tuple) \
            else np.zeros((D * L + 1, B, H), dtype)
    elif fault == "h0_nan":
        (h0[0] if isinstance(h0, tuple) else h0)[0, 0, 0] = np.nan
    elif fault == "h0_not_pair":
        h0 = h0[0] if isinstance(h0, tuple) else (h0, h0, h0)
    elif fault == "lengths_zero":
        lengths[int(rng.integers(B))] = 0
    elif fault == "lengths_long":
        lengths[int(rng.integers(B))] = T + 1
    elif fault == "lengths_shape":
        lengths = np.append(lengths, 1)
    elif fault == "lengths_float":
        lengths = lengths.astype(np.float64)
    elif fault == "checkpoint_zero":
        kw["checkpoint"] = 0
    elif fault == "checkpoint_float":
        kw["checkpoint"] = 1.5
    elif fault == "clip_step_zero":
        kw["clip_step"] = 0.0
    elif fault == "clip_step_nan":
        kw["clip_step"] = float("nan")
    elif fault == "clip_step_str":
        kw["clip_step"] = "1.0"
    elif fault == "d_out_shape":
        d_out = d_out[:, :, :-1] if O > 1 else d_out[:-1] if T > 1 else np.concatenate([d_out, d_out])
    elif fault == "d_out_nan":
        d_out[0, 0, 0] = np.inf
    elif fault == "d_out_dtype":
        d_out = d_out.astype(case["bad_dtype"])
    if isinstance(x, np.ndarray) and fault not in ("x_dtype",):
        x = _layout(x, case["layout"], rng)
    if fault != "d_out_dtype":
        d_out = _layout(d_out, case["layout"], rng)
    faulty = {FAULT_NAMES[k] for k in FAULT_NAMES if fault.startswith(k + "_")}
    if cfg["bidirectional"] and kw["checkpoint"] is not None:
        faulty.add("checkpoint")  # not supported with bidirectional: refused, naming it
    return dict(x=x, h0=h0, lengths=lengths, d_out=d_out, d_h_n=d_h_n, **kw), faulty


def _copies(args):
    """Deep copies of every array among the arguments (with their writeable flags)."""
    def copy(v):
        if isinstance(v, np.ndarray):
            return (v.copy(), v.flags.writeable, v.strides)
        if isinstance(v, tuple):
            return tuple(copy(e) for e in v)
        return v
    return {k: copy(v) for k, v in args.items()}


def _assert_unchanged(args, copies):
    def check(name, v, c):
        if isinstance(v, np.ndarray):
            value, writeable, strides = c
            assert v.flags.writeable == writeable and v.strides == strides, f"{name}'s flags changed"
            np.testing.assert_array_equal(v, value, err_msg=f"the caller's {name} was modified")
        elif isinstance(v, tuple):
            for i, (e, ce) in enumerate(zip(v, c)):
                check(f"{name}[{i}]", e, ce)
    for k, v in args.items():
        check(k, v, copies[k])


def _run(backend, case, args):
    """forward then backward on ``backend``; (result arrays by name) or the exception."""
    model = fb.RNN(case["I"], case["H"], seed=case["seed"], backend=backend, **case["cfg"])
    if case["fault"] == "param_nan":
        name = sorted(model.params)[case["seed"] % len(model.params)]
        model.params[name].flat[0] = np.nan
    try:
        out, h_n = model.forward(args["x"], args["h0"], lengths=args["lengths"], checkpoint=args["checkpoint"])
        g = model.backward(args["d_out"], args["d_h_n"], clip_step=args["clip_step"],
                           step_norms=case["step_norms"])
    except (ValueError, TypeError) as exc:
        return exc
    result = {"out": out, "g.x": g.x}
    for prefix, state in (("h_n", h_n), ("g.h0", g.h0)):
        for i, s in enumerate(state if isinstance(state, tuple) else (state,)):
            result[f"{prefix}[{i}]"] = s
    result.update({f"g.params[{k!r}]": v for k, v in g.params.items()})
    if case["step_norms"]:
        result["g.step_norms"] = g.step_norms
    return result


@settings(max_examples=300, **SETTINGS)
@given(case=model_cases())
def test_forward_backward_answer_as_the_oracle_or_refuse_naming_the_argument(case, assert_close):
    rng = np.random.default_rng(case["seed"])
    args, faulty = _inputs(case, rng)
    copies = _copies(args)
    results = {backend: _run(backend, case, args) for backend in _backends()}
    _assert_unchanged(args, copies)
    oracle = results["numpy"]
    for backend, result in results.items():
        if not faulty:
            assert not isinstance(result, Exception), f"{backend} refused a valid call: {result!r}"
        else:
            assert isinstance(result, (ValueError, TypeError)), f"{backend} accepted a bad {faulty}"
            assert any(_names(str(result), f) for f in faulty), \
                f"{backend}'s error does not name {faulty}: {result}"
    if not faulty:
        kind = "gated" if case["cfg"]["cell"] in ("lstm", "gru") else "oracle"
        dtype = np.dtype(case["cfg"]["dtype"])
        for backend, result in results.items():
            assert result.keys() == oracle.keys()
            for name, value in result.items():
                assert np.isfinite(value).all(), f"{backend}: {name} is not finite"
                assert_close(value, oracle[name], dtype, f"{backend} {name}", kind=kind)


# --------------------------------------------------------------------------- losses


@st.composite
def loss_cases(draw):
    return dict(loss=draw(st.sampled_from(("mse", "cross_entropy"))),
                T=draw(st.integers(1, 5)), B=draw(st.integers(1, 4)), O=draw(st.integers(1, 4)),
                dtype=draw(st.sampled_from(GOOD_DTYPES)), last_step=draw(st.booleans()),
                use_lengths=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
                layout=draw(st.sampled_from(("contiguous", "strided", "fortran", "readonly"))),
                fault=_fault(draw, ("out_dtype", "out_nan", "out_shape", "target_shape",
                                            "target_nan", "target_dtype", "lengths_zero",
                                            "lengths_long", "lengths_float")),
                bad_dtype=draw(st.sampled_from(BAD_DTYPES)))


def _expected_loss(case, out, target, lengths):
    """The loss and d_out by the definitions, in float64, one sequence at a time."""
    out64 = np.asarray(out, dtype=np.float64)
    T, B, O = out64.shape
    lengths = np.full(B, T) if lengths is None else lengths
    loss, d_out = 0.0, np.zeros_like(out64)
    for b in range(B):
        steps = [lengths[b] - 1] if case["last_step"] else range(lengths[b])
        for t in steps:
            y = out64[t, b]
            want = target[b] if case["last_step"] else target[t, b]
            if case["loss"] == "mse":
                loss += np.sum((y - want) ** 2) / B
                d_out[t, b] = 2 * (y - want) / B
            else:
                p = np.exp(y - y.max())
                p /= p.sum()
                loss -= np.log(p[want]) / B
                d_out[t, b] = p / B
                d_out[t, b, want] -= 1 / B
    return loss, d_out


@settings(max_examples=120, **SETTINGS)
@given(case=loss_cases())
def test_losses_answer_by_their_definition_or_refuse_naming_the_argument(case, assert_close_to_math):
    rng = np.random.default_rng(case["seed"])
    T, B, O, dtype, fault = case["T"], case["B"], case["O"], np.dtype(case["dtype"]), case["fault"]
    out = rng.standard_normal((T, B, O)).astype(dtype)
    mse = case["loss"] == "mse"
    target_shape = ((B,) if case["last_step"] else (T, B)) + ((O,) if mse else ())
    target = rng.standard_normal(target_shape).astype(dtype) if mse else rng.integers(0, O, target_shape)
    lengths = rng.integers(1, T + 1, B) if case["use_lengths"] or fault.startswith("lengths") else None
    first = "out" if mse else "logits"
    second = "target" if mse else "labels"
    if fault == "out_dtype":
        out = out.astype(case["bad_dtype"])
    elif fault == "out_nan":
        out[tuple(int(rng.integers(s)) for s in out.shape)] = np.nan
    elif fault == "out_shape":
        out = out[0]
    elif fault == "target_shape":
        target = target[..., None]
    elif fault == "target_nan":
        if mse:
            target[(0,) * target.ndim] = np.inf
        else:
            target[(0,) * target.ndim] = O  # out of range: the labels' own kind of bad value
            if lengths is not None:
                lengths[0] = T  # the planted label is inside the sequence, where it is scored
    elif fault == "target_dtype":
        # (complex targets for mse: see the regression test below)
        target = target.astype(case["bad_dtype"] if mse and case["bad_dtype"] in (object, bool)
                               else object if mse else np.float64)
    elif fault == "lengths_zero":
        lengths[0] = 0
    elif fault == "lengths_long":
        lengths[-1] = T + 1
    elif fault == "lengths_float":
        lengths = lengths.astype(np.float64)
    if fault != "out_dtype" and out.ndim == 3:
        out = _layout(out, case["layout"], rng)
    faulty = {"out": first, "target": second, "lengths": "lengths"}.get(fault.split("_")[0])
    args = dict(out=out, target=target, lengths=lengths)
    copies = _copies(args)
    fn = fb.losses.mse if mse else fb.losses.cross_entropy
    try:
        loss, d_out = fn(out, target, last_step=case["last_step"], lengths=lengths)
    except (ValueError, TypeError) as exc:
        assert faulty is not None, f"a valid call was refused: {exc!r}"
        assert _names(str(exc), faulty), f"the error does not name {faulty}: {exc}"
    else:
        assert faulty is None, f"a bad {faulty} was accepted"
        want_loss, want_d = _expected_loss(case, out, target, lengths)
        assert isinstance(loss, float)
        assert_close_to_math(np.asarray(loss, dtype=dtype), want_loss, dtype, "loss")
        assert_close_to_math(d_out, want_d, dtype, "d_out")
    _assert_unchanged(args, copies)


# --------------------------------------------------------------------------- clipping


@st.composite
def clip_cases(draw):
    return dict(n=draw(st.integers(1, 4)), dtype=draw(st.sampled_from(GOOD_DTYPES)),
                scale=draw(st.sampled_from((1e-3, 1.0, 100.0))), seed=draw(st.integers(0, 2**16)),
                max_norm=draw(st.floats(1e-3, 50.0)), by_value=draw(st.booleans()),
                as_list=draw(st.booleans()),
                fault=_fault(draw, ("nan", "readonly", "dtype", "not_array",
                                            "max_norm_zero", "max_norm_nan", "max_norm_str")),
                bad_dtype=draw(st.sampled_from(BAD_DTYPES)))


@settings(max_examples=120, **SETTINGS)
@given(case=clip_cases())
def test_clipping_answers_by_its_definition_or_refuses_and_changes_nothing(case, assert_close_to_math):
    rng = np.random.default_rng(case["seed"])
    dtype, fault = np.dtype(case["dtype"]), case["fault"]
    grads = {f"p{i}": (rng.standard_normal(tuple(rng.integers(1, 5, rng.integers(1, 3)))) * case["scale"]
                       ).astype(dtype) for i in range(case["n"])}
    limit = case["max_norm"]
    victim = f"p{case['seed'] % case['n']}"
    if fault == "nan":
        grads[victim].flat[0] = np.nan
    elif fault == "readonly":
        grads[victim].flags.writeable = False
    elif fault == "dtype":
        grads[victim] = grads[victim].astype(case["bad_dtype"])
    elif fault == "not_array":
        grads[victim] = grads[victim].tolist()
    elif fault.startswith("max_norm"):
        limit = {"max_norm_zero": 0.0, "max_norm_nan": float("nan"), "max_norm_str": "1"}[fault]
    before = {k: np.array(v, copy=True) for k, v in grads.items()}
    arg = list(grads.values()) if case["as_list"] else grads
    fn = fb.clip_grad_value if case["by_value"] else fb.clip_grad_norm
    name = {"max_norm": "value" if case["by_value"] else "max_norm"}.get(fault.rsplit("_", 1)[0], "grads")
    try:
        result = fn(arg, limit)
    except (ValueError, TypeError) as exc:
        assert fault not in ("none", "nan"), f"a valid call was refused: {exc!r}"
        assert _names(str(exc), name), f"the error does not name {name}: {exc}"
        for k, v in grads.items():
            np.testing.assert_array_equal(np.asarray(v), before[k], err_msg=f"{k} changed though refused")
        return
    assert fault in ("none", "nan"), f"a bad {name} was accepted ({fault})"
    if case["by_value"]:
        for k, v in grads.items():
            # exact: each element is kept or replaced by ±value in its own dtype (NaN stays NaN)
            assert v.dtype == dtype
            want = np.where(np.isnan(before[k]), np.nan, np.minimum(np.maximum(before[k], -limit), limit))
            np.testing.assert_array_equal(v, want.astype(dtype), err_msg=k)
        return
    norm = np.sqrt(sum(np.sum(b.astype(np.float64) ** 2) for b in before.values()))
    if fault == "nan":
        assert np.isnan(result)
        for k, v in grads.items():
            np.testing.assert_array_equal(v, before[k])  # a non-finite norm scales nothing
        return
    assert_close_to_math(np.asarray(result), norm, np.float64, "the norm before clipping")
    scale = min(1.0, limit / norm)
    for k, v in grads.items():
        assert_close_to_math(v, before[k].astype(np.float64) * scale, dtype, k)


@pytest.mark.parametrize("backend", _backends())
def test_a_one_step_one_sequence_model_with_i_not_h_matches_the_oracle(backend, assert_close):
    # the smallest shapes the fuzz may or may not reach, pinned: T = B = 1, I != H
    rng = np.random.default_rng(0)
    for cell in CELLS:
        x = rng.standard_normal((1, 1, 3))
        ref = fb.RNN(3, 2, cell=cell, dtype="float64", seed=1, backend="numpy")
        model = fb.RNN(3, 2, cell=cell, dtype="float64", seed=1, backend=backend)
        out, _ = model.forward(x)
        want, _ = ref.forward(x)
        assert_close(out, want, np.float64, f"{cell} out", kind="gated")
        d = rng.standard_normal(out.shape)
        assert_close(model.backward(d).x, ref.backward(d).x, np.float64, f"{cell} g.x", kind="gated")


def test_mse_refuses_a_complex_target_naming_it():
    out = np.zeros((2, 1, 1))
    target = np.full((2, 1, 1), 1 + 1j)
    with pytest.raises(TypeError, match="target"):
        fb.losses.mse(out, target)
