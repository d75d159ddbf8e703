"""The registered ops themselves: gradcheck in float64, opcheck (schema, fake impls,
autograd registration), and torch.compile with fullgraph=True."""
import pytest
import torch

import fastlstm  # noqa: F401  (registers fake impls and autograd)
from fastlstm import FastLSTM, _extension
from helpers import assert_close

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def layer_args(device, steps=3, batch=2, hidden=5, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    args = [make(steps, batch, 4 * hidden), make(batch, hidden), make(batch, hidden),
            make(4 * hidden, hidden) * 0.5]
    return [a.requires_grad_(requires_grad) for a in args]


def test_extension_is_built():
    assert _extension.available(), _extension.load_error


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_gradcheck(device, reverse):
    def f(xproj, h0, c0, w_hh):
        hs, cs, _ = torch.ops.fastlstm.lstm_layer(xproj, h0, c0, w_hh, reverse)
        return hs, cs  # gates are saved activations: not differentiable

    assert torch.autograd.gradcheck(f, layer_args(device))


@pytest.mark.parametrize("device", DEVICES)
def test_step_gradcheck(device):
    xproj, h, c, w = layer_args(device, steps=1)
    f = lambda *a: torch.ops.fastlstm.lstm_step(*a)[:2]  # noqa: E731
    assert torch.autograd.gradcheck(f, [xproj[0].detach().requires_grad_(), h, c, w])


@pytest.mark.parametrize("device", DEVICES)
def test_step_equals_layer_of_one_step(device):
    xproj, h, c, w = layer_args(device, steps=1, requires_grad=False)
    h1, c1, g1 = torch.ops.fastlstm.lstm_step(xproj[0], h, c, w)
    hs, cs, gs = torch.ops.fastlstm.lstm_layer(xproj, h, c, w, False)
    assert torch.equal(h1, hs[0]) and torch.equal(c1, cs[0]) and torch.equal(g1, gs[0])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for dtype in (torch.float32, torch.float64):
        for reverse in (False, True):
            args = [a.detach().to(dtype).requires_grad_() for a in layer_args(device)]
            torch.library.opcheck(torch.ops.fastlstm.lstm_layer.default, (*args, reverse))
            hs, cs, gates = torch.ops.fastlstm.lstm_layer(*args, reverse)
            # As autograd calls it: no input requires grad (no double backward).
            back_args = (torch.randn_like(hs), torch.randn_like(cs),
                         *[a.detach() for a in args[1:]], hs.detach(), cs.detach(),
                         gates.detach(), reverse)
            torch.library.opcheck(torch.ops.fastlstm.lstm_layer_backward.default, back_args)
            torch.library.opcheck(torch.ops.fastlstm.lstm_layer_backward.default,
                                  (back_args[0], None, *back_args[2:]))
        xproj, h, c, w = [a.detach().to(dtype) for a in layer_args(device, steps=1)]
        torch.library.opcheck(torch.ops.fastlstm.lstm_step.default,
                              (xproj[0].requires_grad_(), h.requires_grad_(), c, w))


@pytest.mark.parametrize("reverse", [False, True])
def test_layer_gradgradcheck(reverse):
    """Second-order gradients of the layer op (its backward differentiated: create_graph),
    checked numerically in float64, with a gradient on c as well as on h."""
    args = [a.detach().double().requires_grad_() for a in layer_args("cpu", steps=3)]
    def f(*a):
        hs, cs, _ = torch.ops.fastlstm.lstm_layer(*a, reverse)
        return hs, cs
    assert torch.autograd.gradgradcheck(f, args)


def test_step_gradgradcheck():
    xproj, h, c, w = [a.detach().double().requires_grad_() for a in layer_args("cpu", steps=1)]
    f = lambda *a: torch.ops.fastlstm.lstm_step(*a)[:2]  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (xproj[0].detach().requires_grad_(), h, c, w))


def test_op_rejects_bad_shapes():
    xproj, h, c, w = layer_args("cpu", requires_grad=False)
    with pytest.raises(RuntimeError,
                       match=r"h0 must be \[batch, hidden\] = \[2, 5\], got \[1, 5\]"):
        torch.ops.fastlstm.lstm_layer(xproj, h[:1], c, w, False)
    with pytest.raises(RuntimeError, match="4\\*hidden"):
        torch.ops.fastlstm.lstm_layer(xproj[..., :-1], h, c, w, False)
    with pytest.raises(RuntimeError, match="dtype mismatch: Float vs Double"):
        torch.ops.fastlstm.lstm_layer(xproj, h.float(), c, w, False)
    with pytest.raises(RuntimeError, match="at least one step"):
        torch.ops.fastlstm.lstm_layer(xproj[:0], h, c, w, False)
    with pytest.raises(RuntimeError, match="float32, float64 or bfloat16 only, got Half"):
        args = [t.half() for t in (xproj, h, c, w)]
        torch.ops.fastlstm.lstm_layer(*args, False)


class CharModel(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 12)
        self.lstm = FastLSTM(12, 24, num_layers=2, batch_first=True, backend=backend)
        self.head = torch.nn.Linear(24, 20)

    def forward(self, ids, state=None):
        out, state = self.lstm(self.embed(ids), state)
        return self.head(out), state


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = CharModel("cpu")
    ids = torch.randint(0, 20, (3, 9))
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):  # the second call carries state, and must not recompile into a break
        eager_logits, (h, c) = model(ids)
        logits, (hc, cc) = compiled(ids)
        assert_close(logits, eager_logits, 1e-5, "compiled logits")
        assert_close(hc, h, 1e-5, "compiled h_n")
        eager_grads = torch.autograd.grad(eager_logits.square().sum(), list(model.parameters()))
        grads = torch.autograd.grad(logits.square().sum(), list(model.parameters()))
        for g_c, g_e in zip(grads, eager_grads):
            assert_close(g_c, g_e, 1e-5, "compiled gradient")
