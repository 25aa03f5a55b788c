"""The fused update: optimizer steps, clipping and losses over flat buffers.

The fused path (parameters and gradients each tiling one flat buffer) against the per-array
path (the same values in separate arrays) over 100 updates, every optimizer, with and
without clipping; the compiled kernels against their NumPy twins; both against
torch.optim where it is installed; and the layout detection itself.
"""
import math

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import _reference, optim

# The char-RNN's parameter shapes (I = O = 65, H = 100, tanh), in param_shapes() order.
CHAR_RNN = {"weight_ih_l0": (100, 65), "weight_hh_l0": (100, 100), "bias_ih_l0": (100,),
            "bias_hh_l0": (100,), "weight_out": (65, 100), "bias_out": (65,)}
SMALL = {"weight_ih_l0": (12, 3), "weight_hh_l0": (12, 4), "bias_ih_l0": (12,), "bias_hh_l0": (12,),
         "weight_out": (2, 4), "bias_out": (2,)}


def flat_dict(values, dtype):
    """(flat, {name: view}): copies of ``values`` laid end to end in one new 1-D buffer."""
    flat = np.empty(sum(v.size for v in values.values()), dtype=dtype)
    views, offset = {}, 0
    for name, v in values.items():
        views[name] = flat[offset:offset + v.size].reshape(v.shape)
        views[name][...] = v
        offset += v.size
    return flat, views


def separate(values, dtype):
    """Copies of ``values``, each its own array."""
    return {name: np.array(v, dtype=dtype) for name, v in values.items()}


def random_values(rng, shapes, scale=1.0):
    return {name: rng.standard_normal(s) * scale for name, s in shapes.items()}


CONFIGS = [
    pytest.param(optim.SGD, dict(lr=0.05), id="sgd"),
    pytest.param(optim.SGD, dict(lr=0.02, momentum=0.9), id="sgd-momentum"),
    pytest.param(optim.SGD, dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.01), id="sgd-nesterov-decay"),
    pytest.param(optim.Adagrad, dict(lr=0.05), id="adagrad"),
    pytest.param(optim.Adam, dict(lr=0.01), id="adam"),
    pytest.param(optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05), id="adam-decay"),
    pytest.param(optim.AdamW, dict(lr=0.01, weight_decay=0.05), id="adamw"),
]


# --------------------------------------------------------------------------- layout detection


def test_the_fused_path_is_taken_for_flat_buffers_only(rng):
    values = random_values(rng, SMALL)
    flat, params = flat_dict(values, np.float32)
    opt = optim.Adam(params)
    assert opt._fused_params() is flat
    g_flat, grads = flat_dict(random_values(rng, SMALL), np.float32)
    assert opt._fused_grads(grads, flat) is g_flat
    # gradients as separate arrays, in another order, or the parameters' own buffer: per array
    assert opt._fused_grads(separate(grads, np.float32), flat) is None
    assert opt._fused_grads(dict(reversed(list(grads.items()))), flat) is None
    assert opt._fused_grads(params, flat) is None
    # parameters as separate arrays, or with a gap, or of mixed dtypes: per array
    assert optim.Adam(separate(values, np.float32))._fused_params() is None
    gap = np.zeros(flat.size + 1, np.float32)
    with_gap = {"a": gap[:3], "b": gap[4:]}
    assert optim.Adam(with_gap)._fused_params() is None
    assert optim.Adam({"a": gap[:3], "b": gap[3:]})._fused_params() is gap
    # inside a larger buffer (an aligned allocation, an arena): the span they fill
    inner = optim.Adam({"a": gap[2:5], "b": gap[5:9]})._fused_params()
    assert inner.size == 7 and np.shares_memory(inner, gap[2:9]) and not np.shares_memory(inner, gap[9:])
    # gradients in the same arena as the parameters, not overlapping them: fused
    arena = np.zeros(20, np.float32)
    opt_arena = optim.SGD({"a": arena[:3], "b": arena[3:8]}, lr=0.1)
    flat_arena = opt_arena._fused_params()
    assert opt_arena._fused_grads({"a": arena[8:11], "b": arena[11:16]}, flat_arena) is not None
    assert opt_arena._fused_grads({"a": arena[5:8], "b": arena[8:13]}, flat_arena) is None
    mixed = dict(params, bias_out=np.zeros(2))
    assert optim.Adam(mixed)._fused_params() is None


