"""fb.plot: each picture renders to a PNG (Agg, off screen) holding the data it was given,
and without matplotlib the error says how to install it."""
import sys

import numpy as np
import pytest

import fastbptt as fb
from fastbptt.train import History

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(seed, n=40):
    rng = np.random.default_rng(seed)
    h = History()
    h.step = list(range(0, n))
    h.loss = list(np.exp(-np.arange(n) / 10) + 0.1 * rng.random(n))
    h.grad_norm = list(1 + rng.random(n))
    h.eval_step = [9, 19, 29, 39]
    h.eval_loss = [0.5, 0.3, 0.2, 0.15]
    return h


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000   # an empty 1-axes figure is about 5 KB at this size


def test_history_png_holds_the_curves(tmp_path):
    pytest.importorskip("matplotlib", reason="fb.plot needs matplotlib (pip install fastbptt[plot])")
    runs = {"a": _history(0), "b": _history(1)}
    path = tmp_path / "history.png"
    fig = fb.plot.history(runs, path=path, baseline=0.2, title="two runs")
    _check_png(path)
    ax_loss, ax_norm = fig.axes
    assert ax_loss.get_title() == "two runs" and ax_loss.get_xlabel() == "batch"
    assert ax_loss.get_yscale() == "log" and ax_norm.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax_loss.lines}
    np.testing.assert_array_equal(lines["a"].get_ydata(), runs["a"].eval_loss)
    np.testing.assert_array_equal(lines["b"].get_xdata(), runs["b"].eval_step)
    train = [line for line in ax_loss.lines if list(line.get_ydata()) == runs["a"].loss]
    assert len(train) == 1
    np.testing.assert_array_equal(ax_norm.lines[1].get_ydata(), runs["b"].grad_norm)
    assert any(np.all(np.asarray(line.get_ydata()) == 0.2) for line in ax_loss.lines)   # the baseline
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()][:2] == ["a", "b"]


def test_history_of_fit_without_evaluation(tmp_path):
    pytest.importorskip("matplotlib", reason="fb.plot needs matplotlib (pip install fastbptt[plot])")
    model = fb.RNN(2, 4, output_size=1, seed=0)
    x, y = fb.tasks.adding_problem(5, 8, seed=0)
    h = fb.train.fit(model, iter([(x, y)] * 12), steps=12, optimizer=fb.optim.Adam(model.params),
                     last_step=True, progress=False)
    fig = fb.plot.history(h, path=tmp_path / "fit.png")
    _check_png(tmp_path / "fit.png")
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), h.loss)
    with pytest.raises(TypeError, match="History"):
        fb.plot.history([object()])
    with pytest.raises(ValueError, match="two"):
        fb.plot.history(h, axes=fig.axes[:1])


def test_gradient_flow_png_is_the_batch_mean_on_a_log_scale(tmp_path):
    pytest.importorskip("matplotlib", reason="fb.plot needs matplotlib (pip install fastbptt[plot])")
    model = fb.RNN(3, 6, num_layers=2, output_size=1, seed=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((12, 4, 3))
    out, _ = model.forward(x)
    _, d_out = fb.losses.mse(out, np.zeros((4, 1)), last_step=True)
    g = model.backward(d_out, step_norms=True)
    path = tmp_path / "flow.png"
    fig = fb.plot.gradient_flow(g.step_norms, path=path)
    _check_png(path)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "time step t"
    assert len(ax.lines) == 2                       # one per layer
    for k, line in enumerate(ax.lines):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 13))
        np.testing.assert_allclose(line.get_ydata(), g.step_norms[k].mean(axis=1), rtol=0, atol=0)
    # a dict compares models; (T,) and (T, B) arrays are accepted; a zero is kept on the axis
    flow = g.step_norms[-1].mean(axis=1)
    flow[0] = 0
    fig = fb.plot.gradient_flow({"x": flow, "y": g.step_norms[0]}, path=tmp_path / "two.png")
    _check_png(tmp_path / "two.png")
    first = fig.axes[0].lines[0].get_ydata()
    assert 0 < first[0] < flow[1:].min()
    with pytest.raises(ValueError, match="shape"):
        fb.plot.gradient_flow(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="finite"):
        fb.plot.gradient_flow(np.array([1.0, np.nan]))


def test_without_matplotlib_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install fastbptt\[plot\]"):
        fb.plot.history(_history(0))
    with pytest.raises(ImportError, match=r"pip install fastbptt\[plot\]"):
        fb.plot.gradient_flow(np.ones(3))
