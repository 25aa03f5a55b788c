"""export_onnx: the graph passes onnx's checker and onnxruntime runs it to forward's outputs.

Every cell x 1-2 layers x uni/bidirectional x readout or not x initial state or not x lengths
or not, each session run at two (T, B) so that the dynamic axes are exercised. Skipped, with
the reason, where onnx or onnxruntime is not installed (pip install fastbptt[test-onnx]).
"""
import importlib.util
import io
import itertools
import sys

import numpy as np
import pytest

import fastbptt as fb
from fastbptt.export import MIN_OPSET, export_onnx

HAS_ONNX = importlib.util.find_spec("onnx") is not None
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx is not installed (pip install onnx)")
needs_ort = pytest.mark.skipif(not (HAS_ONNX and HAS_ORT),
                               reason="onnx and onnxruntime are not both installed "
                                      "(pip install onnx onnxruntime)")

CELLS = ("tanh", "relu", "lstm", "gru")
I, H, O = 5, 7, 3
# two (T, B): the graph's T and B are dynamic, one session must serve both
SHAPES = ((6, 4), (3, 1))


def session(proto):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def random_inputs(rng, model, T, B, with_state, with_lengths):
    """(x, h0, lengths) for forward and the feeds of the exported graph."""
    x = rng.standard_normal((T, B, model.input_size)).astype(model.dtype)
    feeds = {"x": x.astype(np.float32)}
    h0 = None
    if with_state:
        shape = (model.num_directions * model.num_layers, B, model.hidden_size)
        h = rng.standard_normal(shape).astype(model.dtype)
        if model.cell == "lstm":
            c = rng.standard_normal(shape).astype(model.dtype)
            h0 = (h, c)
            feeds.update(h0=h.astype(np.float32), c0=c.astype(np.float32))
        else:
            h0 = h
            feeds["h0"] = h.astype(np.float32)
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, T + 1, B)
        lengths[rng.integers(B)] = T     # the longest runs to the end, another may stop early
        feeds["lengths"] = lengths.astype(np.int32)
    return x, h0, lengths, feeds


def expected_outputs(model, x, h0, lengths):
    out, h_n = model.forward(x, h0, lengths)
    return [out] + (list(h_n) if model.cell == "lstm" else [h_n])


def check_against_forward(model, proto, rng, with_state, with_lengths, assert_close, shapes=SHAPES):
    sess = session(proto)
    names = [o.name for o in sess.get_outputs()]
    assert names == (["out", "h_n", "c_n"] if model.cell == "lstm" else ["out", "h_n"])
    for T, B in shapes:
        x, h0, lengths, feeds = random_inputs(rng, model, T, B, with_state, with_lengths)
        got = sess.run(None, feeds)
        for name, actual, expected in zip(names, got, expected_outputs(model, x, h0, lengths)):
            assert_close(actual, expected.astype(np.float32), np.float32,
                         f"{name} at (T, B) = ({T}, {B})", kind="onnx")