def test_rebinding_a_parameter_leaves_the_fused_path_and_stays_right(rng, assert_close):
    values = random_values(rng, SMALL)
    flat, params = flat_dict(values, np.float64)
    twin = separate(values, np.float64)
    opt, ref = optim.Adam(params, lr=0.01), optim.Adam(twin, lr=0.01)
    grads = [flat_dict(random_values(rng, SMALL), np.float64)[1] for _ in range(4)]
    opt.step(grads[0])
    ref.step(grads[0])
    assert opt._fused_params() is flat
    params["bias_out"] = params["bias_out"].copy()       # no longer a view of flat
    assert opt._fused_params() is None
    for g in grads[1:]:
        opt.step(g)
        ref.step(g)
    for name in params:
        assert_close(params[name], twin[name], np.float64, name, kind="split")


def test_the_layout_check_of_the_parameters_is_cached(rng):
    flat, params = flat_dict(random_values(rng, SMALL), np.float32)
    opt = optim.SGD(params, lr=0.1)
    opt.step(flat_dict(random_values(rng, SMALL), np.float32)[1])
    checked = opt._checked_params
    opt.step(flat_dict(random_values(rng, SMALL), np.float32)[1])
    assert opt._checked_params is checked      # the same arrays: not checked again


def test_flat_span_of_both_backends(backend):
    module = fb._backend.resolve(backend)[1]
    base = np.zeros(10)
    views = [base[:4].reshape(2, 2), base[4:]]
    assert module.flat_span(views, base, ((2, 2), (6,))) == (0, 10)
    assert module.flat_span(views, base, None) == (0, 10)
    assert module.flat_span(views[:1], base, None) == (0, 4)            # a part of base
    assert module.flat_span([base[2:5], base[5:9]], base, None) == (2, 9)
    assert module.flat_span(views, base, ((4,), (6,))) is None          # another shape
    assert module.flat_span(views[::-1], base, None) is None            # another order
    assert module.flat_span([base[:4], base[5:]], base, None) is None   # a gap
    assert module.flat_span([base[:4], base[4:].astype(np.float32)], base, None) is None
    assert module.flat_span([base[:4], [0.0] * 6], base, None) is None
    assert module.flat_span(views, np.zeros(10), None) is None          # outside base
    frozen = base.copy()
    frozen.flags.writeable = False
    assert module.flat_span([frozen], frozen, None) is None
    assert module.flat_span([base[::2], base[1::2]], base, None) is None  # strided


# --------------------------------------------------------------------------- fused = per array


def _run(cls, kw, params, grad_stream, dtype, clip):
    """Steps of ``cls`` over ``params`` with gradients from ``grad_stream`` laid out flat;
    clip: None, "in-step" (step(clip_norm=1)) or "first" (clip_grad_norm, then step).
    Returns the optimizer and the norms."""
    opt = cls(params, **kw)
    norms = []
    for values in grad_stream:
        grads = flat_dict(values, dtype)[1]
        if clip == "first":
            norms.append(fb.clip_grad_norm(separate(grads, dtype), 1.0))
            grads = separate(grads, dtype)
            fb.clip_grad_norm(grads, 1.0)
            opt.step(grads)
        elif clip == "in-step":
            norms.append(opt.step(grads, clip_norm=1.0))
        else:
            assert opt.step(grads) is None
    return opt, norms


