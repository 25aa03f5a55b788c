"""Checkpointed BPTT: the same gradients as full BPTT from a cache of about 2√T states."""
import numpy as np
import pytest

import fastbptt as fb


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("checkpoint", [1, 4, 7, 30])
@pytest.mark.parametrize("output_size", [None, 2])
def test_checkpointed_gradients_equal_full(backend, dtype, checkpoint, output_size, tol):
    rng = np.random.default_rng(checkpoint)
    model = fb.RNN(3, 6, num_layers=2, output_size=output_size, dtype=dtype, seed=0, backend=backend)
    x = rng.standard_normal((29, 4, 3)).astype(dtype)
    h0 = rng.standard_normal((2, 4, 6)).astype(dtype)
    out, h_n = model.forward(x, h0)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_h_n = rng.standard_normal(h_n.shape).astype(dtype)
    full = model.backward(d_out, d_h_n, clip_step=1.0, step_norms=True)
    full_bytes = model.cache_nbytes()

    out_c, h_n_c = model.forward(x, h0, checkpoint=checkpoint)
    np.testing.assert_array_equal(out_c, out)
    np.testing.assert_array_equal(h_n_c, h_n)
    part = model.backward(d_out, d_h_n, clip_step=1.0, step_norms=True)
    for name in full.params:
        np.testing.assert_allclose(part.params[name], full.params[name], err_msg=name, **tol(dtype, "split"))
    np.testing.assert_allclose(part.x, full.x, **tol(dtype, "split"))
    np.testing.assert_allclose(part.h0, full.h0, **tol(dtype, "split"))
    np.testing.assert_allclose(part.step_norms, full.step_norms, **tol(dtype, "split"))
    segments = -(-29 // checkpoint)
    assert model.cache_nbytes() == segments * 2 * 4 * 6 * np.dtype(dtype).itemsize
    assert full_bytes == 2 * 30 * 4 * 6 * np.dtype(dtype).itemsize


def test_checkpoint_must_be_a_positive_int():
    model = fb.RNN(2, 3)
    x = np.ones((4, 1, 2), np.float32)
    with pytest.raises(ValueError, match="checkpoint"):
        model.forward(x, checkpoint=0)
    with pytest.raises(TypeError, match="checkpoint"):
        model.forward(x, checkpoint=2.5)