@needs_ort
@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "h0"])
@pytest.mark.parametrize("output_size", [None, O], ids=["states", "readout"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", CELLS)
def test_onnxruntime_matches_forward(cell, num_layers, bidirectional, output_size, with_state,
                                     with_lengths, rng, assert_close):
    import onnx
    model = fb.RNN(I, H, cell=cell, num_layers=num_layers, bidirectional=bidirectional,
                   output_size=output_size, seed=int(rng.integers(2**31)))
    f = io.BytesIO()
    proto = export_onnx(model, f, with_state=with_state, with_lengths=with_lengths)
    loaded = onnx.load_model_from_string(f.getvalue())
    onnx.checker.check_model(loaded, full_check=True)
    assert [i.name for i in loaded.graph.input] == (
        ["x"] + (["h0", "c0"] if cell == "lstm" else ["h0"]) * with_state
        + ["lengths"] * with_lengths)
    # ONNX's own recurrent operator, one per layer, both directions in one node
    ops = [n.op_type for n in loaded.graph.node]
    op = {"lstm": "LSTM", "gru": "GRU"}.get(cell, "RNN")
    assert ops.count(op) == num_layers
    check_against_forward(model, proto, rng, with_state, with_lengths, assert_close)


@needs_ort
def test_gru_export_uses_pytorchs_reset_placement(rng, tol):
    """linear_before_reset=1 is PyTorch's GRU; the ONNX default (0) is another network, which
    the comparison above must be able to tell apart."""
    model = fb.RNN(I, H, cell="gru", seed=3)
    proto = export_onnx(model, io.BytesIO())
    gru = next(n for n in proto.graph.node if n.op_type == "GRU")
    flag = next(a for a in gru.attribute if a.name == "linear_before_reset")
    assert flag.i == 1
    flag.i = 0
    x, _, _, feeds = random_inputs(rng, model, 6, 4, False, False)
    wrong = session(proto).run(None, feeds)[0]
    assert not np.allclose(wrong, model.forward(x)[0], **tol(np.float32, "effect"))


@needs_ort
def test_file_path_and_long_sequence_in_onnxruntime(tmp_path, rng, assert_close):
    """A path on disk, read back by onnxruntime; a longer T than the exports above."""
    import onnxruntime as ort
    model = fb.RNN(4, 16, cell="lstm", num_layers=2, output_size=2, seed=11)
    path = tmp_path / "model.onnx"
    export_onnx(model, path, with_state=True, with_lengths=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, h0, lengths, feeds = random_inputs(rng, model, 200, 5, True, True)
    for actual, expected in zip(sess.run(None, feeds), expected_outputs(model, x, h0, lengths)):
        assert_close(actual, expected, np.float32, "outputs", kind="onnx")


@needs_ort
def test_float64_model_exports_a_float32_graph(rng, assert_close):
    import onnx
    model = fb.RNN(I, H, cell="lstm", output_size=O, dtype="float64", seed=5)
    before = {k: v.copy() for k, v in model.params.items()}
    proto = export_onnx(model, io.BytesIO(), with_state=True, with_lengths=True)
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in proto.graph.initializer
               if t.name.startswith(("W_", "R_", "B_", "weight", "bias")))
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
        assert value.dtype == np.float64
    check_against_forward(model, proto, rng, True, True, assert_close)


@needs_ort
@pytest.mark.parametrize("opset", [MIN_OPSET, 17, 20])
def test_opsets_run_in_onnxruntime(opset, rng, assert_close):
    model = fb.RNN(I, H, cell="gru", bidirectional=True, output_size=O, seed=2)
    proto = export_onnx(model, io.BytesIO(), with_lengths=True, opset=opset)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    check_against_forward(model, proto, rng, False, True, assert_close)


# --------------------------------------------------------------------------- errors


def test_missing_onnx_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)   # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"pip install fastbptt\[onnx\]"):
        export_onnx(fb.RNN(2, 3), io.BytesIO())


@needs_onnx
@pytest.mark.parametrize("opset", [MIN_OPSET - 1, 10_000])
def test_unsupported_opset_is_refused(opset):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(fb.RNN(2, 3), io.BytesIO(), opset=opset)


@needs_onnx
@pytest.mark.parametrize("kwargs, name", [(dict(opset=17.0), "opset"), (dict(opset=True), "opset"),
                                          (dict(with_state=1), "with_state"),
                                          (dict(with_lengths="yes"), "with_lengths")])
def test_wrong_argument_types_name_the_argument(kwargs, name):
    with pytest.raises(TypeError, match=name):
        export_onnx(fb.RNN(2, 3), io.BytesIO(), **kwargs)


@needs_onnx
def test_bad_path_and_model_are_refused():
    with pytest.raises(TypeError, match="path"):
        export_onnx(fb.RNN(2, 3), 42)
    with pytest.raises(TypeError, match="model"):
        export_onnx(object(), io.BytesIO())


@needs_onnx
def test_non_finite_parameters_are_refused_naming_them():
    model = fb.RNN(2, 3, cell="gru", output_size=1)
    model.params["weight_hh_l0"][1, 2] = np.nan
    f = io.BytesIO()
    with pytest.raises(ValueError, match="weight_hh_l0"):
        export_onnx(model, f)
    assert f.getvalue() == b""     # nothing half-written


@needs_onnx
def test_parameters_the_graph_cannot_hold_never_reach_it():
    """The model's parameter dict refuses keys and shapes of no layer, naming them, so an
    export only ever sees the parameters its configuration describes."""
    model = fb.RNN(2, 3)
    with pytest.raises((KeyError, TypeError, ValueError), match="embedding.weight"):
        model.params["embedding.weight"] = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="weight_ih_l0"):
        model.params["weight_ih_l0"] = np.zeros((3, 5), np.float32)


@needs_onnx
def test_every_combination_passes_the_checker():
    """The checker alone (no runtime needed) over the combinations the runtime test covers."""
    import onnx
    for cell, L, bi, out, st, ln in itertools.product(CELLS, (1, 2), (False, True), (None, 2),
                                                      (False, True), (False, True)):
        model = fb.RNN(3, 4, cell=cell, num_layers=L, bidirectional=bi, output_size=out, seed=0)
        proto = export_onnx(model, io.BytesIO(), with_state=st, with_lengths=ln)
        onnx.checker.check_model(proto, full_check=True)


# ------------------------------------------------------------------ integer ids as input


@needs_ort
@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("embedding", [None, 4], ids=["one-hot", "embedding"])
@pytest.mark.parametrize("cell", CELLS)
def test_ids_export_matches_forward(cell, embedding, bidirectional, with_lengths, rng,
                                    assert_close):
    import onnx
    V = 9
    model = fb.RNN(V, H, cell=cell, num_layers=2, bidirectional=bidirectional, output_size=O,
                   embedding_size=embedding, seed=int(rng.integers(2**31)))
    proto = export_onnx(model, io.BytesIO(), with_lengths=with_lengths, ids=True)
    x_input = proto.graph.input[0]
    assert x_input.name == "x" and x_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
    ops = [n.op_type for n in proto.graph.node]
    assert ("Gather" if embedding else "OneHot") in ops
    sess = session(proto)
    for T, B in SHAPES:
        ids = rng.integers(0, V, (T, B))
        feeds = {"x": ids.astype(np.int64)}
        lengths = None
        if with_lengths:
            lengths = rng.integers(1, T + 1, B)
            lengths[0] = T
            feeds["lengths"] = lengths.astype(np.int32)
        got = sess.run(None, feeds)
        for name, actual, expected in zip(["out", "h_n", "c_n"], got,
                                          expected_outputs(model, ids, None, lengths)):
            assert_close(actual, expected.astype(np.float32), np.float32,
                         f"{name} at (T, B) = ({T}, {B})", kind="onnx")


@needs_onnx
def test_embedding_model_exports_ids_by_default_and_refuses_floats():
    model = fb.RNN(9, H, embedding_size=4)
    proto = export_onnx(model, io.BytesIO())
    assert len(proto.graph.input[0].type.tensor_type.shape.dim) == 2
    with pytest.raises(ValueError, match=r"\bids\b.*embedding"):
        export_onnx(model, io.BytesIO(), ids=False)
    with pytest.raises(TypeError, match=r"\bids\b"):
        export_onnx(fb.RNN(9, H), io.BytesIO(), ids="yes")
