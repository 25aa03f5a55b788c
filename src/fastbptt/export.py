"""Export a trained :class:`~fastbptt.RNN` to ONNX, for onnxruntime and other runtimes.

The graph uses ONNX's own recurrent operators, one node per layer (both directions in one
node when bidirectional), so that a runtime runs its own fused kernels::

    x (T, B, I) -> RNN | LSTM | GRU -> ... -> RNN | LSTM | GRU -> [MatMul, Add] -> out

What differs between PyTorch's layout (the model's) and ONNX's is settled here, once:

* gate order: PyTorch's LSTM stacks its gates i, f, g, o and ONNX's i, o, f, c; PyTorch's GRU
  r, z, n and ONNX's z, r, h. The weight blocks are permuted on the way out.
* the GRU's candidate: PyTorch computes n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), which is
  ONNX's ``linear_before_reset=1``; ONNX's default (0) applies r to h before the product, a
  different network that some exporters have shipped by mistake.
* biases: ONNX takes [W_b, R_b] concatenated, PyTorch's b_ih and b_hh.
* outputs: ONNX's Y is (T, D, B, H); the model's (T, B, D·H) with the directions side by side,
  so every layer's Y is transposed and reshaped before the next layer or the readout.

Integer ids as input (``ids=True``, and always for a model with an embedding): ``x`` is then
(T, B) int64; a model's embedding is a Gather of its rows, a plain model's ids are made into
their one-hot rows by ONNX's OneHot before the first layer (the operators take floats only).

Variable lengths use the operators' ``sequence_lens`` (PyTorch's PackedSequence semantics:
each sequence stops at its own length, the reverse direction runs within it); the outputs
past each sequence's end are set to zero after the readout, as ``forward`` gives them.

The graph is always float32: a float64 model is exported from its weights cast to float32
(deployment is float32's business; float64 is the training dtype of gradient checks). The
``onnx`` package is imported only when exporting: ``pip install fastbptt[onnx]``.
"""
import os

import numpy as np

__all__ = ["export_onnx", "MIN_OPSET"]

EMBEDDING = "embedding.weight"   # the model's name for its embedding (model.EMBEDDING)

# Squeeze and Unsqueeze take their axes as an input from opset 13, Reshape gained ``allowzero``
# and the recurrent operators ``layout`` at 14: the graph below is written for 14 and later.
MIN_OPSET = 14

