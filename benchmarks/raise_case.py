"""An op call that must raise a RuntimeError (bad h0 shape), in a fresh process: a
crash here instead of the error is an unwinding problem of the build, not of a test."""
import torch

import fastlstm  # noqa: F401

x, h, w = torch.randn(3, 2, 20), torch.randn(2, 5), torch.randn(20, 5)
try:
    torch.ops.fastlstm.lstm_layer(x, h[:1], h, w, False)
except RuntimeError as exc:
    print("raised as it should:", str(exc).splitlines()[0])
else:
    raise SystemExit("no error raised")
