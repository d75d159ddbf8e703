"""FastLSTM and FastLSTMCell: drop-in nn.LSTM / nn.LSTMCell with a choice of backend.

They subclass torch's modules, so parameter names, shapes, initialisation and state_dict
are nn.LSTM's own; only forward differs. backend=
  "auto"       the fastest verified path for the input (see _auto_path)
  "reference"  fastlstm.reference, plain PyTorch (slow; the oracle)
  "cpu"        the fused C++ op on CPU tensors
  "cuda"       the fused CUDA op on CUDA tensors
  "triton"     the Triton kernels (not built yet: raises)
  "cudnn"/"aten"  torch's own nn.LSTM (cuDNN on GPU, ATen/oneDNN on CPU), for comparisons
What the fused op does not support (proj_size, PackedSequence, a dtype the device's op
lacks) goes to torch's own LSTM, never to a wrong answer.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import _extension, ops
from .reference import lstm_cell_reference, reference_lstm

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton", "cudnn", "aten")
FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"unknown FastLSTM backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def _fused_unsupported(data, proj_size=0, packed=False):
    """Why the fused op cannot take this input, or None."""
    if proj_size > 0:
        return "proj_size > 0"
    if packed:
        return "PackedSequence input"
    dtypes = FUSED_DTYPES.get(data.device.type)
    if dtypes is None:
        return f"{data.device.type} tensors"
    if data.dtype not in dtypes:
        return f"{data.dtype} on {data.device.type}"
    return None


def _auto_path(data, unsupported):
    if not _extension.available():
        _extension.warn_unavailable()
        return "aten"
    if unsupported or data.is_cuda:
        # CUDA tensors stay on cuDNN until a recorded GPU run shows the CUDA op correct
        # and faster (benchmarks/results/).
        return "aten"
    return "fused"


def choose_path(backend, data, unsupported):
    """'fused' (our op), 'reference' or 'aten' for this input under `backend`."""
    if backend in ("cudnn", "aten"):
        return "aten"
    if backend == "reference":
        return "reference"
    if backend == "triton":
        raise NotImplementedError('FastLSTM backend="triton" is not implemented yet; use '
                                  '"auto", "cpu", "cuda" or "reference"')
    if backend == "auto":
        return _auto_path(data, unsupported)
    _extension.require(backend)
    if data.device.type != backend:
        raise ValueError(f'FastLSTM backend="{backend}" needs {backend} tensors, got input on '
                         f'{data.device}; move the module and input, or use backend="auto"')
    if backend == "cuda" and not _extension.cuda_compiled():
        raise RuntimeError('FastLSTM backend="cuda": fastlstm._C was built without CUDA '
                           "kernels; rebuild with a CUDA torch and nvcc (FASTLSTM_FORCE_CUDA=1)")
    if unsupported:
        warnings.warn(f'FastLSTM backend="{backend}" does not support {unsupported} yet; '
                      "using torch's own LSTM for it", stacklevel=3)
        return "aten"
    return "fused"


def _check_same_device_dtype(module, tensors, what):
    weight = next(module.parameters())
    for t in tensors:
        if t.device != weight.device:
            raise RuntimeError(f"{what} and parameter tensors are not at the same device, found "
                               f"{what} tensor at {t.device} and parameter tensor at "
                               f"{weight.device}")
        if t.dtype != weight.dtype and not torch.is_autocast_enabled(t.device.type):
            raise ValueError(f"{what} must have the type {weight.dtype}, got type {t.dtype}")


class FastLSTM(nn.LSTM):
    """nn.LSTM with fused kernels. Same arguments, plus keyword ``backend``."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         proj_size=proj_size, device=device, dtype=dtype)
        self.backend = _check_backend(backend)

    def extra_repr(self):
        return f"{super().extra_repr()}, backend={self.backend!r}"

    def _validate(self, input, hx):
        """nn.LSTM's checks, with its error types and messages. Returns time-major 3-D
        input, 3-D (h0, c0) or None, and whether the input was unbatched."""
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
        _check_same_device_dtype(self, [x], "Input")
        if hx is not None:
            want = 3 if batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                   f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            if not batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            _check_same_device_dtype(self, hx, "Hidden")
        self.check_forward_args(x, hx if hx is not None else self._zero_state(x), None)
        if self.batch_first:
            x = x.transpose(0, 1)
        return x, hx, not batched

    def _zero_state(self, x_batched):
        batch = x_batched.size(0 if self.batch_first else 1)
        dirs = 2 if self.bidirectional else 1
        out = self.proj_size if self.proj_size > 0 else self.hidden_size
        zeros = lambda n: x_batched.new_zeros(self.num_layers * dirs, batch, n)  # noqa: E731
        return zeros(out), zeros(self.hidden_size)

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        path = choose_path(self.backend, data, _fused_unsupported(data, self.proj_size, packed))
        if path == "aten":
            return super().forward(input, hx)
        if path == "reference":
            if not packed:
                self._validate(input, hx)
            return reference_lstm(input, hx, dict(self.named_parameters()),
                                  num_layers=self.num_layers, bias=self.bias,
                                  batch_first=self.batch_first, dropout=self.dropout,
                                  training=self.training, bidirectional=self.bidirectional,
                                  proj_size=self.proj_size)
        return self._forward_fused(input, hx)

    def _forward_fused(self, input, hx):
        x, hx, unbatched = self._validate(input, hx)
        h0, c0 = hx if hx is not None else self._zero_state(x.transpose(0, 1)
                                                            if self.batch_first else x)
        dirs = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        layer_in = x
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(["", "_reverse"][:dirs]):
                k = layer * dirs + d
                w = lambda name: getattr(self, f"{name}_l{layer}{suffix}")  # noqa: E731
                b_ih, b_hh = (w("bias_ih"), w("bias_hh")) if self.bias else (None, None)
                hs, h, c = ops.lstm_layer(layer_in, h0[k], c0[k], w("weight_ih"), w("weight_hh"),
                                          b_ih, b_hh, reverse=d == 1)
                outs.append(hs)
                h_n.append(h)
                c_n.append(c)
            layer_in = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        out = layer_in.transpose(0, 1) if self.batch_first else layer_in
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return out, (h_n, c_n)