# The model's gate blocks in the order ONNX stacks them (indices into PyTorch's order).
_ONNX_GATE_ORDER = {
    "tanh": (0,),
    "relu": (0,),
    "lstm": (0, 3, 1, 2),   # PyTorch i, f, g, o -> ONNX i, o, f, c
    "gru": (1, 0, 2),       # PyTorch r, z, n   -> ONNX z, r, h
}
_ONNX_OP = {"tanh": "RNN", "relu": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(
            "export_onnx needs the onnx package, which is not installed: "
            "pip install fastbptt[onnx]  (or pip install onnx)") from exc
    return onnx


def export_onnx(model, path, *, with_state=False, with_lengths=False, ids=None, opset=17):
    """Write ``model`` as an ONNX graph to ``path`` and return the ``onnx.ModelProto``.

    model: a :class:`fastbptt.RNN` (any cell, layers, directions, with or without readout).
    path: a file path (str or os.PathLike) or a binary file object.
    with_state: when True the graph takes the initial states as inputs ``h0``
        (D·L, B, H), and ``c0`` for an LSTM; otherwise they are zero.
    with_lengths: when True the graph takes ``lengths`` (B,) int32, each in [1, T]: the
        sequences' own lengths, as ``forward(x, lengths=...)``.
    ids: True makes ``x`` integer ids (T, B) int64 in [0, input_size), as ``forward`` takes
        them; None (the default) means True for a model with an embedding, else False. A
        model with an embedding takes ids only (False raises).
    opset: the ONNX operator set version, at least 14.

    Inputs: ``x`` (T, B, I) float32 with T and B dynamic, then ``h0``, ``c0``, ``lengths``
    as asked for. Outputs: ``out`` (T, B, O) with a readout, else (T, B, D·H); ``h_n``
    (D·L, B, H); ``c_n`` (D·L, B, H) for an LSTM. They equal ``model.forward``'s (float32
    rounding aside). The graph cannot check ``lengths``: values outside [1, T] give the
    runtime's answer, not an error; nor ids (outside [0, input_size): the runtime's error
    for an embedding's Gather, a zero or wrapped one-hot row otherwise).
    """
    onnx = _import_onnx()
    if isinstance(with_state, (bool, np.bool_)) is False:
        raise TypeError(f"with_state must be a bool, got {with_state!r}")
    if isinstance(with_lengths, (bool, np.bool_)) is False:
        raise TypeError(f"with_lengths must be a bool, got {with_lengths!r}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an int, got {opset!r}")
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must lie in [{MIN_OPSET}, {newest}] (the installed onnx "
                         f"{onnx.__version__} knows up to {newest}), got {opset}")
    embedding = getattr(model, "embedding_size", None)
    if ids is None:
        ids = embedding is not None
    if not isinstance(ids, (bool, np.bool_)):
        raise TypeError(f"ids must be a bool or None, got {ids!r}")
    if embedding is not None and not ids:
        raise ValueError("ids=False: a model with an embedding takes integer ids only")
    if not (isinstance(path, (str, os.PathLike)) or hasattr(path, "write")):
        raise TypeError(f"path must be a file path or a binary file object, got {type(path).__name__}")
    weights = _exportable_weights(model)
    proto = _build(onnx, model, weights, bool(with_state), bool(with_lengths), bool(ids),
                   int(opset))
    onnx.checker.check_model(proto, full_check=True)
    if hasattr(path, "write"):
        path.write(proto.SerializeToString())
    else:
        onnx.save(proto, os.fspath(path))
    return proto


def _exportable_weights(model):
    """model.params checked against the model's configuration, as float32 copies; what the
    graph cannot hold raises, naming it."""
    for attr in ("params", "cell", "input_size", "hidden_size", "num_layers", "num_directions",
                 "output_size", "dtype"):
        if not hasattr(model, attr):
            raise TypeError(f"model must be a fastbptt.RNN, got {type(model).__name__} "
                            f"(it has no attribute {attr!r})")
    if model.cell not in _ONNX_OP:
        raise ValueError(f"cell {model.cell!r} has no ONNX operator; exportable cells are "
                         f"{tuple(_ONNX_OP)}")
    G = len(_ONNX_GATE_ORDER[model.cell])
    H, D = model.hidden_size, model.num_directions
    shapes = {}
    first_in = model.input_size
    embedding = getattr(model, "embedding_size", None)
    if embedding is not None:
        shapes[EMBEDDING] = (model.input_size, embedding)
        first_in = embedding
    for k in range(model.num_layers):
        I_k = first_in if k == 0 else D * H
        for suffix in ("", "_reverse")[:D]:
            shapes[f"weight_ih_l{k}{suffix}"] = (G * H, I_k)
            shapes[f"weight_hh_l{k}{suffix}"] = (G * H, H)
            shapes[f"bias_ih_l{k}{suffix}"] = (G * H,)
            shapes[f"bias_hh_l{k}{suffix}"] = (G * H,)
    if model.output_size is not None:
        shapes["weight_out"] = (model.output_size, D * H)
        shapes["bias_out"] = (model.output_size,)
    params = model.params
    if not isinstance(params, dict):
        raise TypeError(f"model.params must be a dict, got {type(params).__name__}")
    extra = [name for name in params if name not in shapes]
    if extra:
        raise ValueError(f"model.params holds {extra}, which export_onnx cannot export "
                         "(it exports an embedding, recurrent layers and the linear readout)")
    missing = [name for name in shapes if name not in params]
    if missing:
        raise ValueError(f"model.params lacks {missing}")
    weights = {}
    for name, shape in shapes.items():
        a = params[name]
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype not in (np.float32, np.float64):
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"model.params[{name!r}] must be a float array of shape {shape}, got {got}")
        if not np.isfinite(a).all():
            raise ValueError(f"model.params[{name!r}] contains NaN or infinite values: "
                             "such a model cannot be exported")
        weights[name] = a.astype(np.float32)
    return weights


