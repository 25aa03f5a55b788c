"""The update around the kernels: optimizer steps, clipping and the loss, fused against per array.

On the parameter sets of the char-RNN (I = O = 65, H = 100; tanh and LSTM) and of the medium
LSTM (I = 256, H = 512, O = 10), the same step runs twice per group:

* ``fused``: the parameters and the gradients each the consecutive views of one flat buffer
  (``model.flat_params`` / ``g.flat``), so the step is one compiled pass over the buffers;
* ``per-array``: the same values in separate arrays, one NumPy update per parameter.

``adam+clip`` is ``step(grads, clip_norm=1.0)``, the global-norm clip folded into the step
(per array: the same call, which clips array by array). The cross-entropy groups put the
compiled loss beside its NumPy twin at the char-RNN's (25, 1, 65).

    python -m pytest benchmarks/test_bench_update.py -p no:cacheprovider \\
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group

Timings are reported, never asserted.
"""
import numpy as np
import pytest

import fastbptt as fb
from fastbptt import _backend, _reference, losses

MODELS = {
    "charrnn-tanh": dict(input_size=65, hidden_size=100, cell="tanh", output_size=65),
    "charrnn-lstm": dict(input_size=65, hidden_size=100, cell="lstm", output_size=65),
    "medium-lstm": dict(input_size=256, hidden_size=512, cell="lstm", output_size=10),
}
LAYOUTS = ["fused", "per-array"]
STEPS = {
    "adam": (fb.optim.Adam, dict(lr=1e-3), {}),
    "adam+clip": (fb.optim.Adam, dict(lr=1e-3), dict(clip_norm=1.0)),
    "sgd-momentum": (fb.optim.SGD, dict(lr=1e-2, momentum=0.9), {}),
}


def _arrays(shapes, layout, rng, scale):
    """{name: array} of random float32 values, views of one buffer (fused) or separate."""
    values = {name: (rng.standard_normal(s) * scale).astype(np.float32) for name, s in shapes.items()}
    if layout == "per-array":
        return values
    flat = np.empty(sum(v.size for v in values.values()), np.float32)
    views, offset = {}, 0
    for name, v in values.items():
        views[name] = flat[offset:offset + v.size].reshape(v.shape)
        views[name][...] = v
        offset += v.size
    return views


def _shapes(model_name):
    return fb.RNN(**MODELS[model_name], seed=0).param_shapes()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("step_name", list(STEPS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_optimizer_step(benchmark, model_name, step_name, layout):
    rng = np.random.default_rng(0)
    shapes = _shapes(model_name)
    cls, kw, step_kw = STEPS[step_name]
    opt = cls(_arrays(shapes, layout, rng, 0.1), **kw)
    grads = _arrays(shapes, layout, rng, 0.01)
    assert (opt._fused_params() is not None) == (layout == "fused")
    benchmark.group = f"update-{model_name}-{step_name}"
    benchmark.extra_info.update(parameters=sum(int(np.prod(s)) for s in shapes.values()))
    benchmark(opt.step, grads, **step_kw)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_clip_grad_norm(benchmark, model_name, layout):
    rng = np.random.default_rng(0)
    grads = _arrays(_shapes(model_name), layout, rng, 0.01)
    benchmark.group = f"update-{model_name}-clip_grad_norm"
    # max_norm far above the norm: the norm pass alone, as in most steps of a healthy run
    benchmark(fb.clip_grad_norm, grads, 1e6)


@pytest.mark.parametrize("impl", ["compiled", "numpy"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_loss_charrnn(benchmark, loss, impl, monkeypatch):
    if impl == "compiled" and _backend._compiled is None:
        pytest.skip("the compiled kernels are not available")
    if impl == "numpy":
        monkeypatch.setattr(losses, "_kernels", lambda: _reference)
    rng = np.random.default_rng(0)
    out = rng.standard_normal((25, 1, 65)).astype(np.float32)
    target = rng.integers(0, 65, (25, 1)) if loss == "cross_entropy" else rng.standard_normal(out.shape)
    if loss == "mse":
        target = target.astype(np.float32)
    benchmark.group = f"loss-charrnn-{loss}"
    benchmark(getattr(losses, loss), out, target)
