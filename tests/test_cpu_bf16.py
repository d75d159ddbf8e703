"""The fused CPU op in bfloat16: its bf16 conversions exactly (round to nearest even, NaN
kept), the op against the float64 oracle, and bf16 autocast through FastLSTM and
FastLSTMCell. (The module-level differential tests in test_lstm.py run CPU bf16 too.)"""
import pytest
import torch

import fastlstm  # noqa: F401  (registers fake impls and autograd)
from fastlstm import FastLSTM, FastLSTMCell, reference_lstm
from fastlstm.module import choose_path
from helpers import TOLERANCE, assert_close

BF16 = torch.bfloat16


def randn(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_bf16_outputs_are_the_fp32_op_rounded_to_nearest_even():
    """With W_hh = 0 (no recurrent GEMM, whose bf16 rounding the fp32 op lacks) the bf16 op
    computes what the fp32 op computes from the same bf16 inputs, in fp32, then stores h
    in bf16: h must be the fp32 op's h rounded as torch rounds (to nearest, ties to even),
    bit for bit, and the fp32 cell states and gates equal. Truncating instead of rounding,
    or a wrong load, fails this."""
    steps, batch, hidden = 4, 3, 45
    xproj = (randn(steps, batch, 4 * hidden, seed=1) * 2).to(BF16)
    h0, c0 = randn(batch, hidden, seed=2).to(BF16), randn(batch, hidden, seed=3).to(BF16)
    w_hh = torch.zeros(4 * hidden, hidden, dtype=BF16)
    hs, cs, gates = torch.ops.fastlstm.lstm_layer(xproj, h0, c0, w_hh, False)
    hs32, cs32, gates32 = torch.ops.fastlstm.lstm_layer(xproj.float(), h0.float(), c0.float(),
                                                        w_hh.float(), False)
    assert hs.dtype == BF16 and cs.dtype == gates.dtype == torch.float32
    assert torch.equal(cs, cs32) and torch.equal(gates, gates32)
    assert torch.equal(hs.view(torch.int16), hs32.to(BF16).view(torch.int16))


def test_bf16_nan_stays_nan():
    """A NaN pre-activation gives NaN h, never the infinity or zero that rounding a NaN's
    bits can make."""
    batch, hidden = 2, 16
    xproj = randn(1, batch, 4 * hidden, seed=4).to(BF16)
    xproj[0, 1, 3 * hidden + 5] = float("nan")  # unit 5's o gate, row 1
    zeros = torch.zeros(batch, hidden, dtype=BF16)
    hs, _, _ = torch.ops.fastlstm.lstm_layer(xproj, zeros, randn(batch, hidden, seed=5).to(BF16),
                                             torch.zeros(4 * hidden, hidden, dtype=BF16), False)
    assert torch.isnan(hs[0, 1, 5]) and torch.isfinite(hs[0, 0]).all()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch,hidden", [(1, 37), (5, 64), (64, 256)])
def test_bf16_layer_matches_float64(reverse, batch, hidden):
    """Forward and every gradient of the op in bf16 against the same op in float64 (which
    gradcheck ties to the math) on the same bf16-representable inputs."""
    steps = 7
    args64 = [randn(steps, batch, 4 * hidden, seed=6), randn(batch, hidden, seed=7),
              randn(batch, hidden, seed=8), randn(4 * hidden, hidden, seed=9, scale=hidden ** -0.5)]
    args64 = [a.to(BF16).double() for a in args64]
    args = [a.to(BF16).requires_grad_() for a in args64]
    args64 = [a.requires_grad_() for a in args64]
    up = [randn(steps, batch, hidden, seed=10), randn(steps, batch, hidden, seed=11)]

    def run(inputs):
        hs, cs, _ = torch.ops.fastlstm.lstm_layer(*inputs, reverse)
        loss = (hs.double() * up[0].double()).sum() + (cs.double() * up[1].double()).sum()
        return (hs, cs, *torch.autograd.grad(loss, inputs))

    names = ["hs", "cs", "grad_xproj", "grad_h0", "grad_c0", "grad_w_hh"]
    for name, got, want in zip(names, run(args), run(args64)):
        assert_close(got, want, TOLERANCE[BF16], f"bf16 {name}")


def make_fp32(hidden=48, inputs=20, layers=2, seed=0):
    torch.manual_seed(seed)
    return FastLSTM(inputs, hidden, layers, backend="cpu"), randn(9, 4, inputs, seed=12)


def test_autocast_runs_the_fused_op_in_bf16():
    """As nn.LSTM under CPU autocast: outputs and states in bf16, fp32 parameters and
    gradients, within the bf16 tolerance of the float64 oracle, through our op."""
    lstm, x = make_fp32()
    x.requires_grad_()
    assert choose_path("cpu", x, None, 4, 48) == "fused"
    params64 = {n: p.detach().double().requires_grad_() for n, p in lstm.named_parameters()}
    x64 = x.detach().double().requires_grad_()
    out64, (h64, c64) = reference_lstm(x64, None, params64, num_layers=2)
    with torch.autocast("cpu", dtype=BF16):
        out, (h, c) = lstm(x)
    assert out.dtype == h.dtype == c.dtype == BF16
    for got, want, what in ((out, out64, "output"), (h, h64, "h_n"), (c, c64, "c_n")):
        assert_close(got, want, TOLERANCE[BF16], f"autocast {what}")
    grads = torch.autograd.grad(out.float().sum() + c.float().sum(), [x, *lstm.parameters()])
    grads64 = torch.autograd.grad(out64.sum() + c64.sum(), [x64, *params64.values()])
    assert grads[0].dtype == torch.float32
    for (name, p), g, g64 in zip([("x", x), *lstm.named_parameters()], grads, grads64):
        assert g.dtype == p.dtype
        assert_close(g, g64, TOLERANCE[BF16], f"autocast grad {name}")


def test_cell_under_autocast():
    torch.manual_seed(1)
    cell = FastLSTMCell(20, 40, backend="cpu")
    ref = torch.nn.LSTMCell(20, 40).double()
    ref.load_state_dict(cell.state_dict())
    x, h, c = randn(3, 20, seed=13), randn(3, 40, seed=14), randn(3, 40, seed=15)
    with torch.autocast("cpu", dtype=BF16):
        h1, c1 = cell(x, (h, c))
    want_h, want_c = ref(x.double(), (h.double(), c.double()))
    assert h1.dtype == c1.dtype == BF16
    assert_close(h1, want_h, TOLERANCE[BF16], "cell h")
    assert_close(c1, want_c, TOLERANCE[BF16], "cell c")
