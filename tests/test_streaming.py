"""The short-call path (streaming inference): ops.stack_inference, every layer of each step
in one call over packed weights kept across calls, against the float64 oracle; FastLSTM and
FastLSTMCell taking it without gradient; its weight cache noticing every kind of change."""
import copy
import pickle

import pytest
import torch
from torch import nn

import fastlstm  # noqa: F401  (registers fake impls)
from fastlstm import FastLSTM, FastLSTMCell, _extension, ops
from fastlstm.module import _cpu_auto_fused
from fastlstm.reference import lstm_cell_reference, reference_lstm
from helpers import TOLERANCE, assert_close, skip_absent_kernels
from torch.utils._python_dispatch import TorchDispatchMode

pytestmark = pytest.mark.skipif(not _extension.cpu_fused(torch.float32),
                                reason="needs the fused CPU layer (x86-64 with AVX-512)")
DTYPES = [pytest.param(torch.float32, id="fp32"),
          pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.skipif(
              not _extension.cpu_fused(torch.bfloat16), reason="needs AVX512-BF16"))]

# (layers, inputs, hidden, batch, steps). At 2 threads a layer step of >= 0.5 MFLOP splits:
# (2, 64, 256, 1, 1) and (3, 5, 200, 3, 3) the units (a barrier after every layer), (2, 24,
# 96, 9, 2) the rows; the rest run on one worker. Hidden 37, 200, 17: a partial group of 16
# (37, 17: odd bf16 rows too); inputs 7, 5, 33: odd x rows.
CASES = [(1, 7, 37, 1, 1), (2, 16, 48, 3, 2), (3, 5, 200, 3, 3), (2, 64, 256, 1, 1),
         (2, 24, 96, 9, 2), (2, 33, 17, 4, 3), (1, 32, 16, 1, 3)]


def randn(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def stack_inputs(layers, inputs, hidden, batch, steps, bias, dtype, seed):
    """x, h0, c0 and nn.LSTM-named parameters, representable in `dtype`, in float32."""
    q = lambda t: t.to(dtype).float()  # noqa: E731
    params = {}
    for layer in range(layers):
        fan_in = inputs if layer == 0 else hidden
        params[f"weight_ih_l{layer}"] = q(randn(4 * hidden, fan_in, seed=seed + 10 * layer,
                                                scale=fan_in ** -0.5))
        params[f"weight_hh_l{layer}"] = q(randn(4 * hidden, hidden, seed=seed + 10 * layer + 1,
                                                scale=hidden ** -0.5))
        if bias:
            params[f"bias_ih_l{layer}"] = q(randn(4 * hidden, seed=seed + 10 * layer + 2))
            params[f"bias_hh_l{layer}"] = q(randn(4 * hidden, seed=seed + 10 * layer + 3))
    x = q(randn(steps, batch, inputs, seed=seed + 100))
    h0 = q(randn(layers, batch, hidden, seed=seed + 101))
    c0 = q(randn(layers, batch, hidden, seed=seed + 102))
    return x, h0, c0, params


def columns(params, layers, bias):
    get = lambda name: [params[f"{name}_l{k}"] for k in range(layers)]  # noqa: E731
    return (get("weight_ih"), get("weight_hh"),
            get("bias_ih") if bias else [], get("bias_hh") if bias else [])


def oracle(x, h0, c0, params, layers, bias):
    out, (h_n, c_n) = reference_lstm(x.double(), (h0.double(), c0.double()),
                                     {k: v.double() for k, v in params.items()},
                                     num_layers=layers, bias=bias)
    return out, h_n, c_n


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "L%dI%dH%dB%dS%d" % c)
def test_stack_inference_matches_float64(case, dtype, bias, kernels, threads):
    """Each build of the kernels (the `kernels` fixture: AMX tiles or the AVX-512 register
    tile for bf16, AVX-512 or AVX2 for fp32)."""
    skip_absent_kernels(dtype, kernels)
    layers = case[0]
    x, h0, c0, params = stack_inputs(*case, bias, dtype, seed=sum(case))
    got = ops.stack_inference(x, h0, c0, *columns(params, layers, bias), dtype)
    for name, g, want in zip(("out", "h_n", "c_n"), got, oracle(x, h0, c0, params, layers, bias)):
        assert g.dtype == dtype, name
        assert_close(g, want, TOLERANCE[dtype], f"{dtype} {name}")
    # Inputs in the compute dtype itself (a bf16 module) give the same.
    again = ops.stack_inference(x.to(dtype), h0.to(dtype), c0.to(dtype),
                                *[[w.to(dtype) for w in col] for col in
                                  columns(params, layers, bias)], dtype)
    for g, a in zip(got, again):
        assert torch.equal(g, a)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stack_inference_is_bitwise_repeatable(dtype, threads):
    case = (2, 64, 256, 1, 3)
    x, h0, c0, params = stack_inputs(*case, True, dtype, seed=5)
    cols = columns(params, 2, True)
    first = ops.stack_inference(x, h0, c0, *cols, dtype)
    for _ in range(3):
        for a, b in zip(first, ops.stack_inference(x, h0, c0, *cols, dtype)):
            assert torch.equal(a, b)