@pytest.mark.parametrize("clip", [None, "in-step", "first"], ids=["no-clip", "clip-in-step", "clip-first"])
@pytest.mark.parametrize("cls, kw", CONFIGS)
def test_100_fused_updates_equal_the_per_array_path(cls, kw, clip, dtype, rng, assert_close, tol):
    """Fused: flat parameters, flat gradients, the clip folded into the step (or not).
    Per array: the same values in separate arrays, clipped in the step or by clip_grad_norm."""
    values = random_values(rng, SMALL)
    # gradient norms around the clip, so that some steps are clipped and some are not
    stream = [random_values(rng, SMALL, scale=rng.uniform(0.05, 0.6)) for _ in range(100)]
    flat, fused_params = flat_dict(values, dtype)
    loose = separate(values, dtype)
    fused, fused_norms = _run(cls, kw, fused_params, stream, dtype, None if clip is None else "in-step")
    per_array, loose_norms = _run(cls, kw, loose, stream, dtype, clip)
    assert fused._fused_params() is flat and per_array._fused_params() is None
    if clip is not None:
        assert 0 < sum(n > 1.0 for n in fused_norms) < len(fused_norms)
        np.testing.assert_allclose(fused_norms, loose_norms, **tol(dtype, "split"))
    assert fused.step_count == per_array.step_count == 100
    moved = False
    for name in loose:
        assert_close(fused_params[name], loose[name], dtype, name, kind="split")
        moved |= not np.allclose(fused_params[name], values[name], **tol(dtype, "effect"))
        for slot, a in fused.state[name].items():
            assert_close(a, per_array.state[name][slot], dtype, f"{slot}/{name}", kind="split")
    assert moved


@pytest.mark.parametrize("cls, kw", CONFIGS)
def test_step_with_scale_equals_the_step_on_scaled_gradients(cls, kw, rng, assert_close):
    values = random_values(rng, SMALL)
    stream = [random_values(rng, SMALL) for _ in range(5)]
    _, scaled = flat_dict(values, np.float64)
    _, plain = flat_dict(values, np.float64)
    a, b = cls(scaled, **kw), cls(plain, **kw)
    for g in stream:
        grads = flat_dict(g, np.float64)[1]
        before = {k: v.copy() for k, v in grads.items()}
        a.step(grads, scale=0.3)
        for k in grads:
            np.testing.assert_array_equal(grads[k], before[k], err_msg=f"grads[{k!r}] was modified")
        b.step(flat_dict({k: v * 0.3 for k, v in g.items()}, np.float64)[1])
    for name in scaled:
        assert_close(scaled[name], plain[name], np.float64, name, kind="split")


def test_step_returns_the_norm_and_leaves_the_gradients_alone(rng, math_tol):
    _, params = flat_dict(random_values(rng, SMALL), np.float64)
    g_flat, grads = flat_dict(random_values(rng, SMALL, scale=3.0), np.float64)
    before = g_flat.copy()
    norm = optim.Adam(params).step(grads, clip_norm=1.0)
    assert norm == pytest.approx(float(np.linalg.norm(before)), rel=math_tol(np.float64)["rtol"])
    np.testing.assert_array_equal(g_flat, before)


def test_a_non_finite_norm_scales_nothing(rng):
    """As clip_grad_norm: the norm comes back inf and the step is the unclipped one."""
    values = random_values(rng, SMALL)
    g = random_values(rng, SMALL)
    g["bias_out"][0] = np.inf
    _, a = flat_dict(values, np.float64)
    _, b = flat_dict(values, np.float64)
    assert optim.SGD(a, lr=0.1).step(flat_dict(g, np.float64)[1], clip_norm=1.0) == math.inf
    optim.SGD(b, lr=0.1).step(flat_dict(g, np.float64)[1])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("kw, error, match", [
    (dict(scale=0.0), ValueError, "scale"),
    (dict(scale=-1.0), ValueError, "scale"),
    (dict(scale="1"), TypeError, "scale"),
    (dict(clip_norm=0.0), ValueError, "clip_norm"),
    (dict(clip_norm=np.nan), ValueError, "clip_norm"),
    (dict(clip_norm=True), TypeError, "clip_norm"),
    (dict(scale=0.5, clip_norm=1.0), ValueError, "not both"),
])
def test_bad_scale_or_clip_norm(kw, error, match, rng):
    values = random_values(rng, SMALL)
    _, params = flat_dict(values, np.float64)
    opt = optim.Adam(params)
    with pytest.raises(error, match=match):
        opt.step(flat_dict(random_values(rng, SMALL), np.float64)[1], **kw)
    assert opt.step_count == 0
    for name in params:
        np.testing.assert_array_equal(params[name], values[name])


