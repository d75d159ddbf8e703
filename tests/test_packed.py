"""PackedSequence input on the fused CPU layer (ops.lstm_layer_packed): FastLSTM against the
float64 oracle and nn.LSTM (packed outputs, final states, every gradient), over length mixes
(random with 1s, all equal, all 1, batch 1), unsorted input, bidirectional, 1-3 layers,
given states, training and no_grad, 1 and 2 threads, AMX and the register tile; the op's
checks, opcheck, dropout masks, and auto's routing."""
import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastlstm.ops  # noqa: F401  (registers fake impls and autograd)
from fastlstm import FastLSTM, _extension, reference_lstm
from fastlstm.module import _fused_unsupported, choose_path
from helpers import TOLERANCE, assert_close, relative_error, skip_absent_kernels

pytestmark = pytest.mark.skipif(
    not (_extension.available() and _extension.cpu_fused(torch.float32)),
    reason="the packed layer runs on the fused CPU layer (x86-64 with AVX-512)")


@dataclasses.dataclass
class Case:
    name: str
    lengths: tuple
    layers: int = 1
    hidden: int = 37
    inputs: int = 11
    bidirectional: bool = False
    given_state: bool = True
    enforce_sorted: bool = False
    batch_first: bool = False

    def __str__(self):
        return self.name


# Hidden 96, batch 9: two workers split the units (a barrier each step); hidden 40, batch 40:
# they split the rows (too few groups of 16 for units); the rest run on one worker.
CASES = [
    Case("mixed_with_1s", (5, 1, 7, 3, 1, 7, 2), layers=2, bidirectional=True),
    Case("equal", (6, 6, 6, 6), layers=2),
    Case("all_length_1", (1, 1, 1), layers=2, bidirectional=True),
    Case("batch_1", (4,), layers=3, hidden=19, bidirectional=True),
    Case("sorted_zero_state", (8, 6, 6, 3, 1), layers=3, hidden=16, enforce_sorted=True,
         given_state=False),
    Case("batch_first_bidir", (3, 9, 4, 1, 9), layers=2, hidden=21, bidirectional=True,
         batch_first=True),
    Case("units_split", (12, 3, 12, 7, 1, 5, 9, 12, 2), hidden=96, inputs=33,
         bidirectional=True),
    Case("rows_split", tuple(1 + (7 * k) % 10 for k in range(40)), hidden=40, inputs=8,
         bidirectional=True),
]


def packed_input(case, x):
    lengths = torch.tensor(case.lengths)
    if case.enforce_sorted:
        assert list(lengths) == sorted(lengths, reverse=True)
    return pack_padded_sequence(x, lengths, batch_first=case.batch_first,
                                enforce_sorted=case.enforce_sorted)


def make_inputs(case, seed):
    """Padded x and (h0, c0) in float64 (None for a zero state)."""
    g = torch.Generator().manual_seed(seed)
    batch, steps = len(case.lengths), max(case.lengths)
    dirs = 2 if case.bidirectional else 1
    shape = (batch, steps, case.inputs) if case.batch_first else (steps, batch, case.inputs)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    hx = None
    if case.given_state:
        hx = tuple(torch.randn(case.layers * dirs, batch, case.hidden, generator=g,
                               dtype=torch.float64) for _ in range(2))
    return x, hx


def run(module, params, case, x, hx, grad, upstream_seed=7):
    """Forward of packed x; with `grad`, the gradients of a random projection of (packed
    output, h_n, c_n) with respect to x, the given states and `params`."""
    with torch.set_grad_enabled(grad):
        out, (h, c) = module(packed_input(case, x), hx)
    assert isinstance(out, PackedSequence)
    res = {"output": out.data, "h_n": h, "c_n": c}
    if not grad:
        return res
    g = torch.Generator().manual_seed(upstream_seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64)).sum()
               for t in res.values())
    leaves = [("x", x)] + ([("h0", hx[0]), ("c0", hx[1])] if hx else []) + list(params.items())
    grads = torch.autograd.grad(loss, [t for _, t in leaves])
    res.update({f"grad_{n}": gr for (n, _), gr in zip(leaves, grads)})
    return res