def test_stack_inference_without_the_fused_layer(monkeypatch):
    """FASTLSTM_CPU_FUSED=0, and float64 (which the fused layer does not run): layer by layer
    through the layer op, the same contract."""
    case = (3, 5, 40, 3, 2)
    for dtype, env in ((torch.float32, "0"), (torch.float64, "1")):
        monkeypatch.setenv("FASTLSTM_CPU_FUSED", env)
        x, h0, c0, params = stack_inputs(*case, True, torch.float32, seed=9)
        got = ops.stack_inference(x, h0, c0, *columns(params, 3, True), dtype)
        for g, want in zip(got, oracle(x, h0, c0, params, 3, True)):
            assert g.dtype == dtype
            assert_close(g, want, TOLERANCE[dtype] if dtype == torch.float32 else 1e-12)


def test_stack_inference_opcheck():
    x, h0, c0, params = stack_inputs(2, 9, 20, 3, 2, True, torch.float32, seed=3)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for bias in (True, False):
            torch.library.opcheck(torch.ops.fastlstm.lstm_stack_inference.default,
                                  (x, h0, c0, *columns(params, 2, bias), dtype))


def test_stack_inference_rejects_bad_input():
    x, h0, c0, params = stack_inputs(2, 9, 20, 3, 2, True, torch.float32, seed=3)
    w_ih, w_hh, b_ih, b_hh = columns(params, 2, True)
    bad = [((x, h0, c0, w_ih[:1], w_hh, b_ih, b_hh), "as many w_ih as w_hh"),
           ((x, h0, c0, w_ih, w_hh, b_ih[:1], b_hh), "one per layer"),
           ((x[:0], h0, c0, w_ih, w_hh, b_ih, b_hh), "seq >= 1"),
           ((x, h0[:, :2], c0, w_ih, w_hh, b_ih, b_hh), "h0 and c0 must be"),
           ((x[..., :4], h0, c0, w_ih, w_hh, b_ih, b_hh), "w_ih must be"),
           ((x, h0, c0, w_ih, w_hh, [b[:5] for b in b_ih], b_hh), "biases must be")]
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            ops.stack_inference(*args, torch.float32)
    with pytest.raises(RuntimeError, match="dtype float32, bfloat16 or float64"):
        ops.stack_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, torch.float16)


class StackCalls(TorchDispatchMode):
    """The stack op's calls while active (the dtype each computes in), however they are
    made: ops.stack_inference from Python or fastlstm._C.streaming_call from C++."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.fastlstm.lstm_stack_inference.default:
            self.dtypes.append(args[-1])
        return func(*args, **(kwargs or {}))


def count_calls(monkeypatch, owner, name):
    """A list that grows by one at each call of owner.name (which still runs)."""
    calls, real = [], getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, spy)
    return calls


def raises_as(theirs, ours, bad):
    """Without gradient, each (input, hx) of `bad` raises in `ours` what it raises in torch's."""
    with torch.no_grad():
        for inp, hx in bad:
            with pytest.raises(Exception) as want:
                theirs(inp, hx)
            with pytest.raises(type(want.value)):
                ours(inp, hx)


def module_oracle(module, x, hx):
    params = {k: v.detach().double() for k, v in module.named_parameters()}
    return reference_lstm(x.double(), None if hx is None else tuple(t.double() for t in hx),
                          params, num_layers=module.num_layers, bias=module.bias,
                          batch_first=module.batch_first)