def test_the_optimizer_state_is_one_flat_buffer_per_slot(rng):
    _, params = flat_dict(random_values(rng, SMALL), np.float32)
    opt = optim.Adam(params)
    for slot in ("m", "v"):
        flat = opt._flat_state[slot]
        assert flat.dtype == np.float32 and flat.size == sum(math.prod(s) for s in SMALL.values())
        assert all(opt.state[name][slot].base is flat for name in SMALL)


@pytest.mark.skipif(not hasattr(fb.RNN(2, 3), "flat_params"), reason="the model has no flat_params yet")
@pytest.mark.parametrize("cls, kw", CONFIGS)
def test_model_params_take_the_fused_path(cls, kw, backend):
    model = fb.RNN(3, 5, output_size=2, seed=0, backend=backend)
    opt = cls(model.params, **kw)
    assert opt._fused_params() is not None
    rng = np.random.default_rng(0)
    out, _ = model.forward(rng.standard_normal((4, 2, 3)).astype(np.float32))
    g = model.backward(rng.standard_normal(out.shape).astype(np.float32))
    assert opt._fused_grads(g.params, opt._fused_params()) is not None


# --------------------------------------------------------------------------- compiled = NumPy twin


STEP_CALLS = {
    "sgd": lambda k, p, g, s: k.sgd_step(p, g, None, 0.1, 0.0, False, 0.0, 0.7),
    "sgd-momentum": lambda k, p, g, s: k.sgd_step(p, g, s[0], 0.1, 0.9, False, 0.01, 0.7),
    "sgd-nesterov": lambda k, p, g, s: k.sgd_step(p, g, s[0], 0.1, 0.9, True, 0.01, 1.0),
    "adagrad": lambda k, p, g, s: k.adagrad_step(p, g, s[0], 0.1, 1e-8, 0.7),
    "adam": lambda k, p, g, s: k.adam_step(p, g, s[0], s[1], 0.01, 0.9, 0.999, 1e-8, 0.0, False, 3, 0.7),
    "adam-decay": lambda k, p, g, s: k.adam_step(p, g, s[0], s[1], 0.01, 0.8, 0.99, 1e-6, 0.1, False, 1, 1.0),
    "adamw": lambda k, p, g, s: k.adam_step(p, g, s[0], s[1], 0.01, 0.9, 0.999, 1e-8, 0.1, True, 7, 0.7),
}


# 40_001: past UPDATE_PARALLEL_MIN (_update.pxi), where the blocks are shared among threads
@pytest.mark.parametrize("n", [1, 7, 511, 512, 513, 2000, 40_001])
@pytest.mark.parametrize("which", list(STEP_CALLS))
def test_compiled_steps_equal_their_numpy_twins(which, n, dtype, rng, compiled_kernels, assert_close):
    call = STEP_CALLS[which]
    p = rng.standard_normal(n).astype(dtype)
    slots = [np.abs(rng.standard_normal(n)).astype(dtype) for _ in range(2)]
    ours = [p.copy(), *(s.copy() for s in slots)]
    for _ in range(3):
        g = rng.standard_normal(n).astype(dtype)
        call(_reference, p, g, slots)
        call(compiled_kernels, ours[0], g, ours[1:])
    assert_close(ours[0], p, dtype, "p", kind="split")
    for i, s in enumerate(slots):
        assert_close(ours[1 + i], s, dtype, f"slot {i}", kind="split")


