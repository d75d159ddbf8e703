"""FastLSTM / FastLSTMCell as drop-ins: weights both ways, dropout, errors of the same
kind as nn.LSTM's, the cell, and the fallback when the extension is missing."""
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from fastlstm import FastLSTM, FastLSTMCell, lstm_cell_reference, reference_lstm
from fastlstm.module import choose_path
from helpers import TOLERANCE, assert_close

FUSED = ["cpu", "auto", "reference"]


@pytest.mark.parametrize("kwargs", [dict(num_layers=2), dict(num_layers=3, bidirectional=True),
                                    dict(proj_size=4, num_layers=2), dict(bias=False)])
def test_state_dict_round_trips(kwargs):
    torch.manual_seed(0)
    theirs = nn.LSTM(6, 9, **kwargs)
    ours = FastLSTM(6, 9, **kwargs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 2, 6)
    assert_close(ours(x)[0], theirs(x)[0], 1e-5, "nn.LSTM -> FastLSTM")
    ours2 = FastLSTM(6, 9, **kwargs)
    theirs.load_state_dict(ours2.state_dict())
    assert_close(ours2(x)[0], theirs(x)[0], 1e-5, "FastLSTM -> nn.LSTM")


def test_default_init_matches_nn_lstm_distribution():
    ours = FastLSTM(5, 16)
    bound = 1 / 16 ** 0.5
    for p in ours.parameters():
        assert p.abs().max() <= bound and p.std() > bound / 4


@pytest.mark.parametrize("backend", FUSED)
def test_dropout_between_layers_in_training_only(backend):
    torch.manual_seed(0)
    lstm = FastLSTM(5, 8, num_layers=3, dropout=0.5, backend=backend).double()
    params = {n: p.detach() for n, p in lstm.named_parameters()}
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    no_dropout = reference_lstm(x, None, params, num_layers=3)[0]
    lstm.eval()
    assert_close(lstm(x)[0], no_dropout, 1e-12, "eval ignores dropout")
    lstm.train()
    torch.manual_seed(1)
    out = lstm(x)[0]
    assert (out - no_dropout).abs().max() > 1e-3, "training applies dropout"
    torch.manual_seed(1)  # the same mask as the oracle's: dropped between layers, not after
    want = reference_lstm(x, None, params, num_layers=3, dropout=0.5, training=True)[0]
    assert_close(out, want, 1e-12, "dropout between layers")


@pytest.fixture
def cpu_class(monkeypatch):
    """Pins the CPU class auto's rule keys on: set(name)."""
    from fastlstm import _extension
    return lambda name: monkeypatch.setattr(_extension, "cpu_class", lambda: name)


def test_auto_rule(cpu_class):
    """The per-step loop's rule (short sequences, float64, no fused layer) on the Zen 4 class:
    ours at hidden >= 256 and batch <= 8."""
    cpu_class("avx512_bf16")
    cpu = torch.empty(0)
    assert choose_path("auto", cpu, None, batch=1, hidden=512) == "fused"
    assert choose_path("auto", cpu, None, batch=8, hidden=256) == "fused"
    assert choose_path("auto", cpu, None, batch=50, hidden=512) == "aten"
    assert choose_path("auto", cpu, None, batch=1, hidden=128) == "aten"
    assert choose_path("auto", cpu, "proj_size > 0", batch=1, hidden=512) == "aten"
    assert choose_path("cpu", cpu, None, batch=50, hidden=128) == "fused"
    fp64 = torch.empty(0, dtype=torch.float64)
    assert choose_path("auto", fp64, None, batch=64, hidden=128, steps=100, grad=True) == "aten"


def path(data, batch, hidden, grad, steps=50):
    return choose_path("auto", data, None, batch=batch, hidden=hidden, steps=steps, grad=grad)


FP32, BF16 = torch.empty(0), torch.empty(0, dtype=torch.bfloat16)