@pytest.mark.parametrize("backend", ["auto", "cpu"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_module_short_calls_take_the_stack_op(dtype, batch_first, backend):
    """FastLSTM without gradient on 1-3 steps: the stack op, with nn.LSTM's outputs (bf16:
    autocast over an fp32 module, as a CPU user runs it); given and zero states, unbatched
    input. auto where this CPU class's streaming rule takes our op (hidden 256, at most 16
    rows: on AMX and Zen 4 it does)."""
    torch.manual_seed(0)
    lstm = FastLSTM(20, 256, 2, batch_first=batch_first, backend=backend).eval()
    autocast = dtype == torch.bfloat16
    for steps, batch, given in ((1, 1, True), (2, 4, False), (3, 5, True), (1, None, True)):
        shape = ((steps, 20) if batch is None else
                 (batch, steps, 20) if batch_first else (steps, batch, 20))
        x = torch.randn(*shape)
        state_shape = (2, 256) if batch is None else (2, batch, 256)
        hx = (torch.randn(state_shape), torch.randn(state_shape)) if given else None
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast), \
                StackCalls() as calls:
            out, (h_n, c_n) = lstm(x, hx)
        takes_ours = backend == "cpu" or _cpu_auto_fused(dtype, False, steps, batch or 1, 256,
                                                         streaming=True)
        assert calls.dtypes == ([dtype] if takes_ours else []), f"{steps} steps"
        want_out, (want_h, want_c) = module_oracle(lstm, x, hx)
        for name, g, w in (("out", out, want_out), ("h_n", h_n, want_h), ("c_n", c_n, want_c)):
            assert g.dtype == dtype, name
            assert_close(g, w, TOLERANCE[dtype], f"{steps} steps {name}")


def test_module_keeps_other_paths_for_what_the_stack_op_does_not_run():
    """Gradient wanted, 4+ steps, bidirectional, training mode with dropout between layers
    (nn.LSTM drops out there without gradient too): not the stack op."""
    torch.manual_seed(0)
    lstm = FastLSTM(8, 32, 2, backend="cpu")
    with StackCalls() as calls:
        lstm(torch.randn(2, 3, 8))  # training: gradients wanted
        with torch.no_grad():
            lstm(torch.randn(4, 3, 8))
            FastLSTM(8, 32, 2, bidirectional=True, backend="cpu")(torch.randn(2, 3, 8))
            FastLSTM(8, 32, 2, dropout=0.5, backend="cpu")(torch.randn(2, 3, 8))
    assert calls.dtypes == []


def test_gradient_to_a_given_state_of_a_frozen_model():
    """Frozen parameters and input, a state that wants a gradient: not the stack op (it has
    no backward), and the gradient reaches the state as the oracle's does."""
    torch.manual_seed(0)
    lstm = FastLSTM(8, 32, 2, backend="cpu").requires_grad_(False)
    x = torch.randn(1, 3, 8)
    h0 = torch.randn(2, 3, 32, requires_grad=True)
    c0 = torch.randn(2, 3, 32, requires_grad=True)
    with StackCalls() as calls:
        out, (h_n, c_n) = lstm(x, (h0, c0))
    (out.sum() + c_n.sum()).backward()
    h064, c064 = (t.detach().double().requires_grad_() for t in (h0, c0))
    want, (_, want_c) = module_oracle(lstm, x, (h064, c064))
    (want.sum() + want_c.sum()).backward()
    assert calls.dtypes == []
    assert_close(h0.grad, h064.grad, TOLERANCE[torch.float32], "grad h0")
    assert_close(c0.grad, c064.grad, TOLERANCE[torch.float32], "grad c0")


def test_module_stack_cache_notices_weight_changes():
    """The packed weights kept across calls must follow every change of a parameter: an
    in-place update (optimizer step), load_state_dict, a replaced Parameter, .data set."""
    torch.manual_seed(0)
    lstm = FastLSTM(16, 48, 2, backend="cpu").eval()
    x, hx = torch.randn(1, 2, 16), (torch.randn(2, 2, 48), torch.randn(2, 2, 48))

    def check(what):
        with torch.no_grad():
            out, (h_n, c_n) = lstm(x, hx)
        want, (want_h, want_c) = module_oracle(lstm, x, hx)
        assert_close(out, want, TOLERANCE[torch.float32], what)
        assert_close(c_n, want_c, TOLERANCE[torch.float32], what)
        return out

    before = check("first call")
    with torch.no_grad():
        lstm.weight_hh_l1.mul_(-1.5)  # in place, as an optimizer
    after = check("after an in-place update")
    assert not torch.equal(before, after)
    with torch.no_grad():
        lstm.bias_ih_l0.add_(0.5)
    check("after an in-place bias update")
    state = {k: torch.randn_like(v) * 0.2 for k, v in lstm.state_dict().items()}
    lstm.load_state_dict(state)
    check("after load_state_dict")
    lstm.weight_ih_l0 = nn.Parameter(torch.randn_like(lstm.weight_ih_l0))
    check("after a replaced Parameter")
    lstm.weight_hh_l0.data = torch.randn_like(lstm.weight_hh_l0)
    check("after .data set")


def _fused_adam_step(module):
    torch.optim.Adam(module.parameters(), lr=0.05, fused=True).step()


def _write_through_data(module):
    for p in module.parameters():
        p.data.mul_(-0.75)


@pytest.mark.parametrize("change", [_fused_adam_step, _write_through_data],
                         ids=["fused Adam step", "write through .data"])
@pytest.mark.parametrize("steps", [1, 20])
@pytest.mark.parametrize("dtype", DTYPES)
def test_caches_notice_writes_that_bump_no_version(change, steps, dtype):
    """torch's fused optimizers and writes through .data change parameters in place without
    bumping their version counters: the casts and packed weights kept across no_grad calls
    (module.py's _cast, the ops' weight caches) must notice them all the same. After such a
    change every call (the stack op for a step, the layer op for 20; the cell) equals a fresh
    copy's, which shares no cache entry."""
    torch.manual_seed(0)
    lstm = FastLSTM(16, 64, 2, backend="cpu").eval()
    cell = FastLSTMCell(16, 64, backend="cpu")
    x = torch.randn(steps, 32, 16)
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16)

    def outputs(lstm, cell):
        with torch.no_grad(), autocast:
            return lstm(x)[0], cell(x[0])[0]

    before = outputs(lstm, cell)
    for module in (lstm, cell):
        for p in module.parameters():
            p.grad = torch.randn_like(p)
        change(module)
    after = outputs(lstm, cell)
    fresh = outputs(copy.deepcopy(lstm), copy.deepcopy(cell))
    for got, want, old in zip(after, fresh, before):
        assert torch.equal(got, want)
        assert not torch.equal(got, old)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cell_without_gradient_takes_the_stack_op(dtype, threads):
    calls = StackCalls()
    torch.manual_seed(0)
    autocast = dtype == torch.bfloat16
    for hidden, batch, bias in ((512, 1, True), (37, 3, False), (256, 9, True)):
        cell = FastLSTMCell(24, hidden, bias=bias, backend="cpu")
        x, h, c = torch.randn(batch, 24), torch.randn(batch, hidden), torch.randn(batch, hidden)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast), calls:
            h_new, c_new = cell(x, (h, c))
        params = [p.detach().double() for p in cell.parameters()]
        want_h, want_c = lstm_cell_reference(x.double(), h.double(), c.double(), *params)
        assert h_new.dtype == dtype and c_new.dtype == dtype
        assert_close(h_new, want_h, TOLERANCE[dtype], f"H{hidden} h")
        assert_close(c_new, want_c, TOLERANCE[dtype], f"H{hidden} c")
        with torch.no_grad():  # an in-place update must be seen
            cell.weight_hh.mul_(0.5)
            with calls:
                h_new, _ = cell(x, (h, c))
        want_h, _ = lstm_cell_reference(x.double(), h.double(), c.double(),
                                        *[p.detach().double() for p in cell.parameters()])
        if dtype == torch.float32:
            assert_close(h_new, want_h, TOLERANCE[dtype], f"H{hidden} h after update")
    assert len(calls.dtypes) == 6


