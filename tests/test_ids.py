"""Integer ids as input and the optional embedding: ids against their one-hot rows, the
compiled kernels against the oracle, finite differences on the embedding, PyTorch's
Embedding + LSTM/GRU, bad ids, fit/evaluate, predict/step, files, and the caller's arrays."""
import io

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import _backend, _cells
from fastbptt.train import evaluate, fit

CELLS = tuple(_cells.CELLS)
V, H, T, B, O = 7, 5, 6, 4, 3


def _ids(rng, T=T, B=B, V=V):
    ids = rng.integers(0, V, (T, B))
    ids[0, 0] = ids[1, 0] = ids[2, 1]   # repeated ids, in one sequence and across sequences
    return ids


def _lengths(rng):
    lengths = rng.integers(1, T + 1, B)
    lengths[1] = T
    return lengths


def _all_grads(g):
    return dict(g.params, **{f"h0[{i}]": a for i, a in enumerate(np.atleast_3d(g.h0)
                                                               if not isinstance(g.h0, tuple)
                                                               else g.h0)})


CASES = {
    "plain": dict(),
    "lengths": dict(lengths=True),
    "checkpoint": dict(checkpoint=2),
    "lengths-checkpoint": dict(lengths=True, checkpoint=4),
}
# checkpoint is not supported with bidirectional=True: those pairs are left out
LAYOUTS = [pytest.param(False, case, id=f"uni-{case}") for case in CASES] + [
    pytest.param(True, case, id=f"bi-{case}") for case in ("plain", "lengths")]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional,case", LAYOUTS)
@pytest.mark.parametrize("readout", [None, O], ids=["states", "readout"])
def test_ids_match_one_hot(backend, cell, bidirectional, case, readout, rng, assert_close):
    opts = dict(CASES[case])
    lengths = _lengths(rng) if opts.pop("lengths", False) else None
    model = fb.RNN(V, H, cell=cell, num_layers=2, bidirectional=bidirectional,
                   output_size=readout, dtype="float64", seed=2, backend=backend)
    ids = _ids(rng)
    one_hot = np.eye(V)[ids]
    out_size = readout or model.num_directions * H
    d_out = rng.standard_normal((T, B, out_size))
    h_shape = (model.num_directions * 2, B, H)
    d_h = rng.standard_normal(h_shape)
    d_h_n = (d_h, rng.standard_normal(h_shape)) if cell == "lstm" else d_h

    out_1, h_1 = model.forward(one_hot, lengths=lengths, **opts)
    g_1 = model.backward(d_out, d_h_n)
    out_i, h_i = model.forward(ids, lengths=lengths, **opts)
    g_i = model.backward(d_out, d_h_n)

    assert_close(out_i, out_1, np.float64, "out", kind="ids")
    for k, (a, b) in enumerate(zip(np.atleast_1d(h_i) if cell != "lstm" else h_i,
                                   np.atleast_1d(h_1) if cell != "lstm" else h_1)):
        assert_close(a, b, np.float64, f"h_n[{k}]", kind="ids")
    assert g_i.x is None and g_1.x is not None
    for name, expected in _all_grads(g_1).items():
        assert_close(_all_grads(g_i)[name], expected, np.float64, name, kind="ids")


@pytest.mark.parametrize("cell", ["tanh", "lstm"])
def test_a_gather_and_scatter_shared_among_threads_match_one_hot_with_the_same_bits(
        compiled_backend, cell, rng, restore_threads, assert_close):
    """Past IDS_PARALLEL_MIN elements (64K: here 128 rows of ids by G = 512) the
    gather and scatter share their work among the team: ids give the one-hot input's
    outputs and gradients, and the same bits on 1, 2 and 3 threads."""
    V, T, B = 301, 16, 8
    ids = rng.integers(0, V, (T, B))
    ids[:4, 0] = ids[5, 3]                      # repeated ids: their gradients sum
    d_out = rng.standard_normal((T, B, 2))
    runs = []
    for threads in (1, 2, 3):
        fb.set_num_threads(threads)
        model = fb.RNN(V, 512 // _cells.CELLS[cell].gates, cell=cell, output_size=2,
                       dtype="float64", seed=1, backend=compiled_backend)
        out, _ = model.forward(ids)
        runs.append((out, model.backward(d_out).flat))
    for out, flat in runs[1:]:
        np.testing.assert_array_equal(out, runs[0][0])
        np.testing.assert_array_equal(flat, runs[0][1])
    out, _ = model.forward(np.eye(V)[ids])
    assert_close(runs[0][0], out, np.float64, "out", kind="ids")
    assert_close(runs[0][1], model.backward(d_out).flat, np.float64, "g.flat", kind="ids")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("embedding", [None, 3], ids=["one-hot", "embedding"])