# (data, batch, hidden, grad, steps) -> the path auto takes, per CPU class, with the fused
# layer available (module.py says why for each).
RULE_CASES = {
    "avx512_bf16": [  # Zen 4
        (BF16, 64, 512, True, 50, "fused"),  # bf16 training: always ours
        (BF16, 64, 256, False, 50, "aten"),
        (BF16, 8, 256, False, 50, "fused"),
        (BF16, 8, 512, False, 50, "fused"),
        (BF16, 16, 128, False, 50, "fused"),
        (BF16, 32, 128, False, 50, "aten"),
        (BF16, 50, 128, False, 50, "aten"),  # S3 inference
        (FP32, 50, 128, True, 50, "fused"),  # S3 training: fp32 training at hidden 128
        (FP32, 64, 256, True, 50, "aten"),  # char-rnn shape training
        (FP32, 8, 128, True, 50, "fused"),
        (FP32, 16, 128, False, 50, "fused"),
        (FP32, 2, 512, True, 50, "fused"),
        (FP32, 2, 256, False, 50, "fused"),
        (FP32, 4, 256, True, 50, "fused"),  # fp32 training to batch 8 (weight gradients
        (FP32, 8, 512, True, 50, "fused"),  # on our tile)
        (FP32, 16, 256, True, 50, "aten"),
        (FP32, 8, 512, False, 50, "fused"),  # fp32 inference to hidden 512
        (FP32, 64, 512, False, 50, "fused"),
        (FP32, 16, 1024, False, 50, "aten"),  # not measured
        (FP32, 1, 512, False, 3, "fused"),  # the loop's rule
        (BF16, 1, 512, False, 3, "aten"),  # no bf16 loop
    ],
    "amx": [  # bf16 always (AMX tiles); the loop for short fp32 and bf16 sequences
        (BF16, 8, 512, True, 50, "fused"),
        (BF16, 16, 128, True, 50, "fused"),
        (BF16, 64, 512, True, 50, "fused"),  # the char-rnn trainer's default
        (BF16, 64, 256, False, 50, "fused"),
        (BF16, 8, 512, False, 50, "fused"),
        (BF16, 16, 384, False, 50, "fused"),
        (BF16, 64, 1024, False, 50, "fused"),
        (FP32, 64, 128, True, 50, "fused"),
        (FP32, 2, 512, True, 50, "fused"),
        (FP32, 8, 256, True, 50, "fused"),
        (FP32, 16, 384, True, 50, "aten"),
        (FP32, 64, 512, True, 50, "fused"),
        (FP32, 4, 1024, False, 50, "fused"),
        (FP32, 8, 256, False, 50, "fused"),
        (FP32, 8, 512, False, 50, "aten"),
        (BF16, 1, 512, True, 1, "fused"),  # the loop, bf16 too
        (FP32, 8, 256, False, 3, "fused"),
        (BF16, 16, 512, False, 1, "aten"),
        (torch.empty(0, dtype=torch.float64), 1, 512, False, 1, "aten"),
    ],
    "avx2": [  # fp32 only: the fused layer's AVX2 build at small batches, the loop for short
        (FP32, 1, 512, False, 1, "fused"),  # training sequences
        (FP32, 8, 256, True, 3, "fused"),
        (FP32, 16, 256, False, 1, "aten"),
        (FP32, 1, 128, False, 1, "aten"),
        (FP32, 1, 512, True, 50, "fused"),
        (FP32, 2, 256, False, 50, "fused"),
        (FP32, 8, 128, True, 50, "fused"),
        (FP32, 4, 256, True, 50, "aten"),
        (FP32, 16, 128, False, 50, "fused"),  # inference at hidden 128
        (FP32, 16, 128, True, 50, "aten"),
        (FP32, 16, 256, False, 50, "aten"),
        (FP32, 64, 128, True, 50, "aten"),
        (BF16, 1, 512, False, 1, "aten"),
        (BF16, 1, 512, True, 50, "aten"),
        (BF16, 8, 512, True, 50, "aten"),
    ],
}


@pytest.mark.parametrize("cls", list(RULE_CASES))
def test_auto_rule_fused_layer(monkeypatch, cpu_class, cls):
    """Sequences of >= 4 steps on a CPU with the fused layer, and short ones, per class."""
    from fastlstm import _extension
    cpu_class(cls)
    monkeypatch.setattr(_extension, "cpu_fused", lambda dtype: True)
    for data, batch, hidden, grad, steps, want in RULE_CASES[cls]:
        assert path(data, batch, hidden, grad, steps) == want, (data.dtype, batch, hidden, grad,
                                                                steps)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's dtype decides
        assert path(FP32, 8, 512, grad=True) == ("aten" if cls == "avx2" else "fused")
    monkeypatch.setattr(_extension, "cpu_fused", lambda dtype: False)
    assert path(BF16, 8, 512, grad=True) == "aten"
    # Without the fused layer, long sequences: the loop's rule on Zen 4, torch's elsewhere.
    assert path(FP32, 1, 512, grad=True) == ("fused" if cls == "avx512_bf16" else "aten")


