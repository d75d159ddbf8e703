"""The persistent stack op (p4: every layer of a unidirectional stack in one launch, the
layers as a wavefront, products as warp MMAs; csrc/core/lstm_persistent_mma.h) through
FastLSTM against the float64 oracle: outputs, final states and all gradients. On CPU tensors
the op runs the CUDA kernel's per-warp code on the host (run_mma_stack_on_host), so these
tests check its tiling, wave schedule, torch glue and backward without a GPU; test_gpu.py
runs the kernel itself."""
import pytest
import torch

import fastlstm
from fastlstm import FastLSTM, ops
from helpers import assert_close, relative_error
from test_lstm import CASES, Case, compare_to_oracle, outputs_and_grads

STACK_CASES = [c for c in CASES if not c.lengths and not c.kwargs.get("bidirectional")
               and not c.kwargs.get("proj_size")] + [
    Case("four_layers_h70", layers=4, hidden=70, batch=5, seq=6),
    Case("eight_layers", layers=8, hidden=9, batch=2, seq=3),
    # hidden a multiple of 4: h read in chunks of 4 (the TF32 MMA's vector loads), as at S1
    Case("three_layers_h24_chunks", layers=3, hidden=24, batch=5, seq=4),
]


@pytest.fixture
def through_stack(monkeypatch):
    """FastLSTM's fused path runs every module through the stack op (the module itself picks
    it only for CUDA tensors); the list counts the calls."""
    calls = []
    forward_fused = FastLSTM._forward_fused

    def through_the_stack(self, x, state, layer_op=None, stack=False, embedded=None):
        assert self._stack_fits_one_launch() and embedded is None
        calls.append(self.num_layers)
        return forward_fused(self, x, state, stack=True)

    monkeypatch.setattr(FastLSTM, "_forward_fused", through_the_stack)
    return calls