def test_compiled_ids_match_oracle(compiled_backend, cell, bidirectional, embedding, dtype, rng,
                                   assert_close):
    lengths = _lengths(rng)
    ids = _ids(rng)
    d_out = rng.standard_normal((T, B, O)).astype(dtype)
    results = []
    for backend in ("numpy", compiled_backend):
        model = fb.RNN(V, H, cell=cell, num_layers=2, bidirectional=bidirectional, output_size=O,
                       dtype=dtype, seed=4, embedding_size=embedding, backend=backend)
        out, _ = model.forward(ids, lengths=lengths)
        results.append((out, model.backward(d_out).params))
    (out_ref, g_ref), (out, g) = results
    kind = "oracle" if cell in ("tanh", "relu") else "gated"
    assert_close(out, out_ref, dtype, "out", kind=kind)
    for name, expected in g_ref.items():
        assert_close(g[name], expected, dtype, name, kind=kind)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_backward_skips_dx_on_request(backend, cell, rng, assert_close):
    """need_dx=False gives dx None and the same weight and state gradients, in both backends."""
    kernels = _backend.resolve(backend)[1]
    spec = _cells.CELLS[cell]
    G = spec.gates
    x = rng.standard_normal((T, B, V))
    w_ih, w_hh = rng.standard_normal((G * H, V)) * 0.3, rng.standard_normal((G * H, H)) * 0.3
    b_ih, b_hh = rng.standard_normal(G * H), rng.standard_normal(G * H)
    state0 = tuple(rng.standard_normal((B, H)) for _ in spec.states)
    d_out = rng.standard_normal((T, B, H))
    sizes = np.array([4, 4, 3, 3, 2, 1], dtype=np.intp)
    for batch_sizes in (None, sizes):
        cache = spec.forward(kernels, x, state0, w_ih, w_hh, b_ih, b_hh, batch_sizes)
        full = spec.backward(kernels, d_out, None, x, cache, w_ih, w_hh, None, None, batch_sizes)
        skip = spec.backward(kernels, d_out, None, x, cache, w_ih, w_hh, None, None, batch_sizes,
                             False)
        assert skip.dx is None and full.dx is not None
        for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
            assert_close(getattr(skip, name), getattr(full, name), np.float64, name)
        for k, (a, b) in enumerate(zip(skip.d_state0, full.d_state0)):
            assert_close(a, b, np.float64, f"d_state0[{k}]")


@pytest.mark.parametrize("cell", CELLS)
def test_embedding_matches_embedded_floats(backend, cell, rng, assert_close):
    """An embedding model on ids is the model without one on the embedding's rows; its
    gradient is that model's ∂E/∂x summed into the rows the ids picked."""
    E = 3
    model = fb.RNN(V, H, cell=cell, num_layers=2, output_size=O, dtype="float64", seed=5,
                   embedding_size=E, backend=backend)
    plain = fb.RNN(E, H, cell=cell, num_layers=2, output_size=O, dtype="float64", seed=5,
                   backend=backend)
    plain.load_state_dict({k: v for k, v in model.params.items() if k != "embedding.weight"})
    ids, lengths = _ids(rng), _lengths(rng)
    d_out = rng.standard_normal((T, B, O))
    table = model.params["embedding.weight"]
    out, _ = model.forward(ids, lengths=lengths)
    g = model.backward(d_out)
    out_p, _ = plain.forward(table[ids], lengths=lengths)
    g_p = plain.backward(d_out)
    assert_close(out, out_p, np.float64, "out", kind="ids")
    expected = np.zeros_like(table)
    for t in range(T):
        for b in range(B):
            expected[ids[t, b]] += g_p.x[t, b]
    assert_close(g.params["embedding.weight"], expected, np.float64, "embedding", kind="ids")
    for name, value in g_p.params.items():
        assert_close(g.params[name], value, np.float64, name, kind="ids")
    assert g.x is None