def compare(case, dtype, grad, backend="cpu", seed=0):
    """Ours in `dtype` against the float64 oracle (the dtype's tolerance) and nn.LSTM."""
    torch.manual_seed(seed)
    fast = FastLSTM(case.inputs, case.hidden, case.layers, batch_first=case.batch_first,
                    bidirectional=case.bidirectional, backend=backend)
    bound = min(0.6, 3 / math.sqrt(case.hidden))
    with torch.no_grad():
        for p in fast.parameters():
            p.uniform_(-bound, bound)
    theirs_lstm = nn.LSTM(case.inputs, case.hidden, case.layers, batch_first=case.batch_first,
                          bidirectional=case.bidirectional)
    theirs_lstm.load_state_dict(fast.state_dict())
    fast.to(dtype)
    theirs_lstm.to(dtype)
    x64, hx64 = make_inputs(case, seed)
    leaf = lambda t: t.to(dtype).requires_grad_(grad)  # noqa: E731
    x, hx = leaf(x64), (tuple(leaf(t) for t in hx64) if hx64 else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # backend="cpu" must run it itself: no fallback warning
        got = run(fast, dict(fast.named_parameters()), case, x, hx, grad)
    theirs = run(theirs_lstm, dict(theirs_lstm.named_parameters()), case, x, hx, grad)
    oracle_params = {n: p.detach().double().requires_grad_(grad)
                     for n, p in fast.named_parameters()}
    oracle = lambda inp, state: reference_lstm(  # noqa: E731
        inp, state, oracle_params, num_layers=case.layers, batch_first=case.batch_first,
        bidirectional=case.bidirectional)
    leaf64 = lambda t: t.to(dtype).double().requires_grad_(grad)  # noqa: E731
    want = run(oracle, oracle_params, case, leaf64(x64),
               tuple(leaf64(t) for t in hx64) if hx64 else None, grad)
    tol = TOLERANCE[dtype]
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == dtype, key
        assert_close(got[key], want[key], tol, f"{key} vs oracle")
        err = relative_error(got[key], theirs[key])
        assert err <= 2 * tol + relative_error(theirs[key], want[key]), \
            f"{key} vs nn.LSTM: relative error {err:.3g}"


@pytest.mark.parametrize("backend", ["cpu", "auto"])
@pytest.mark.parametrize("grad", [True, False], ids=["train", "no_grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_packed_matches_oracle_and_nn_lstm(case, dtype, grad, backend, threads, kernels,
                                           monkeypatch):
    skip_absent_kernels(dtype, kernels)
    if dtype == torch.bfloat16 and not _extension.cpu_fused(dtype):
        pytest.skip("no AVX512-BF16 here")
    if backend == "auto":  # as on the CPU class measured (elsewhere it is torch's LSTM)
        if kernels != "amx" or threads == 1:
            pytest.skip("auto: the class's rule, tested once per dtype")
        monkeypatch.setattr(_extension, "cpu_class", lambda: "amx")
    compare(case, dtype, grad, backend=backend, seed=len(case.name))


@pytest.mark.parametrize("projection", ["step", "gemm"])
def test_packed_input_projection_both_ways(projection, monkeypatch):
    """The input projection inside each step or as one GEMM first (training and inference)."""
    for var in ("FASTLSTM_TRAIN_PROJECTION", "FASTLSTM_INFER_PROJECTION"):
        monkeypatch.setenv(var, projection)
    for grad in (True, False):
        compare(CASES[0], torch.float32, grad, seed=3)


def test_packed_under_autocast_matches_oracle():
    """fp32 weights and input under bf16 autocast, as a user trains: bf16 outputs."""
    if not _extension.cpu_fused(torch.bfloat16):
        pytest.skip("no AVX512-BF16 here")
    case = CASES[0]
    fast = FastLSTM(case.inputs, case.hidden, case.layers, bidirectional=True, backend="cpu")
    x64, hx64 = make_inputs(case, seed=5)
    x = x64.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = fast(packed_input(case, x), tuple(t.float() for t in hx64))
    assert out.data.dtype == h.dtype == c.dtype == torch.bfloat16
    (out.data.float().sum() + h.float().sum()).backward()
    params = {n: p.detach().to(torch.bfloat16).double() for n, p in fast.named_parameters()}
    want, (want_h, _) = reference_lstm(packed_input(case, x64.to(torch.bfloat16).double()),
                                       hx64, params, num_layers=case.layers,
                                       bidirectional=True)
    assert_close(out.data, want.data, 1e-2, "output")
    assert_close(h, want_h, 1e-2, "h_n")
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_backend_cpu_runs_packed_input_itself(monkeypatch):
    def torch_lstm(*args, **kwargs):
        raise AssertionError("torch's LSTM was called")
    monkeypatch.setattr(torch._VF, "lstm", torch_lstm)
    fast = FastLSTM(11, 37, 2, bidirectional=True, backend="cpu")
    x, hx = make_inputs(CASES[0], seed=1)
    out, _ = fast(packed_input(CASES[0], x.float()), tuple(t.float() for t in hx))
    out.data.sum().backward()


def test_dropout_masks_are_torch_lstms():
    """dropout_masks="torch" (the default): the same masks as nn.LSTM's packed path for the
    same seed, so its outputs and gradients match it in training with dropout."""
    fast = FastLSTM(8, 20, num_layers=3, dropout=0.5, bidirectional=True, backend="cpu")
    theirs = nn.LSTM(8, 20, num_layers=3, dropout=0.5, bidirectional=True)
    theirs.load_state_dict(fast.state_dict())
    x = torch.randn(6, 4, 8)
    lengths = torch.tensor([6, 2, 5, 1])
    results = []
    for lstm in (fast, theirs):
        xi = x.clone().requires_grad_()
        torch.manual_seed(3)
        out, (h, c) = lstm(pack_padded_sequence(xi, lengths, enforce_sorted=False))
        (out.data.sum() + h.sum() + c.sum()).backward()
        results.append((out.data, h, c, xi.grad))
    for got, want in zip(*results):
        assert_close(got, want, 1e-5)


def test_double_backward_matches_oracle():
    """create_graph=True runs the composite backward over the packed steps."""
    case = CASES[0]
    fast = FastLSTM(case.inputs, case.hidden, case.layers, bidirectional=True, backend="cpu")
    params = {n: p.detach().double() for n, p in fast.named_parameters()}
    x64, hx64 = make_inputs(case, seed=9)
    results = []
    for module, dtype in ((fast, torch.float32), (None, torch.float64)):
        x = x64.to(dtype).requires_grad_()
        if module is None:
            module = lambda inp, state: reference_lstm(  # noqa: E731
                inp, state, params, num_layers=case.layers, bidirectional=True)
        out, (h, c) = module(packed_input(case, x), tuple(t.to(dtype) for t in hx64))
        g, = torch.autograd.grad((out.data ** 2).sum() + (h * c).sum(), x, create_graph=True)
        gg, = torch.autograd.grad((g ** 2).sum(), x)
        results.append((g, gg))
    for a, b in zip(*results):
        assert_close(a, b, 1e-5)


def packed_op_args(dtype, reverse=False, rows=(4, 4, 3, 1), inputs=9, hidden=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    batch_sizes = torch.tensor(rows)
    x = r(int(batch_sizes.sum()), inputs)
    return (x, batch_sizes, r(rows[0], hidden), r(rows[0], hidden), r(4 * hidden, inputs),
            r(4 * hidden, hidden) * hidden ** -0.5, r(4 * hidden), reverse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_packed_opcheck(dtype):
    if not _extension.cpu_fused(dtype):
        pytest.skip(f"no fused {dtype} here")
    for reverse in (False, True):
        x, bs, h0, c0, w_ih, w_hh, bias, _ = packed_op_args(dtype, reverse)
        for b in (bias, None):
            args = [t.clone().requires_grad_() for t in (x, h0, c0, w_ih, w_hh)]
            bb = None if b is None else b.clone().requires_grad_()
            full = (args[0], bs, *args[1:], bb, reverse)
            torch.library.opcheck(torch.ops.fastlstm.lstm_layer_packed.default, (*full, True))
            torch.library.opcheck(torch.ops.fastlstm.lstm_layer_packed.default,
                                  tuple(t.detach() if isinstance(t, torch.Tensor) else t
                                        for t in full) + (False,))
            hs, h_n, c_n, cs, gates = torch.ops.fastlstm.lstm_layer_packed(*full, True)
            torch.library.opcheck(
                torch.ops.fastlstm.lstm_layer_packed_backward.default,
                (torch.randn_like(hs), torch.randn_like(cs), torch.randn_like(h_n),
                 torch.randn_like(c_n),
                 args[0].detach(), bs, *[a.detach() for a in args[1:]], hs.detach(),
                 cs.detach(), gates.detach(), reverse))


@pytest.mark.parametrize("rows,message", [
    ((4, 5, 1), "never grow"),       # a batch size that grows
    ((4, 0), "never grow"),          # an empty step
    ((3, 3, 1), "start at the batch"),  # not starting at h0's batch
])
def test_packed_op_rejects_bad_batch_sizes(rows, message):
    x, bs, h0, c0, w_ih, w_hh, bias, reverse = packed_op_args(torch.float32)
    bad = torch.tensor(rows)
    x = torch.randn(max(int(bad.sum()), 1), x.size(1))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastlstm.lstm_layer_packed(x, bad, h0, c0, w_ih, w_hh, bias, reverse, False)
    with pytest.raises(RuntimeError, match="sum to x's rows"):
        torch.ops.fastlstm.lstm_layer_packed(torch.randn(5, x.size(1)), bs, h0, c0, w_ih, w_hh,
                                             bias, reverse, False)


def test_module_rejects_packed_input_of_the_wrong_size():
    fast = FastLSTM(11, 37, backend="cpu")
    x = torch.randn(5, 2, 12)
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        fast(pack_padded_sequence(x, torch.tensor([5, 3])))


def test_packed_routing(monkeypatch):
    """auto takes ours on the CPU classes with a measured packed rule (AVX-512, with or
    without BF16 and AMX) and keeps torch's packed LSTM on the others; float64 keeps it
    with its reason."""
    data = torch.randn(10, 4)
    assert _fused_unsupported(data, packed=True) is None
    assert "float64" in _fused_unsupported(data.double(), packed=True)
    assert choose_path("cpu", data, None, 4, 32, steps=5, grad=True, packed=True) == "fused"
    for cls, want in (("amx", "fused"), ("avx512_bf16", "fused"), ("avx2", "aten"),
                      ("other", "aten")):
        monkeypatch.setattr(_extension, "cpu_class", lambda cls=cls: cls)
        for grad in (False, True):
            assert choose_path("auto", data, None, 4, 32, steps=5, grad=grad,
                               packed=True) == want, cls
    with pytest.warns(UserWarning, match="PackedSequence input in torch.float64"):
        assert choose_path("cpu", data.double(), _fused_unsupported(data.double(), packed=True),
                           4, 32, packed=True) == "aten"


def test_compiled_matches_eager():
    """torch.compile of a module fed packed input (a graph break at the batch sizes' values):
    output, states and the input's gradient as eager."""
    fast = FastLSTM(4, 20, 2, bidirectional=True, backend="cpu")
    compiled = torch.compile(fast)
    x = torch.randn(6, 3, 4, requires_grad=True)
    results = []
    for fn in (fast, compiled):
        out, (h, c) = fn(pack_padded_sequence(x, torch.tensor([6, 2, 4]), enforce_sorted=False))
        grad, = torch.autograd.grad(out.data.square().sum() + h.sum() + c.sum(), x)
        results.append((out.data, h, c, grad))
    for got, want in zip(results[1], results[0]):
        assert_close(got, want, 1e-6)