@pytest.mark.parametrize("case", STACK_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_stack_matches_oracle(through_stack, case, dtype):
    compare_to_oracle(case, "cpu", "cpu", dtype, seed=2000 + len(case.name))
    assert through_stack, "the stack op did not run"


def test_stack_comparison_can_fail(through_stack, monkeypatch):
    """A stack op whose in-kernel input projection used a W_ih off by 0.1% must fail."""
    case = next(c for c in STACK_CASES if c.name == "four_layers_h70")
    real = torch.ops.fastlstm.lstm_stack_persistent

    def slightly_wrong_w_ih(xproj, h0, c0, w_ih, bias, w_hh):
        return real(xproj, h0, c0, [w * 1.001 for w in w_ih], bias, w_hh)

    monkeypatch.setattr(ops.torch.ops.fastlstm, "lstm_stack_persistent", slightly_wrong_w_ih)
    got, want, _, _ = outputs_and_grads(case, "cpu", "cpu", torch.float64, seed=3)
    assert relative_error(got["output"], want["output"]) > 1e-6
    assert through_stack


def stack_args(layers=3, steps=4, batch=3, hidden=6, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
                                  * scale).requires_grad_()
    return (make(steps, batch, 4 * hidden), make(layers, batch, hidden),
            make(layers, batch, hidden),
            [make(4 * hidden, hidden, scale=0.5) for _ in range(layers - 1)],
            [make(4 * hidden) for _ in range(layers - 1)] if bias else [],
            [make(4 * hidden, hidden, scale=0.5) for _ in range(layers)])


@pytest.mark.parametrize("layers,bias", [(1, True), (2, False), (3, True)])
def test_stack_gradcheck(layers, bias):
    xproj, h0, c0, w_ih, b, w_hh = stack_args(layers, bias=bias)
    n_ih, n_b = len(w_ih), len(b)

    def f(xproj, h0, c0, *weights):
        w_ih, b, w_hh = weights[:n_ih], weights[n_ih:n_ih + n_b], weights[n_ih + n_b:]
        hs, cs, _ = torch.ops.fastlstm.lstm_stack_persistent(xproj, h0, c0, list(w_ih), list(b),
                                                             list(w_hh))
        return hs, cs

    assert torch.autograd.gradcheck(f, (xproj, h0, c0, *w_ih, *b, *w_hh))


def test_stack_opcheck():
    for bias in (True, False):
        args = stack_args(bias=bias)
        torch.library.opcheck(torch.ops.fastlstm.lstm_stack_persistent.default, args)


def test_each_layer_is_what_the_layer_op_returns():
    """Layer l's slice of the outputs is lstm_layer's result for it (the backward relies on
    it), with the layers above fed the layer below's h through W_ih and the bias."""
    xproj, h0, c0, w_ih, bias, w_hh = (a if isinstance(a, list) else a.detach()
                                       for a in stack_args(layers=3))
    w_ih, bias, w_hh = ([t.detach() for t in ts] for ts in (w_ih, bias, w_hh))
    hs, cs, gates = torch.ops.fastlstm.lstm_stack_persistent(xproj, h0, c0, w_ih, bias, w_hh)
    layer_in = None
    for layer in range(3):
        xp = xproj if layer == 0 else layer_in @ w_ih[layer - 1].t() + bias[layer - 1]
        want = torch.ops.fastlstm.lstm_layer(xp, h0[layer], c0[layer], w_hh[layer], False)
        for got, ref, name in zip((hs[layer], cs[layer], gates[layer]), want,
                                  ("hs", "cs", "gates")):
            assert_close(got, ref, 1e-12, f"layer {layer} {name}")
        layer_in = want[0]


def test_stack_rejects_bad_input():
    xproj, h0, c0, w_ih, bias, w_hh = (a if isinstance(a, list) else a.detach()
                                       for a in stack_args(layers=3))
    op = torch.ops.fastlstm.lstm_stack_persistent
    with pytest.raises(RuntimeError, match="w_ih for each of the 2 layers"):
        op(xproj, h0, c0, w_ih[:1], bias, w_hh)
    with pytest.raises(RuntimeError, match="bias must be empty or one per layer"):
        op(xproj, h0, c0, w_ih, bias[:1], w_hh)
    with pytest.raises(RuntimeError, match=r"h0 and c0 must be \[layers = 3"):
        op(xproj, h0[:2], c0, w_ih, bias, w_hh)
    with pytest.raises(RuntimeError, match="1 to 8 layers"):
        op(xproj, h0, c0, w_ih * 5, bias * 5, w_hh * 3)
    with pytest.raises(RuntimeError, match="w_ih of a layer above"):
        op(xproj, h0, c0, [w_ih[0], w_ih[1][:, :5]], bias, w_hh)
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        op(xproj, h0, c0, [w_ih[0], w_ih[1].float()], bias, w_hh)
    with pytest.raises(RuntimeError, match="float32 or float64 only"):
        op(xproj.half(), h0.half(), c0.half(), [w.half() for w in w_ih],
           [b.half() for b in bias], [w.half() for w in w_hh])


def test_module_picks_the_stack_only_where_it_fits():
    assert FastLSTM(4, 8, 3)._stack_fits_one_launch()
    assert not FastLSTM(4, 8, 9)._stack_fits_one_launch()
    assert not FastLSTM(4, 8, 2, bidirectional=True)._stack_fits_one_launch()
    dropped = FastLSTM(4, 8, 2, dropout=0.5)
    assert not dropped._stack_fits_one_launch()
    assert dropped.eval()._stack_fits_one_launch()  # no dropout at inference


@pytest.mark.parametrize("value,version", [(None, 1), ("1", 1), ("4", 4), ("x", 1)])
def test_persistent_version(monkeypatch, value, version):
    if value is None:
        monkeypatch.delenv("FASTLSTM_PERSISTENT_VERSION", raising=False)
    else:
        monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", value)
    assert fastlstm.ops.persistent_version() == version