# (data, batch, hidden, steps) -> the path auto takes for a streaming call (a short call
# without gradient that ops.stack_inference runs), per CPU class.
STREAMING_CASES = {
    "amx": [(FP32, 16, 512, 1, "fused"), (FP32, 5, 1024, 3, "fused"), (FP32, 64, 256, 3, "fused"),
            (FP32, 16, 512, 3, "aten"), (FP32, 1, 16, 1, "fused"), (BF16, 16, 1024, 1, "fused"),
            (BF16, 64, 64, 3, "fused"), (BF16, 64, 1024, 3, "fused"),
            (torch.empty(0, dtype=torch.float64), 1, 512, 1, "aten")],
    # Zen 4: fp32 and bf16 always (where the per-step loop's rule said torch's for bf16).
    "avx512_bf16": [(FP32, 1, 512, 1, "fused"), (FP32, 1, 16, 1, "fused"),
                    (FP32, 64, 1024, 3, "fused"), (BF16, 1, 512, 1, "fused"),
                    (BF16, 64, 64, 3, "fused"),
                    (torch.empty(0, dtype=torch.float64), 1, 512, 1, "aten")],
    # AVX2 (imitated on a Zen 4): fp32 at hidden <= 128, batch x steps <= 4, hidden 256 batch <= 4.
    "avx2": [(FP32, 1, 512, 1, "fused"), (FP32, 64, 128, 3, "fused"), (FP32, 4, 256, 3, "fused"),
             (FP32, 4, 1024, 1, "fused"), (FP32, 16, 256, 1, "aten"), (FP32, 4, 512, 3, "aten"),
             (BF16, 1, 512, 1, "aten"), (torch.empty(0, dtype=torch.float64), 1, 512, 1, "aten")],
}


@pytest.mark.parametrize("cls", list(STREAMING_CASES))
def test_auto_rule_streaming(monkeypatch, cpu_class, cls):
    from fastlstm import _extension
    cpu_class(cls)
    monkeypatch.setattr(_extension, "cpu_fused", lambda dtype: True)
    for data, batch, hidden, steps, want in STREAMING_CASES[cls]:
        got = choose_path("auto", data, None, batch=batch, hidden=hidden, steps=steps,
                          streaming=True)
        assert got == want, (data.dtype, batch, hidden, steps)


@pytest.mark.parametrize("cls", ["avx512", "other"])
def test_auto_keeps_torch_on_cpus_not_measured(monkeypatch, cpu_class, cls):
    from fastlstm import _extension
    cpu_class(cls)
    monkeypatch.setattr(_extension, "cpu_fused", lambda dtype: True)
    for data, batch, hidden, grad, steps in [(BF16, 8, 512, True, 50), (FP32, 64, 128, True, 50),
                                             (FP32, 1, 512, False, 1)]:
        assert path(data, batch, hidden, grad, steps) == "aten"
        assert choose_path("auto", data, None, batch=batch, hidden=hidden, steps=1,
                           streaming=True) == "aten"


def test_cpu_class_reads_the_flags(monkeypatch):
    from fastlstm import _extension
    assert _extension.cpu_class() in ("amx", "avx512_bf16", "avx512", "avx2", "other")
    monkeypatch.setattr(_extension, "_cpu_class", None)
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    assert _extension.cpu_class() == "other"


def test_auto_rule_on_cuda_tensors(monkeypatch):
    """bf16 at hidden <= 512 -> the CUDA op; everything else -> cuDNN (module.py says why).
    A stand-in for a CUDA tensor: the rule reads only is_cuda and dtype."""
    from fastlstm import _extension
    monkeypatch.setattr(_extension, "cuda_compiled", lambda: True)

    class CudaLike:
        is_cuda = True
        device = torch.device("cuda")

        def __init__(self, dtype):
            self.dtype = dtype

    bf16, fp32, fp16 = (CudaLike(t) for t in (torch.bfloat16, torch.float32, torch.float16))
    assert choose_path("auto", bf16, None, batch=64, hidden=512) == "fused"
    assert choose_path("auto", bf16, None, batch=1, hidden=37) == "fused"
    assert choose_path("auto", bf16, None, batch=64, hidden=1024) == "aten"
    assert choose_path("auto", bf16, "proj_size > 0", batch=64, hidden=512) == "aten"
    assert choose_path("auto", fp32, None, batch=64, hidden=512) == "aten"
    assert choose_path("auto", fp16, None, batch=64, hidden=512) == "aten"
    monkeypatch.setattr(_extension, "cuda_compiled", lambda: False)
    assert choose_path("auto", bf16, None, batch=64, hidden=512) == "aten"