@pytest.mark.parametrize("cell", CELLS)
def test_embedding_gradient_matches_finite_differences(backend, cell, rng, fd):
    model = fb.RNN(V, H, cell=cell, output_size=O, dtype="float64", seed=6, embedding_size=3,
                   backend=backend)
    ids, lengths = _ids(rng), _lengths(rng)
    d_out = rng.standard_normal((T, B, O))
    model.forward(ids, lengths=lengths)
    grad = model.backward(d_out).params["embedding.weight"]
    table = model.params["embedding.weight"]
    used = np.unique(ids)
    for row in (used[0], used[-1], ids[0, 0]):
        for col in range(table.shape[1]):
            saved = table[row, col]
            table[row, col] = saved + fd["eps"]
            up = np.sum(model.forward(ids, lengths=lengths)[0] * d_out)
            table[row, col] = saved - fd["eps"]
            down = np.sum(model.forward(ids, lengths=lengths)[0] * d_out)
            table[row, col] = saved
            np.testing.assert_allclose(grad[row, col], (up - down) / (2 * fd["eps"]),
                                       rtol=fd["rtol"], atol=fd["atol"])
    unused = np.setdiff1d(np.arange(V), ids)
    assert np.all(grad[unused] == 0)


def test_embedding_parameter_comes_first_with_torch_init(backend):
    model = fb.RNN(50, 4, cell="lstm", embedding_size=8, seed=0, dtype="float64", backend=backend)
    shapes = model.param_shapes()
    assert list(shapes)[0] == "embedding.weight"
    assert shapes["embedding.weight"] == (50, 8) and shapes["weight_ih_l0"] == (16, 8)
    table = model.params["embedding.weight"]
    assert np.shares_memory(table, model.flat_params)
    # N(0, 1): nothing like the recurrent weights' uniform ±1/√H = ±0.5
    assert np.abs(table).max() > 1.5 and 0.7 < table.std() < 1.3


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_embedding_state_dict_gives_torch_outputs_and_gradients(cell, rng, tol):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    E = 4
    emb = torch.nn.Embedding(V, E).double()
    rnn = _cells.CELLS[cell].torch_module(torch, E, H, num_layers=2).double()
    lin = torch.nn.Linear(H, O).double()
    state = {"embedding.weight": emb.weight, **rnn.state_dict(), "weight_out": lin.weight,
             "bias_out": lin.bias}
    model = fb.RNN(V, H, cell=cell, num_layers=2, output_size=O, dtype="float64",
                   embedding_size=E)
    model.load_state_dict(state)
    ids = _ids(rng)
    d_out = rng.standard_normal((T, B, O))
    out, _ = model.forward(ids)
    g = model.backward(d_out)
    out_t = lin(rnn(emb(torch.from_numpy(ids)))[0])
    np.testing.assert_allclose(out, out_t.detach().numpy(), **tol(np.float64, "torch_states"))
    out_t.backward(torch.from_numpy(d_out))
    theirs = {"embedding.weight": emb.weight.grad, "weight_out": lin.weight.grad,
              "bias_out": lin.bias.grad, **{n: p.grad for n, p in rnn.named_parameters()}}
    assert set(theirs) == set(g.params)
    for name, value in theirs.items():
        np.testing.assert_allclose(g.params[name], value.numpy(), err_msg=name,
                                   **tol(np.float64, "torch"))


BAD_IDS = [
    ("too-large", lambda: np.full((T, B), V), ValueError, r"\bx\b.*id 7.*\[0, 7\)"),
    ("negative", lambda: np.full((T, B), -1), ValueError, r"\bx\b.*id -1"),
    ("one-negative-int8", lambda: np.where(np.arange(T * B).reshape(T, B) == 5, -3, 1).astype(np.int8),
     ValueError, r"\bx\b.*id -3"),
    ("one-too-large-strided", lambda: np.where(np.arange(2 * T * B).reshape(T, 2 * B) == 6, V, 0)[:, ::2],
     ValueError, r"\bx\b.*id 7.*\[0, 7\)"),
    ("uint-too-large", lambda: np.full((T, B), 2 ** 63, np.uint64), ValueError, r"\bx\b.*outside"),
    ("float-2d", lambda: np.zeros((T, B)), ValueError, r"\bx\b.*(shape|ids)"),
    ("bool", lambda: np.zeros((T, B), bool), TypeError, r"\bx\b.*bool"),
    ("3d-ints", lambda: np.zeros((T, B, V), np.int64), TypeError, r"\bx\b.*int64"),
    ("empty", lambda: np.zeros((0, B), np.int64), ValueError, r"\bx\b.*empty"),
]


