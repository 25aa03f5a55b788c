"""Move weights between PyTorch and fastbptt: a torch.nn.RNN's state_dict loads as it is,
and both give the same outputs and gradients.

    python examples/from_pytorch.py        (needs torch)
"""
import numpy as np
import torch

import fastbptt as fb

torch.manual_seed(0)
net = torch.nn.RNN(8, 32, num_layers=2, nonlinearity="tanh", bidirectional=True).double()
model = fb.RNN(8, 32, num_layers=2, bidirectional=True, dtype="float64")
model.load_state_dict(net.state_dict())          # tensors are taken as they are

x = np.random.default_rng(0).standard_normal((20, 4, 8))
out, h_n = model.forward(x)
x_t = torch.from_numpy(x).requires_grad_()
out_t, h_n_t = net(x_t)
print("max |out difference|:", np.abs(out - out_t.detach().numpy()).max())

d_out = np.ones_like(out)
g = model.backward(d_out)
out_t.backward(torch.from_numpy(d_out))
worst = max(np.abs(g.params[name] - p.grad.numpy()).max() for name, p in net.named_parameters())
print("max |gradient difference|:", worst, "and for x:", np.abs(g.x - x_t.grad.numpy()).max())

# and back: fastbptt's parameters into a torch module
net.load_state_dict({name: torch.from_numpy(value) for name, value in model.state_dict().items()})