class FastLSTMCell(nn.LSTMCell):
    """nn.LSTMCell on the fused step op. Same arguments, plus keyword ``backend``."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.backend = _check_backend(backend)

    def extra_repr(self):
        return f"{super().extra_repr()}, backend={self.backend!r}"

    def forward(self, input, hx=None):
        path = choose_path(self.backend, input, _fused_unsupported(input))
        if path == "aten":
            return super().forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        _check_same_device_dtype(self, [input], "Input")
        if hx is not None:
            if hx[0].dim() != input.dim() or hx[1].dim() != input.dim():
                raise RuntimeError(f"LSTMCell: Expected hx and cx to be {input.dim()}D like the "
                                   f"input, got ({hx[0].dim()}D, {hx[1].dim()}D)")
            _check_same_device_dtype(self, hx, "Hidden")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(-1)} "
                               f"expected {self.input_size}")
        if hx is None:
            h = c = x.new_zeros(x.size(0), self.hidden_size)
        else:
            h, c = (t.unsqueeze(0) for t in hx) if unbatched else hx
            for name, t in (("hx", h), ("cx", c)):
                if t.shape != (x.size(0), self.hidden_size):
                    raise RuntimeError(f"{name} has shape {tuple(t.shape)}, expected "
                                       f"{(x.size(0), self.hidden_size)}")
        b_ih, b_hh = (self.bias_ih, self.bias_hh) if self.bias else (None, None)
        step = lstm_cell_reference if path == "reference" else ops.lstm_step
        h, c = step(x, h, c, self.weight_ih, self.weight_hh, b_ih, b_hh)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)
