"""The Triton backend against the float64 oracle: on the CPU through Triton's interpreter
(TRITON_INTERPRET=1, set in conftest.py; fp32), on a GPU in every dtype it supports."""
import pytest
import torch

from fastlstm import FastLSTM, FastLSTMCell, lstm_cell_reference, triton_ops
from helpers import TOLERANCE, assert_close
from test_lstm import CASES, compare_to_oracle

pytestmark = pytest.mark.skipif(not triton_ops.available(), reason="triton is not installed")
ON_CPU = triton_ops.INTERPRET
DEVICE = "cpu" if ON_CPU else "cuda"
# Small shapes under the interpreter (it runs each program in Python): odd H, batch 1,
# seq 1, 2 layers, both directions.
TRITON_CASES = [c for c in CASES if c.name in (
    "one_layer", "two_layers_batch1", "three_layers_seq1", "unbatched", "bidirectional",
    "no_bias", "long_bidir_batch_first")]
DTYPES = [torch.float32] if ON_CPU else [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a GPU or "
                    "TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_matches_oracle_and_nn_lstm(case, dtype):
    compare_to_oracle(case, DEVICE, "triton", dtype, seed=77)


@pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a GPU or "
                    "TRITON_INTERPRET=1")
def test_same_contract_as_the_cpp_op():
    """Saved state and gradients interchangeable with the C++ op's (on the CPU)."""
    if not ON_CPU:
        pytest.skip("compares with the CPU op")
    g = torch.Generator().manual_seed(5)
    xproj, h0, c0 = (torch.randn(*s, generator=g) for s in ((4, 3, 4 * 19), (3, 19), (3, 19)))
    w = torch.randn(4 * 19, 19, generator=g) * 0.3
    for reverse in (False, True):
        ours = triton_ops.layer_forward(xproj, h0, c0, w, reverse)
        theirs = torch.ops.fastlstm.lstm_layer(xproj, h0, c0, w, reverse)
        for a, b, name in zip(ours, theirs, ("hs", "cs", "gates")):
            assert a.dtype == b.dtype
            assert_close(a, b, 1e-5, f"triton {name} vs C++ op")
        grad_hs, grad_cs = torch.randn_like(theirs[0]), torch.randn_like(theirs[1])
        for gc in (grad_cs, None):
            ours_b = triton_ops.layer_backward(grad_hs, gc, h0, c0, w, *theirs, reverse)
            theirs_b = torch.ops.fastlstm.lstm_layer_backward(grad_hs, gc, h0, c0, w, *theirs,
                                                              reverse)
            for a, b, name in zip(ours_b, theirs_b, ("xproj", "h0", "c0", "w_hh")):
                assert_close(a, b, 1e-5, f"triton grad_{name} vs C++ op")


@pytest.mark.gpu
@pytest.mark.skipif(ON_CPU, reason="the autotuner runs on a GPU only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autotuned_tiles_match_oracle(monkeypatch, dtype):
    """FASTLSTM_TRITON_AUTOTUNE=1's path (off by default until this passes on a GPU)."""
    monkeypatch.setattr(triton_ops, "AUTOTUNE", True)
    case = next(c for c in CASES if c.name == "long_bidir_batch_first")
    compare_to_oracle(case, DEVICE, "triton", dtype, seed=78)


@pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a GPU or "
                    "TRITON_INTERPRET=1")
def test_cell():
    torch.manual_seed(0)
    cell = FastLSTMCell(9, 21, backend="triton").to(DEVICE)
    x, h, c = (torch.randn(2, n, device=DEVICE) for n in (9, 21, 21))
    p = {n: t.detach().double().cpu() for n, t in cell.named_parameters()}
    want = lstm_cell_reference(*(t.double().cpu() for t in (x, h, c)), p["weight_ih"],
                               p["weight_hh"], p["bias_ih"], p["bias_hh"])
    for a, b in zip(cell(x, (h, c)), want):
        assert_close(a, b, TOLERANCE[torch.float32], "triton cell")


def test_unsupported_inputs_are_refused_or_rerouted():
    lstm = FastLSTM(3, 4, backend="triton").double()
    if ON_CPU:
        with pytest.warns(UserWarning, match="float64"):
            lstm(torch.randn(2, 1, 3, dtype=torch.float64))
    else:
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            lstm(torch.randn(2, 1, 3, dtype=torch.float64))
    # Packed input: torch's own packed LSTM, with the warning, even where the fused CPU
    # layer would take it.
    from torch.nn.utils.rnn import pack_padded_sequence
    lstm = FastLSTM(3, 4, bidirectional=True, backend="triton").to(DEVICE)
    theirs = torch.nn.LSTM(3, 4, bidirectional=True).to(DEVICE)
    theirs.load_state_dict(lstm.state_dict())
    packed = pack_padded_sequence(torch.randn(5, 2, 3, device=DEVICE), torch.tensor([5, 2]))
    with pytest.warns(UserWarning, match="does not support PackedSequence input"):
        out, (h, c) = lstm(packed)
    want, (want_h, _) = theirs(packed)
    assert_close(out.data, want.data, 1e-6)
    assert_close(h, want_h, 1e-6)


@pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a GPU or "
                    "TRITON_INTERPRET=1")
@pytest.mark.parametrize("module", ["lstm_bias_bidirectional_hx", "cell_hx"])
def test_compiled_matches_eager(module):
    """torch.compile of the Triton backend with given states (torch's module_db samples
    "LSTM bias + bidirectional + hx" and "LSTMCell + hx", which once failed to trace): the
    output, the input's and the parameters' gradients, and no_grad, against eager."""
    torch.manual_seed(0)
    if module == "cell_hx":
        net = FastLSTMCell(4, 6, backend="triton").to(DEVICE)
        x = torch.randn(3, 4, device=DEVICE)
        hx = (torch.randn(3, 6, device=DEVICE), torch.randn(3, 6, device=DEVICE))
        first = lambda out: out[0]  # noqa: E731
    else:
        net = FastLSTM(4, 6, num_layers=2, bidirectional=True, backend="triton").to(DEVICE)
        x = torch.randn(5, 3, 4, device=DEVICE)
        hx = (torch.randn(4, 3, 6, device=DEVICE), torch.randn(4, 3, 6, device=DEVICE))
        first = lambda out: out[0]  # noqa: E731
    compiled = torch.compile(net, fullgraph=True)
    results = []
    for fn in (net, compiled):
        xi = x.clone().requires_grad_()
        out = first(fn(xi, hx))
        grads = torch.autograd.grad(out.square().sum(), [xi, *net.parameters()])
        with torch.no_grad():
            no_grad = first(fn(x, hx))
        results.append((out, *grads, no_grad))
    for got, want in zip(results[1], results[0], strict=True):
        assert_close(got, want, 1e-5, "compiled vs eager")