def test_unknown_and_unbuilt_backends():
    with pytest.raises(ValueError, match="unknown FastLSTM backend"):
        FastLSTM(3, 4, backend="tpu")
    with pytest.raises(ValueError, match="needs cuda tensors"):
        FastLSTM(3, 4, backend="cuda")(torch.randn(2, 1, 3))


def test_explicit_backend_routes_unsupported_features_correctly():
    torch.manual_seed(0)
    lstm = FastLSTM(3, 6, proj_size=2, backend="cpu")
    theirs = nn.LSTM(3, 6, proj_size=2)
    theirs.load_state_dict(lstm.state_dict())
    x = torch.randn(4, 2, 3)
    with pytest.warns(UserWarning, match="proj_size"):
        out = lstm(x)[0]
    assert_close(out, theirs(x)[0], 1e-6, "proj_size via torch's LSTM")


BAD_INPUTS = {
    "4d_input": lambda: (torch.randn(2, 3, 4, 5), None),
    "wrong_feature_size": lambda: (torch.randn(5, 3, 7), None),
    "wrong_h_shape": lambda: (torch.randn(5, 3, 4), (torch.randn(1, 3, 6), torch.randn(2, 3, 6))),
    "wrong_c_shape": lambda: (torch.randn(5, 3, 4), (torch.randn(2, 3, 6), torch.randn(2, 2, 6))),
    "2d_state_for_3d_input": lambda: (torch.randn(5, 3, 4), (torch.randn(3, 6), torch.randn(3, 6))),
    "3d_state_for_2d_input": lambda: (torch.randn(5, 4),
                                      (torch.randn(2, 1, 6), torch.randn(2, 1, 6))),
    "input_dtype": lambda: (torch.randn(5, 3, 4, dtype=torch.float64), None),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("backend", FUSED)
def test_bad_input_errors_like_nn_lstm(case, backend):
    torch.manual_seed(0)
    x, hx = BAD_INPUTS[case]()
    with pytest.raises(Exception) as theirs:
        nn.LSTM(4, 6, num_layers=2)(x, hx)
    with pytest.raises(type(theirs.value)) as ours:
        FastLSTM(4, 6, num_layers=2, backend=backend)(x, hx)
    assert str(ours.value), "an error needs a message"


def test_state_dtype_and_device_mismatch():
    lstm = FastLSTM(4, 6, backend="cpu")
    x = torch.randn(5, 3, 4)
    with pytest.raises(RuntimeError, match="not the same dtype"):  # nn.LSTM: RuntimeError too
        lstm(x, (torch.randn(1, 3, 6, dtype=torch.float64), torch.randn(1, 3, 6)))
    with pytest.raises(RuntimeError, match="not at the same device"):
        lstm(x.to("meta"))
    with pytest.raises(RuntimeError, match="not at the same device"):
        lstm(x, (torch.randn(1, 3, 6, device="meta"), torch.randn(1, 3, 6)))


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dropout"):
        FastLSTM(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="proj_size"):
        FastLSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="hidden_size"):
        FastLSTM(3, 0)
    with pytest.raises(TypeError, match="num_layers"):
        FastLSTM(3, 4, num_layers=2.0)