def test_module_short_calls_without_gradient_check_as_nn_lstm():
    """A short call without gradient takes a quicker route (FastLSTM._streaming_call); what
    it does not take (wrong sizes, dtypes, states) still raises nn.LSTM's errors."""
    lstm = FastLSTM(8, 16, 2, backend="cpu").eval()
    theirs = torch.nn.LSTM(8, 16, 2).eval()
    x = torch.randn(1, 3, 8)
    bad = [(torch.randn(1, 3, 9), None),
           (x, (torch.randn(2, 4, 16), torch.randn(2, 3, 16))),
           (x, (torch.randn(1, 3, 16), torch.randn(1, 3, 16))),
           (x, (torch.randn(2, 3, 16).double(), torch.randn(2, 3, 16))),
           (x.double(), None),
           (torch.randn(1, 1, 3, 8), None)]
    raises_as(theirs, lstm, bad)


def test_module_short_calls_run_in_cpp_and_follow_the_module(monkeypatch):
    """fastlstm._C.streaming_call runs a short call without gradient (the module's Python
    route, FastLSTM._forward, not called), and follows what changes between calls: an
    attribute set (batch_first, backend, train mode with dropout), parameters swapped in
    the module's dict (torch.func.functional_call), a copied or unpickled module."""
    torch.manual_seed(0)
    lstm = FastLSTM(8, 32, 2, dropout=0.3, backend="cpu").eval()
    x = torch.randn(2, 3, 8)
    python_route = count_calls(monkeypatch, FastLSTM, "_forward")

    def check(module, x, what, params=None):
        with torch.no_grad():
            out, (h_n, c_n) = (module(x) if params is None else
                               torch.func.functional_call(module, params, (x,)))
        if params is not None:
            module = copy.deepcopy(module)
            module.load_state_dict(params)
        want, (want_h, want_c) = module_oracle(module, x, None)
        for name, got, w in (("out", out, want), ("h_n", h_n, want_h), ("c_n", c_n, want_c)):
            assert_close(got, w, TOLERANCE[torch.float32], f"{what}: {name}")

    check(lstm, x, "first call")
    lstm.batch_first = True
    check(lstm, x.transpose(0, 1), "batch_first set")
    lstm.batch_first = False
    swapped = {k: torch.randn_like(v) * 0.3 for k, v in lstm.named_parameters()}
    check(lstm, x, "functional_call", swapped)
    check(lstm, x, "after functional_call")
    assert python_route == []
    lstm.train()  # dropout between the layers, as nn.LSTM's: the Python route
    with torch.no_grad():
        lstm(x)
    assert len(python_route) == 1
    lstm.eval()
    lstm.backend = "aten"
    check(lstm, x, "backend aten")
    assert len(python_route) == 2
    lstm.backend = "cpu"
    for other in (copy.deepcopy(lstm), pickle.loads(pickle.dumps(lstm))):
        check(other, x, "a copy")
    assert len(python_route) == 2
    assert "_streaming_route" not in pickle.loads(pickle.dumps(lstm)).__dict__