@pytest.mark.parametrize("which", list(STEP_CALLS))
def test_a_compiled_step_gives_the_same_bits_on_any_thread_count(which, dtype, rng, compiled_kernels,
                                                                 restore_threads):
    """Past UPDATE_PARALLEL_MIN the steps share their blocks among the team: the same bits
    on 1, 2 and 3 threads, the last block a partial one."""
    n = 3 * 16 * 1024 + 77
    call = STEP_CALLS[which]
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    slots = [np.abs(rng.standard_normal(n)).astype(dtype) for _ in range(2)]
    runs = []
    for threads in (1, 2, 3):
        fb.set_num_threads(threads)
        ours = [p.copy(), *(s.copy() for s in slots)]
        for _ in range(2):
            call(compiled_kernels, ours[0], g, ours[1:])
        runs.append(ours)
    assert np.any(runs[0][0] != p)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [1, 31, 32, 33, 1000])
def test_compiled_clipping_equals_its_numpy_twin(n, dtype, rng, compiled_kernels, math_tol, assert_close):
    a = (rng.standard_normal(n) * 3).astype(dtype)
    assert compiled_kernels.sum_squares(a) == pytest.approx(_reference.sum_squares(a), rel=math_tol(dtype)["rtol"])
    b, c = a.copy(), a.copy()
    compiled_kernels.scale_inplace(b, 0.3)
    _reference.scale_inplace(c, 0.3)
    np.testing.assert_array_equal(b, c)
    a[0] = np.nan
    b, c = a.copy(), a.copy()
    compiled_kernels.clip_values(b, 1.5)
    _reference.clip_values(c, 1.5)
    np.testing.assert_array_equal(b, c)


def test_compiled_expf_is_within_float32_rounding(compiled_kernels, math_tol):
    x = -np.linspace(0, 87, 200_001).astype(np.float32)
    assert_rel = math_tol(np.float32)["rtol"]
    np.testing.assert_allclose(compiled_kernels.fast_expf(x), np.exp(x.astype(np.float64)), rtol=assert_rel, atol=0)


@pytest.mark.parametrize("scored", ["all", "some"])
def test_compiled_losses_equal_their_numpy_twins(scored, dtype, rng, compiled_kernels, assert_close_to_math,
                                                 math_tol):
    N, C = 40, 7
    logits = (rng.standard_normal((N, C)) * 4).astype(dtype)
    rows = None if scored == "all" else np.sort(rng.choice(N, 15, replace=False)).astype(np.int64)
    M = N if rows is None else rows.size
    labels = rng.integers(0, C, M).astype(np.int64)
    target = rng.standard_normal((M, C)).astype(dtype)
    for func, second in (("softmax_cross_entropy", labels), ("squared_error", target)):
        results = []
        for k in (_reference, compiled_kernels):
            d = np.zeros((N, C), dtype)
            results.append((getattr(k, func)(logits, second, rows, d, 0.25), d))
        (want, want_d), (got, got_d) = results
        t = math_tol(dtype)
        assert np.atleast_1d(got)[0] == pytest.approx(np.atleast_1d(want)[0], rel=t["rtol"], abs=t["atol"])
        assert_close_to_math(got_d, want_d, dtype, f"{func} d_out")
    labels[3] = C
    for k in (_reference, compiled_kernels):
        assert k.softmax_cross_entropy(logits, labels, rows, np.zeros((N, C), dtype), 0.25)[1] == 3


@pytest.mark.parametrize("scored", ["all", "rows"])
def test_a_compiled_cross_entropy_over_many_logits_gives_the_same_bits_on_any_thread_count(
        scored, dtype, rng, compiled_kernels, restore_threads, assert_close_to_math, math_tol):
    """Past LOSS_PARALLEL_MIN logits (128K) the rows are shared among the team: the same
    loss and d_out bits on 1, 2 and 3 threads, equal to the NumPy twin."""
    N, C = 67, 2011
    logits = (rng.standard_normal((N, C)) * 4).astype(dtype)
    rows = None if scored == "all" else np.sort(rng.choice(N, 61, replace=False)).astype(np.int64)
    labels = rng.integers(0, C, N if rows is None else rows.size).astype(np.int64)
    runs = []
    for threads in (1, 2, 3):
        fb.set_num_threads(threads)
        d = np.zeros((N, C), dtype)
        runs.append((compiled_kernels.softmax_cross_entropy(logits, labels, rows, d, 0.25), d))
    for (loss, d), (loss0, d0) in zip(runs[1:], runs[:1] * 2):
        assert loss == loss0
        np.testing.assert_array_equal(d, d0)
    want_d = np.zeros((N, C), dtype)
    want, _ = _reference.softmax_cross_entropy(logits, labels, rows, want_d, 0.25)
    assert runs[0][0][0] == pytest.approx(want, rel=math_tol(dtype)["rtol"])
    assert runs[0][0][1] == -1
    assert_close_to_math(runs[0][1], want_d, dtype, "d_out")