@pytest.mark.parametrize("embedding", [None, 3], ids=["one-hot", "embedding"])
@pytest.mark.parametrize("case,make,error,match", BAD_IDS, ids=[c[0] for c in BAD_IDS])
def test_bad_ids_are_refused_naming_x(backend, embedding, case, make, error, match):
    model = fb.RNN(V, H, embedding_size=embedding, dtype="float64", backend=backend)
    if embedding is not None and case in ("float-2d", "3d-ints", "bool"):
        error, match = TypeError, r"\bx\b.*embedding.*integer ids"
    with pytest.raises(error, match=match):
        model.forward(make())
    with pytest.raises(error, match=match):
        model.predict(make())


def test_embedding_model_refuses_floats(backend):
    model = fb.RNN(V, H, embedding_size=3, backend=backend)
    with pytest.raises(TypeError, match=r"\bx\b.*integer ids"):
        model.forward(np.zeros((T, B, V), np.float32))
    with pytest.raises(TypeError, match=r"\bx_t\b.*integer ids"):
        model.step(np.zeros((B, V), np.float32))
    with pytest.raises(ValueError, match=r"\bx_t\b.*id 7"):
        model.step(np.full(B, V))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("embedding", [None, 3], ids=["one-hot", "embedding"])
def test_predict_and_step_take_ids(backend, cell, embedding, rng, assert_close):
    model = fb.RNN(V, H, cell=cell, num_layers=2, output_size=O, dtype="float64", seed=7,
                   embedding_size=embedding, backend=backend)
    ids, lengths = _ids(rng), _lengths(rng)
    out, h_n = model.forward(ids, lengths=lengths)
    p_out, p_h = model.predict(ids, lengths=lengths)
    assert_close(p_out, out, np.float64, "predict")
    full, _ = model.forward(ids)
    state = None
    for t in range(T):
        y, state = model.step(ids[t], state)
        assert_close(y, full[t], np.float64, f"step {t}")


def test_bidirectional_predict_takes_ids(backend, rng, assert_close):
    model = fb.RNN(V, H, cell="gru", bidirectional=True, dtype="float64", seed=8, backend=backend)
    ids, lengths = _ids(rng), _lengths(rng)
    out, _ = model.forward(ids, lengths=lengths)
    assert_close(model.predict(ids, lengths=lengths)[0], np.array(out), np.float64, "predict")
    assert_close(model.predict(ids)[0], model.forward(np.eye(V)[ids])[0], np.float64, "one-hot",
                 kind="ids")


class _Recorder:
    def __init__(self):
        self.grads = []

    def step(self, grads):
        self.grads.append({k: v.copy() for k, v in grads.items()})


@pytest.mark.parametrize("cell", ["tanh", "lstm"])
def test_fit_and_evaluate_take_ids(backend, cell, rng, assert_close):
    ids = _ids(rng)
    labels = rng.integers(0, O, (T, B))
    recorded = []
    for x in (np.eye(V)[ids], ids):
        model = fb.RNN(V, H, cell=cell, output_size=O, dtype="float64", seed=9, backend=backend)
        rec = _Recorder()
        fit(model, [(x, labels)], steps=2, optimizer=rec, loss="cross_entropy", bptt=(2, 4),
            progress=False)
        recorded.append((rec.grads, evaluate(model, x, labels, loss="cross_entropy")))
    (grads_1, loss_1), (grads_i, loss_i) = recorded
    assert len(grads_i) == len(grads_1) > 1
    for g_i, g_1 in zip(grads_i, grads_1):
        for name, value in g_1.items():
            assert_close(g_i[name], value, np.float64, name, kind="ids")
    np.testing.assert_allclose(loss_i, loss_1, rtol=1e-12)


def test_fit_trains_an_embedding_model(backend, rng):
    model = fb.RNN(V, H, output_size=V, embedding_size=4, seed=1, backend=backend)
    ids = rng.integers(0, V, (T, B))
    targets = np.roll(ids, -1, axis=0)     # predict the next id
    before = evaluate(model, ids, targets, loss="cross_entropy")
    fit(model, [(ids, targets)] * 40, steps=40, optimizer=fb.optim.Adam(model.params, lr=0.05),
        loss="cross_entropy", progress=False)
    assert evaluate(model, ids, targets, loss="cross_entropy") < before


def test_callers_ids_are_not_modified(backend, rng):
    model = fb.RNN(V, H, cell="lstm", output_size=O, embedding_size=3, backend=backend)
    wide = rng.integers(0, V, (T, 2 * B)).astype(np.int32)
    ids = wide[:, ::2]                       # strided, and of another integer dtype
    lengths = _lengths(rng)
    keep, keep_lengths = wide.copy(), lengths.copy()
    model.forward(ids, lengths=lengths)
    model.backward(np.ones((T, B, O), np.float32))
    model.predict(ids, lengths=lengths)
    model.step(ids[0])
    np.testing.assert_array_equal(wide, keep)
    np.testing.assert_array_equal(lengths, keep_lengths)