class _Graph:
    """The nodes, initializers and fresh names of a graph under construction."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes = []
        self.initializers = []
        self._count = 0

    def name(self, stem):
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem, value):
        name = self.name(stem)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, stem=None, outputs=1, **attrs):
        names = [self.name(stem or op.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(self.onnx.helper.make_node(op, inputs, names, name=self.name(op), **attrs))
        return names[0] if len(names) == 1 else names


def _layer_weights(model, weights, k):
    """ONNX's W (D, G·H, I_k), R (D, G·H, H), B (D, 2·G·H) of layer k, gates reordered."""
    H = model.hidden_size
    order = _ONNX_GATE_ORDER[model.cell]

    def gates(a):
        return np.concatenate([a[g * H:(g + 1) * H] for g in order])

    W, R, Bias = [], [], []
    for suffix in ("", "_reverse")[:model.num_directions]:
        W.append(gates(weights[f"weight_ih_l{k}{suffix}"]))
        R.append(gates(weights[f"weight_hh_l{k}{suffix}"]))
        Bias.append(np.concatenate([gates(weights[f"bias_ih_l{k}{suffix}"]),
                                    gates(weights[f"bias_hh_l{k}{suffix}"])]))
    return np.stack(W), np.stack(R), np.stack(Bias)


def _first_input(g, model, weights, ids):
    """The first layer's input from the graph's x: x itself, an embedding's rows (Gather), or
    the one-hot rows of plain ids (OneHot)."""
    if not ids:
        return "x"
    if EMBEDDING in weights:
        return g.node("Gather", [g.const("embedding", weights[EMBEDDING]), "x"], "embedded", axis=0)
    depth = g.const("depth", np.array([model.input_size], dtype=np.int64))
    values = g.const("one_hot_values", np.array([0, 1], dtype=np.float32))
    return g.node("OneHot", ["x", depth, values], "one_hot", axis=-1)