@pytest.mark.parametrize("n", [2 * 256 * 1024 - 1, 2 * 256 * 1024, 5 * 256 * 1024 + 17])
def test_scans_of_a_large_buffer_shared_among_threads_give_the_same_answer_on_any_thread_count(
        n, dtype, rng, compiled_kernels, restore_threads):
    """From 512K elements on, sum_squares and all_finite share blocks of 256K among the team:
    the sum has the same bits on 1, 2 and 3 threads (block sums added in order) and equals
    the exact sum to float64 rounding; a NaN or infinity in any block, the last partial one
    included, is found."""
    a = (rng.standard_normal(n) * 3).astype(dtype)
    exact = math.fsum(float(v) * float(v) for v in a)
    sums, found = [], []
    bad_at = [0, 256 * 1024 - 1, 256 * 1024, n // 2, n - 1]
    for threads in (1, 2, 3):
        fb.set_num_threads(threads)
        sums.append(compiled_kernels.sum_squares(a))
        assert compiled_kernels.all_finite(a) is True
        for pos, bad in zip(bad_at, [np.nan, np.inf, -np.inf, np.nan, np.inf]):
            b = a.copy()
            b[pos] = bad
            found.append(compiled_kernels.all_finite(b) is False)
    assert sums[1] == sums[0] and sums[2] == sums[0]
    assert sums[0] == pytest.approx(exact, rel=1e-12)
    assert all(found), found


# --------------------------------------------------------------------------- clipping over g.flat


@pytest.mark.parametrize("as_what", ["dict", "flat"])
def test_clip_grad_norm_over_a_flat_buffer_equals_per_array(as_what, dtype, rng, assert_close, tol):
    values = random_values(rng, CHAR_RNN, scale=0.1)
    flat, views = flat_dict(values, dtype)
    loose = separate(values, dtype)
    total = fb.clip_grad_norm(views if as_what == "dict" else flat, 1.0)
    assert total == pytest.approx(fb.clip_grad_norm(loose, 1.0), rel=tol(np.float64, "split")["rtol"])
    assert total > 1.0
    for name in loose:
        assert_close(views[name], loose[name], dtype, name, kind="split")


def test_clip_grad_value_over_a_flat_buffer_equals_per_array(dtype, rng):
    values = random_values(rng, CHAR_RNN)
    _, views = flat_dict(values, dtype)
    loose = separate(values, dtype)
    fb.clip_grad_value(views, 0.5)
    fb.clip_grad_value(loose, 0.5)
    for name in loose:
        np.testing.assert_array_equal(views[name], loose[name], err_msg=name)


# --------------------------------------------------------------------------- torch.optim


def _torch_optimizer(torch, cls, kw, tensors):
    if cls is optim.SGD:
        return torch.optim.SGD(tensors, **kw)
    if cls is optim.Adagrad:
        # eps placement differs (inside the root here, outside in torch): negligible at 1e-300
        return torch.optim.Adagrad(tensors, lr=kw["lr"], eps=kw["eps"])
    if cls is optim.Adam:
        return torch.optim.Adam(tensors, **kw)
    return torch.optim.AdamW(tensors, **kw)


TORCH_CONFIGS = [
    pytest.param(optim.SGD, dict(lr=0.05, momentum=0.9), id="sgd-momentum"),
    pytest.param(optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True), id="sgd-nesterov"),
    pytest.param(optim.SGD, dict(lr=0.05, momentum=0.5, weight_decay=0.1), id="sgd-decay"),
    pytest.param(optim.Adagrad, dict(lr=0.05, eps=1e-300), id="adagrad"),
    pytest.param(optim.Adam, dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05), id="adam"),
    pytest.param(optim.AdamW, dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05), id="adamw"),
]