@pytest.mark.parametrize("backend", FUSED + ["aten"])
@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_matches_oracle_and_nn_lstm_cell(backend, unbatched, dtype):
    torch.manual_seed(3)
    cell = FastLSTMCell(7, 13, backend=backend)
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.6, 0.6)
    theirs = nn.LSTMCell(7, 13)
    theirs.load_state_dict(cell.state_dict())
    cell.to(dtype)
    theirs.to(dtype)
    batch = () if unbatched else (3,)
    x, h, c = (torch.randn(*batch, n, dtype=dtype, requires_grad=True) for n in (7, 13, 13))
    params64 = {n: p.detach().double().requires_grad_() for n, p in cell.named_parameters()}
    leaves64 = [t.detach().double().requires_grad_() for t in (x, h, c)]
    g = [torch.randn(*batch, 13, dtype=torch.float64) for _ in range(2)]

    def grads(fn, leaves, params):
        h_new, c_new = fn(*leaves)
        loss = (h_new.double() * g[0]).sum() + (c_new.double() * g[1]).sum()
        return [h_new, c_new, *torch.autograd.grad(loss, [*leaves, *params])]

    got = grads(lambda *a: cell(a[0], (a[1], a[2])), [x, h, c], list(cell.parameters()))
    want = grads(lambda x_, h_, c_: lstm_cell_reference(
        x_, h_, c_, params64["weight_ih"], params64["weight_hh"], params64["bias_ih"],
        params64["bias_hh"]), leaves64, list(params64.values()))
    other = grads(lambda *a: theirs(a[0], (a[1], a[2])), [x, h, c], list(theirs.parameters()))
    for name, a, b, o in zip(["h", "c", "dx", "dh", "dc", "dw_ih", "dw_hh", "db_ih", "db_hh"],
                             got, want, other):
        assert_close(a, b, TOLERANCE[dtype], f"cell {name} vs oracle")
        assert_close(a, o, 3 * TOLERANCE[dtype], f"cell {name} vs nn.LSTMCell")
    h0, c0 = cell(x)  # zero state by default
    assert h0.shape == h.shape and c0.shape == c.shape


def test_cell_bad_input():
    cell = FastLSTMCell(4, 5, backend="cpu")
    with pytest.raises(ValueError, match="1D or 2D"):
        cell(torch.randn(2, 3, 4))
    with pytest.raises(RuntimeError, match="input_size"):
        cell(torch.randn(3, 6))
    with pytest.raises(RuntimeError, match="Input batch size 3 doesn't match hidden0 batch size 2"):
        cell(torch.randn(3, 4), (torch.randn(2, 5), torch.randn(3, 5)))


def run_without_extension(code):
    """Run `code` in a fresh interpreter in which fastlstm._C cannot be imported."""
    prelude = "import sys; sys.modules['fastlstm._C'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_missing_extension_falls_back_with_one_warning():
    result = run_without_extension("""
        import warnings, torch, fastlstm
        warnings.simplefilter("always")
        lstm = fastlstm.FastLSTM(3, 4)
        with warnings.catch_warnings(record=True) as caught:
            for _ in range(3):
                out, _ = lstm(torch.randn(2, 1, 3))
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1, msgs
        assert "pip install --no-build-isolation" in msgs[0], msgs[0]
        try:
            fastlstm.FastLSTM(3, 4, backend="cpu")(torch.randn(2, 1, 3))
        except RuntimeError as e:
            assert "could not be imported" in str(e), e
        else:
            raise AssertionError("backend='cpu' without the extension must raise")
        print("ok", tuple(out.shape))
    """)
    assert result.returncode == 0, result.stderr
    assert "ok (2, 1, 4)" in result.stdout


def test_info_reports_what_is_built():
    result = subprocess.run([sys.executable, "-m", "fastlstm.info"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"C\+\+ CPU op \(backend='cpu'\) +available", result.stdout)
    assert "torch built against" in result.stdout
    assert re.search(r"char-rnn generation \(model.generate\) +CPU: ", result.stdout)


def test_cuda_graph_switch():
    import fastlstm
    before = fastlstm.cuda_graphs_enabled()
    try:
        fastlstm.set_cuda_graphs(False)
        assert not fastlstm.cuda_graphs_enabled()
        fastlstm.set_cuda_graphs(True)
        assert fastlstm.cuda_graphs_enabled()
    finally:
        fastlstm.set_cuda_graphs(before)


@pytest.mark.parametrize("backend", ["cpu", "reference", "aten"])
def test_inspect_returns_every_layers_state_per_step(backend):
    torch.manual_seed(0)
    lstm = FastLSTM(5, 7, num_layers=3, batch_first=True, backend=backend)
    x = torch.randn(2, 6, 5)
    out, (h_n, c_n), states = lstm.inspect(x)
    want_out, (want_h, want_c) = lstm(x)
    assert states["h"].shape == (6, 3, 2, 7) and states["c"].shape == (6, 3, 2, 7)
    assert_close(out, want_out, 1e-6, "inspect output")
    assert_close(states["h"][-1], want_h, 1e-6, "last h")
    assert_close(states["c"][-1], want_c, 1e-6, "last c")
    assert_close(states["h"][:, -1].transpose(0, 1), want_out, 1e-6, "top layer h per step")
    with pytest.raises(ValueError, match="bidirectional"):
        FastLSTM(5, 7, bidirectional=True).inspect(torch.randn(3, 2, 5))
