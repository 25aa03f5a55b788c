"""The real-data examples (examples/digits_rows.py, digits_pixels.py, sunspots.py) on reduced
budgets: their data pipelines give the layouts they promise, the models learn above chance
(digits) or beat predicting the mean (sunspots), the baselines are what they say, and the
figures render. Skipped, with the reason, without scikit-learn or statsmodels."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHANCE = 0.1   # ten balanced digit classes


def _example(name, monkeypatch):
    """Import examples/<name>.py as a module (the examples folder on sys.path, as when run)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def digits(monkeypatch):
    pytest.importorskip("sklearn", reason="the digits examples need scikit-learn (pip install fastbptt[data])")
    return _example("digits_rows", monkeypatch)


@pytest.fixture
def sunspots(monkeypatch):
    pytest.importorskip("statsmodels", reason="the sunspots example needs statsmodels (pip install fastbptt[data])")
    return _example("sunspots", monkeypatch)


def test_digits_rows_and_pixels_layouts(digits):
    from sklearn.datasets import load_digits
    images = load_digits().images / 16.0
    rows = digits.load("rows")
    pixels = digits.load("pixels")
    assert rows.x_train.shape == (8, 1297, 8) and rows.x_test.shape == (8, 500, 8)
    assert pixels.x_train.shape == (64, 1297, 1) and pixels.x_test.shape == (64, 500, 1)
    for data in (rows, pixels):
        assert data.x_train.dtype == np.float32 and data.x_train.flags.c_contiguous
        assert data.y_train.shape == (1297,) and data.y_test.shape == (500,)
        assert set(data.y_train) == set(range(10))
        assert data.x_train.min() == 0 and data.x_train.max() == 1
    np.testing.assert_array_equal(rows.y_train, pixels.y_train)
    # pixel order is row-major: sequence n's 64 pixels are its 8 rows one after the other
    np.testing.assert_array_equal(pixels.x_train[:, :, 0], rows.x_train.transpose(0, 2, 1).reshape(64, -1))
    # each training sequence is one of sklearn's images, row t at step t, and the split is
    # a partition: no image in both parts
    flat = images.reshape(len(images), -1).astype(np.float32)
    index = {row.tobytes(): i for i, row in enumerate(flat)}
    train = [index[rows.x_train[:, n].reshape(-1).tobytes()] for n in range(0, 1297, 97)]
    test = {index[rows.x_test[:, n].reshape(-1).tobytes()] for n in range(500)}
    assert not test & set(train)
    with pytest.raises(ValueError, match="layout"):
        digits.load("columns")


def test_digits_epoch_batches_cover_each_epoch_once(digits):
    x = np.arange(3 * 10 * 2, dtype=np.float32).reshape(3, 10, 2)
    y = np.arange(10)
    batches = list(digits.epoch_batches(x, y, 4, seed=0, epoch=0))
    assert len(batches) == 2 and all(bx.shape == (3, 4, 2) for bx, _ in batches)
    seen = np.concatenate([by for _, by in batches])
    assert len(set(seen)) == 8
    for bx, by in batches:
        np.testing.assert_array_equal(bx, x[:, by])
    again = [by for _, by in digits.epoch_batches(x, y, 4, seed=0, epoch=0)]
    other = [by for _, by in digits.epoch_batches(x, y, 4, seed=0, epoch=1)]
    np.testing.assert_array_equal(np.concatenate(again), seen)
    assert not np.array_equal(np.concatenate(other), seen)


def test_digits_rows_gru_learns_above_chance(digits):
    data = _subset(digits, digits.load("rows"), 640)
    _, result = digits.train_fastbptt("gru", data, seed=0, hidden=32, epochs=3)
    assert len(result.accuracy) == 3 and result.seconds > 0
    assert result.accuracy[-1] > 5 * CHANCE
    assert np.mean(result.loss[-10:]) < np.mean(result.loss[:10])


def test_digits_pixels_gru_learns_above_chance(digits):
    data = digits.load("pixels")
    _, result = digits.train_fastbptt("gru", data, seed=0, hidden=16, epochs=2, lr=1e-2)
    assert result.accuracy[-1] > 2 * CHANCE


def test_digits_recipe_cosine_lr_and_irnn_input_weights(digits):
    lrs = [digits.epoch_lr(1e-2, e, 20) for e in range(20)]
    assert lrs[0] == 1e-2 and all(a > b > 0 for a, b in zip(lrs, lrs[1:]))
    assert digits.epoch_lr(1e-2, 10, 20) == pytest.approx(5e-3)
    assert digits.irnn_input_std(8) == pytest.approx(8 ** -0.5)


def test_digits_rows_irnn_learns_above_chance(digits):
    data = _subset(digits, digits.load("rows"), 640)
    model, result = digits.train_fastbptt("irnn", data, seed=0, hidden=32, epochs=3)
    assert result.accuracy[-1] > 3 * CHANCE
    # an IRNN still: the weights moved from W_hh = I and zero biases, not from another init
    assert np.abs(model.params["weight_hh_l0"] - np.eye(32)).max() < 0.5