@pytest.mark.parametrize("clip", [False, True], ids=["no-clip", "clip"])
@pytest.mark.parametrize("cls, kw", TORCH_CONFIGS)
def test_fused_steps_equal_torch_optim(cls, kw, clip, rng, assert_close, tol):
    torch = pytest.importorskip("torch")
    values = random_values(rng, SMALL)
    flat, params = flat_dict(values, np.float64)
    opt = cls(params, **kw)
    assert opt._fused_params() is flat
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values.values()]
    reference = _torch_optimizer(torch, cls, kw, tensors)
    for _ in range(30):
        g = random_values(rng, SMALL, scale=rng.uniform(0.1, 0.6))
        norm = opt.step(flat_dict(g, np.float64)[1], clip_norm=1.0 if clip else None)
        for t, v in zip(tensors, g.values()):
            t.grad = torch.tensor(v, dtype=torch.float64)
        if clip:
            # clip_grad_norm_'s own norm, but not its scale: it divides by norm + 1e-6 where
            # fastbptt (as Keras, optax) divides by the norm itself
            torch_norm = float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(t.grad) for t in tensors])))
            assert norm == pytest.approx(torch_norm, rel=tol(np.float64, "torch")["rtol"])
            for t in tensors:
                t.grad.mul_(min(1.0, 1.0 / torch_norm))
        reference.step()
    for (name, p), t in zip(params.items(), tensors):
        assert_close(p, t.detach().numpy(), np.float64, name, kind="torch")


# --------------------------------------------------------------------------- the twins' interface

UPDATE_FUNCTIONS = ["flat_span", "sum_squares", "scale_inplace", "clip_values", "sgd_step", "adagrad_step",
                    "adam_step", "fast_expf", "softmax_cross_entropy", "squared_error"]


@pytest.mark.parametrize("name", UPDATE_FUNCTIONS)
def test_compiled_and_numpy_twins_take_the_same_arguments(name, compiled_kernels):
    import inspect
    assert name in _reference.__all__
    ours, theirs = getattr(compiled_kernels, name), getattr(_reference, name)
    assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)


@pytest.mark.parametrize("cls, kw", CONFIGS)
def test_a_compiled_fused_step_allocates_no_arrays(cls, kw, compiled_backend):
    """The peak of new memory during fused steps stays far below the buffer's size (numpy
    reports its allocations to tracemalloc): no parameter-sized temporary is made."""
    import tracemalloc
    rng = np.random.default_rng(0)
    shapes = {"big": (400, 300), "small": (300,)}
    _, params = flat_dict(random_values(rng, shapes), np.float64)
    g_flat, grads = flat_dict(random_values(rng, shapes), np.float64)
    opt = cls(params, **kw)
    opt.step(grads, clip_norm=1.0)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(3):
            opt.step(grads, clip_norm=1.0)
        fb.clip_grad_norm(grads, 1.0)
        fb.clip_grad_value(grads, 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < g_flat.nbytes // 100, f"fused steps allocated {peak - base} bytes"


def test_parameters_rebound_to_another_dtype_are_caught(rng):
    """A flat buffer of float64 views in place of the float32 ones the state was built for."""
    values = random_values(rng, SMALL)
    _, params = flat_dict(values, np.float32)
    opt = optim.Adam(params)
    _, wider = flat_dict(values, np.float64)
    params.update(wider)
    assert opt._fused_params() is None
    with pytest.raises(ValueError, match="weight_ih_l0.*float32"):
        opt.step(flat_dict(random_values(rng, SMALL), np.float64)[1])