def test_saved_embedding_model_loads_with_its_embedding(backend, rng):
    model = fb.RNN(V, H, cell="gru", output_size=O, embedding_size=3, seed=3, backend=backend)
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    loaded = fb.load(buffer, backend=backend)
    assert loaded.embedding_size == 3 and loaded.config == model.config
    ids = _ids(rng)
    np.testing.assert_array_equal(loaded.predict(ids)[0], model.predict(ids)[0])


def test_version_1_files_load_as_models_without_embedding(tmp_path):
    import json
    model = fb.RNN(V, H, seed=3)
    path = tmp_path / "v1.npz"
    config = {k: v for k, v in model.config.items() if k != "embedding_size"}
    arrays = {f"param/{k}": v for k, v in model.params.items()}
    with open(path, "wb") as f:
        np.savez(f, __config__=np.array(json.dumps(dict(config, format_version=1))), **arrays)
    loaded = fb.load(path)
    assert loaded.embedding_size is None
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)


@pytest.mark.parametrize("tracks", [1, 3])
def test_char_command_feeds_the_ids_of_the_sequential_chunks(tracks):
    from fastbptt.demo import _id_chunks
    corpus = fb.tasks.CharCorpus("the quick brown fox jumps over the lazy dog " * 3)
    one_hot = corpus.sequential(7, tracks)
    ids = _id_chunks(corpus, 7, tracks)
    for _ in range(len(corpus.ids) // 7 + 3):        # past the end: both start over
        (x, y), (i, j) = next(one_hot), next(ids)
        np.testing.assert_array_equal(i, x.argmax(axis=2))
        np.testing.assert_array_equal(j, y)


def test_sample_steps_on_ids(backend):
    from fastbptt.demo import sample
    corpus = fb.tasks.default_corpus()
    V = len(corpus.vocab)
    model = fb.RNN(V, 6, output_size=V, seed=0, backend=backend)
    text = sample(model, corpus, corpus.text[0], 20, np.random.default_rng(0))
    assert len(text) == 20 and set(text) <= set(corpus.vocab)


_IDS_STEP = """
import hashlib, sys
import numpy as np
import fastbptt as fb
cell, embedding = sys.argv[1], (None if sys.argv[2] == "none" else int(sys.argv[2]))
rng = np.random.default_rng(3)
ids = rng.integers(0, 50, (20, 24))
lengths = rng.integers(1, 21, size=24)
model = fb.RNN(50, 64, cell=cell, num_layers=2, output_size=5, seed=1, embedding_size=embedding,
               backend="cython")
digest = hashlib.sha256()
for lens in (None, lengths):
    out, h_n = model.forward(ids, lengths=lens)
    g = model.backward(np.ones_like(out))
    for a in [out] + [g.params[k] for k in sorted(g.params)]:
        digest.update(np.ascontiguousarray(a).tobytes())
print(digest.hexdigest())
"""


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
@pytest.mark.parametrize("embedding", [None, 16], ids=["one-hot", "embedding"])
def test_ids_results_do_not_depend_on_the_thread_count(compiled_backend, cell, embedding,
                                                       tmp_path):
    """The scatter-adds (into W_ih's columns, into the embedding's rows) sum each element in
    row order: one OpenMP thread or two give the same bits (each count in a fresh process,
    as tests/test_threads.py does)."""
    import os
    import subprocess
    import sys

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fb.__file__)))
    digests = set()
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]))
        run = subprocess.run([sys.executable, "-c", _IDS_STEP, cell, str(embedding).lower()],
                             env=env, capture_output=True, text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        digests.add(run.stdout.strip())
    assert len(digests) == 1


def test_training_checkpoint_keeps_the_embedding(backend, rng, tmp_path):
    model = fb.RNN(V, H, output_size=V, embedding_size=4, seed=1, backend=backend)
    ids = rng.integers(0, V, (T, B))
    path = tmp_path / "run.ckpt"
    fit(model, [(ids, np.roll(ids, -1, axis=0))] * 2, steps=2,
        optimizer=fb.optim.Adam(model.params, lr=0.01), loss="cross_entropy", progress=False,
        checkpoint=path, checkpoint_every=1)
    loaded = fb.train.load_checkpoint(path, backend=backend).model
    assert loaded.embedding_size == 4
    np.testing.assert_array_equal(loaded.predict(ids)[0], model.predict(ids)[0])