def test_cell_short_calls_run_in_cpp(monkeypatch):
    """FastLSTMCell without gradient: batched calls through fastlstm._C.streaming_call (its
    Python route, which calls ops.stack_inference, not taken), with and without a state;
    unbatched ones through the Python route; what neither takes raises nn.LSTMCell's
    errors."""
    python_route = count_calls(monkeypatch, ops, "stack_inference")
    torch.manual_seed(0)
    cell = FastLSTMCell(24, 40, backend="cpu")
    theirs = nn.LSTMCell(24, 40)
    theirs.load_state_dict(cell.state_dict())
    x, h, c = torch.randn(3, 24), torch.randn(3, 40), torch.randn(3, 40)
    params = [p.detach().double() for p in cell.parameters()]
    zeros = torch.zeros(3, 40, dtype=torch.float64)
    with torch.no_grad(), StackCalls() as calls:
        got = [cell(x, (h, c)), cell(x), cell(x[1], (h[1], c[1]))]
    assert calls.dtypes == [torch.float32] * 3 and len(python_route) == 1
    wants = [lstm_cell_reference(x.double(), h.double(), c.double(), *params),
             lstm_cell_reference(x.double(), zeros, zeros, *params),
             [t[1] for t in lstm_cell_reference(x.double(), h.double(), c.double(), *params)]]
    for k, (g, w) in enumerate(zip(got, wants)):
        assert g[0].shape == w[0].shape and g[1].shape == w[1].shape, k
        assert_close(g[0], w[0], TOLERANCE[torch.float32], f"call {k}: h'")
        assert_close(g[1], w[1], TOLERANCE[torch.float32], f"call {k}: c'")
    bad = [(torch.randn(3, 25), None), (x, (torch.randn(3, 41), c)), (x, (h[:2], c[:2])),
           (x.double(), None), (x, (h.double(), c))]
    raises_as(theirs, cell, bad)