def test_digits_irnn_starts_as_the_recipe_says(digits):
    # lr 1e-12: after one short epoch the weights are their initial values to 1e-9
    data = _subset(digits, digits.load("rows"), 64)
    model, _ = digits.train_fastbptt("irnn", data, seed=0, hidden=256, epochs=1, lr=1e-12)
    weight = np.asarray(model.params["weight_ih_l0"], dtype=np.float64)
    assert abs(weight.std() - 8 ** -0.5) < 0.03 and abs(weight.mean()) < 0.03   # 2048 draws
    np.testing.assert_allclose(model.params["weight_hh_l0"], np.eye(256), atol=1e-9)
    for name in ("bias_ih_l0", "bias_hh_l0"):
        np.testing.assert_allclose(model.params[name], 0, atol=1e-9)


def _subset(digits, data, n):
    """The first n training sequences, and the whole test set."""
    return digits.Data(np.ascontiguousarray(data.x_train[:, :n]), data.y_train[:n], data.x_test, data.y_test)


def test_digits_torch_on_the_same_recipe_learns_too(digits):
    torch = pytest.importorskip("torch", reason="the comparison needs PyTorch")
    # one thread: at these tiny sizes torch's pool only waits on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _torch_learns(digits)
    finally:
        torch.set_num_threads(threads)


def _torch_learns(digits):
    data = _subset(digits, digits.load("rows"), 640)
    for name in ("gru", "irnn"):
        result = digits.train_torch(name, data, seed=0, hidden=32, epochs=3)
        assert result.accuracy[-1] > 3 * CHANCE
    assert len(result.loss) == 3 * (640 // digits.BATCH)


def test_digits_command_and_figure(digits, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib (pip install fastbptt[plot])")
    path = tmp_path / "digits.png"
    results = digits.run("rows", ["--cells", "lstm", "--seeds", "0,1", "--epochs", "1",
                                  "--hidden", "8", "--no-torch", "--plot", str(path)])
    out = capsys.readouterr().out
    assert "digits row by row: T=8, I=8" in out and "lstm  seed 1: fastbptt" in out
    assert set(results) == {("lstm", 0), ("lstm", 1)}
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_digits_pixels_script_runs_the_pixel_layout(monkeypatch, capsys):
    pytest.importorskip("sklearn", reason="the digits examples need scikit-learn (pip install fastbptt[data])")
    monkeypatch.setattr(sys, "argv", ["digits_pixels.py", "--cells", "gru", "--epochs", "1",
                                      "--hidden", "4", "--no-torch"])
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import runpy
    runpy.run_path(str(EXAMPLES / "digits_pixels.py"), run_name="__main__")
    assert "digits pixel by pixel: T=64, I=1" in capsys.readouterr().out


def test_sunspots_series_and_baselines(sunspots, tol):
    series = sunspots.load()
    assert series.values.shape == (309,) and series.years[0] == 1700 and series.years[-1] == 2008
    assert series.split == 309 - 50
    truth = series.values[series.split:]
    np.testing.assert_array_equal(sunspots.persistence(series), series.values[series.split - 1:-1])
    # AR(9) by ordinary least squares on the lagged training values, independently of statsmodels
    p, y = 9, series.values[:series.split]
    lagged = np.column_stack([np.ones(len(y) - p)] + [y[p - i:len(y) - i] for i in range(1, p + 1)])
    coef = np.linalg.lstsq(lagged, y[p:], rcond=None)[0]
    full = series.values
    expected = [coef[0] + coef[1:] @ full[t - p:t][::-1] for t in range(series.split, len(full))]
    # the same least-squares problem (condition number about 430) solved another way: only
    # the rounding differs
    np.testing.assert_allclose(sunspots.ar_forecast(series), expected, **tol(np.float64, "split"))
    assert sunspots.rmse(expected, truth) < sunspots.rmse(sunspots.persistence(series), truth)


def test_sunspots_rnn_beats_predicting_the_mean(sunspots):
    series = sunspots.load()
    forecast, history = sunspots.train_rnn(series, steps=300, hidden=16)
    truth = series.values[series.split:]
    mean_only = sunspots.rmse(np.full_like(truth, series.values[:series.split].mean()), truth)
    assert forecast.shape == truth.shape
    assert sunspots.rmse(forecast, truth) < 0.8 * mean_only
    assert history.loss[-1] < history.loss[0]


def test_sunspots_command_and_figure(sunspots, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib (pip install fastbptt[plot])")
    path = tmp_path / "sun.png"
    scores = sunspots.main(["--steps", "20", "--plot", str(path)])
    assert set(scores) == {"persistence", "AR(9) statsmodels", "gru fastbptt"}
    assert "RMSE" in capsys.readouterr().out
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
