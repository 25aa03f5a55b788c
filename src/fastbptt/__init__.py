"""fastbptt: recurrent networks trained by backpropagation through time, fast, on the CPU.

    import fastbptt as fb
    model = fb.RNN(input_size, hidden_size, cell="tanh", output_size=1)
    out, h_n = model.forward(x)                 # x: (T, B, I)
    loss, d_out = fb.losses.mse(out, target)
    g = model.backward(d_out, clip_step=1.0)    # g.params: same keys as model.params
"""
from . import distributed, losses, optim, plot, tasks, train
from ._backend import available_backends, get_num_threads, set_num_threads
from .clip import clip_grad_norm, clip_grad_value
from .export import export_onnx
from .gradcheck import GradcheckError, gradcheck
from .model import RNN, Gradients
from .serialization import load

__version__ = "0.1.0"

__all__ = [
    "RNN",
    "Gradients",
    "GradcheckError",
    "available_backends",
    "clip_grad_norm",
    "clip_grad_value",
    "export_onnx",
    "get_num_threads",
    "set_num_threads",
    "distributed",
    "gradcheck",
    "load",
    "losses",
    "optim",
    "plot",
    "tasks",
    "train",
]