def _build(onnx, model, weights, with_state, with_lengths, ids, opset):
    helper, TensorProto = onnx.helper, onnx.TensorProto
    cell, H, L, D = model.cell, model.hidden_size, model.num_layers, model.num_directions
    is_lstm = cell == "lstm"
    g = _Graph(onnx)
    inputs = [helper.make_tensor_value_info("x", TensorProto.INT64, ["T", "B"]) if ids else
              helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", model.input_size])]
    state_names = ("h0", "c0") if is_lstm else ("h0",)
    if with_state:
        inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, [D * L, "B", H])
                   for s in state_names]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]))
    seq_lens = "lengths" if with_lengths else ""

    attrs = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
    if cell in ("tanh", "relu"):
        attrs["activations"] = ["Tanh" if cell == "tanh" else "Relu"] * D
    elif cell == "gru":
        attrs["linear_before_reset"] = 1    # PyTorch's GRU: r multiplies (W_hn h + b_hn)
    layer_in, finals = _first_input(g, model, weights, ids), [[] for _ in state_names]
    flat = g.const("flat_shape", np.array([0, 0, D * H], dtype=np.int64))
    for k in range(L):
        W, R, Bias = _layer_weights(model, weights, k)
        node_in = [layer_in, g.const(f"W_l{k}", W), g.const(f"R_l{k}", R),
                   g.const(f"B_l{k}", Bias), seq_lens]
        if with_state:
            # layer k's states are rows k·D .. k·D + D - 1 of h0 (and c0)
            starts = g.const("starts", np.array([k * D], dtype=np.int64))
            ends = g.const("ends", np.array([(k + 1) * D], dtype=np.int64))
            axes = g.const("axes", np.array([0], dtype=np.int64))
            node_in += [g.node("Slice", [s, starts, ends, axes], f"{s}_l{k}") for s in state_names]
        outputs = [g.name(f"Y_l{k}")] + [g.name(f"{s[0]}_n_l{k}") for s in state_names]
        g.node(_ONNX_OP[cell], node_in, outputs=outputs, **attrs)
        for final, name in zip(finals, outputs[1:]):
            final.append(name)
        # Y (T, D, B, H) -> (T, B, D·H), the directions side by side as in forward
        y = g.node("Transpose", [outputs[0]], f"Y_l{k}_tbdh", perm=[0, 2, 1, 3])
        layer_in = g.node("Reshape", [y, flat], f"out_l{k}")

    top = layer_in
    if model.output_size is not None:
        w_out_t = g.const("weight_out_t", np.ascontiguousarray(weights["weight_out"].T))
        top = g.node("Add", [g.node("MatMul", [top, w_out_t], "readout"),
                             g.const("bias_out", weights["bias_out"])], "readout_bias")
    if with_lengths:
        # past a sequence's end the output is zero, the readout's bias included:
        # mask[t, b] = t < lengths[b]
        T = g.node("Gather", [g.node("Shape", ["x"], "x_shape"), g.const("zero", np.array(0, np.int64))],
                   "T", axis=0)
        T32 = g.node("Cast", [T], "T_int32", to=TensorProto.INT32)
        steps = g.node("Range", [g.const("start", np.array(0, np.int32)), T32,
                                 g.const("delta", np.array(1, np.int32))], "steps")
        steps = g.node("Unsqueeze", [steps, g.const("axis1", np.array([1], np.int64))], "steps_col")
        mask = g.node("Less", [steps, "lengths"], "running")
        mask = g.node("Unsqueeze", [mask, g.const("axis2", np.array([2], np.int64))], "running_3d")
        top = g.node("Where", [mask, top, g.const("zero_out", np.array(0, np.float32))], "masked")
    g.node("Identity", [top], outputs=["out"])
    out_dim = model.output_size if model.output_size is not None else D * H
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["T", "B", out_dim])]
    for s, final in zip(state_names, finals):
        name = f"{s[0]}_n"
        g.node("Concat" if len(final) > 1 else "Identity", final, outputs=[name],
               **({"axis": 0} if len(final) > 1 else {}))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [D * L, "B", H]))

    graph = helper.make_graph(g.nodes, "fastbptt_rnn", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    # The oldest IR version the opset allows, so that older runtimes read the file too.
    proto = helper.make_model_gen_version(graph, opset_imports=opsets,
                                          producer_name="fastbptt",
                                          doc_string=_describe(model, with_state, with_lengths, ids))
    return proto


def _describe(model, with_state, with_lengths, ids):
    D = model.num_directions
    parts = [f"fastbptt RNN: cell={model.cell}, input_size={model.input_size}, "
             f"hidden_size={model.hidden_size}, num_layers={model.num_layers}, "
             f"bidirectional={D == 2}, output_size={model.output_size}",
             f"embedding_size={getattr(model, 'embedding_size', None)}",
             ("inputs: x (T, B) int64 ids" if ids else "inputs: x (T, B, I) float32") + (", h0 (D*L, B, H)" if with_state else "")
             + (", c0 (D*L, B, H)" if with_state and model.cell == "lstm" else "")
             + (", lengths (B,) int32 in [1, T]" if with_lengths else ""),
             "outputs: out, h_n" + (", c_n" if model.cell == "lstm" else "")]
    return "; ".join(parts)
