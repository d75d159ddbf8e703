"""FastLSTM / FastLSTMCell as drop-ins for nn.LSTM / nn.LSTMCell in what users do besides
forward: torch's own module test samples and error inputs (module_db), whole-module
torch.save / torch.load, ONNX export run in onnxruntime, torch.export, torch.compile."""
import io

import pytest
import torch
from torch import nn

from fastlstm import FastLSTM, FastLSTMCell, triton_ops
from helpers import TORCH_LSTM_TOLERANCE, assert_close

common_modules = pytest.importorskip("torch.testing._internal.common_modules")
# Importing torch's test utilities freezes the cuDNN flags for the whole process
# (disable_global_flags); the other test modules' fixtures set them: unfreeze.
torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
BACKENDS = ("auto", "cpu", "reference", "aten")
# Triton (fp32; on the CPU under TRITON_INTERPRET=1, as conftest.py sets without a GPU).
TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not (triton_ops.available() and (triton_ops.INTERPRET or torch.cuda.is_available())),
    reason="needs triton on a GPU or under TRITON_INTERPRET=1"))
OURS = {nn.LSTM: FastLSTM, nn.LSTMCell: FastLSTMCell}


def _module_info(cls):
    return next(m for m in common_modules.module_db if m.module_cls is cls)


def _flatten(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flatten(item)]


@pytest.mark.parametrize("backend", [*BACKENDS, TRITON])
@pytest.mark.parametrize("cls", [nn.LSTM, nn.LSTMCell], ids=lambda c: c.__name__)
def test_torch_module_samples(cls, backend):
    """Every sample torch ships for the module: same outputs and input gradients as torch's
    module with the same weights, in float64 (Triton: float32, all it runs on the CPU)."""
    dtype = torch.float32 if backend == "triton" else torch.float64
    tol = TORCH_LSTM_TOLERANCE[dtype]
    info = _module_info(cls)
    samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                      training=False)
    for sample in samples:
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        theirs = cls(*args, **kwargs, dtype=dtype)
        ours = OURS[cls](*args, **kwargs, dtype=dtype, backend=backend)
        ours.load_state_dict(theirs.state_dict())
        fwd = sample.forward_input
        expected, got = _flatten(theirs(*fwd.args)), _flatten(ours(*fwd.args))
        for e, g in zip(expected, got, strict=True):
            assert_close(g, e, tol, f"{ours}")
        inputs = [t for t in _flatten(fwd.args) if t.requires_grad]
        weight = [torch.randn_like(e) for e in expected]
        grads = lambda outs: torch.autograd.grad(outs, inputs, weight)  # noqa: E731
        for e, g in zip(grads(expected), grads(got), strict=True):
            assert_close(g, e, tol, f"{ours} grad")


def _error_cases(cls):
    info = _module_info(cls)
    return info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                         requires_grad=False, training=False)


@pytest.mark.parametrize("backend", [*BACKENDS, TRITON])
@pytest.mark.parametrize("cls", [nn.LSTM, nn.LSTMCell], ids=lambda c: c.__name__)
def test_torch_error_inputs(cls, backend):
    """Every error input torch ships for the module raises torch's exception type with a
    message that matches torch's regex."""
    cases = _error_cases(cls)
    assert cases
    for case in cases:
        sample = case.module_error_input
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        construct = lambda: OURS[cls](*args, **kwargs, backend=backend)  # noqa: E731
        with pytest.raises(case.error_type, match=case.error_regex):
            if case.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
                construct()
            else:
                construct()(*sample.forward_input.args, **sample.forward_input.kwargs)


@pytest.mark.parametrize("make", [lambda: FastLSTM(4, 8, 2, dropout=0.1, batch_first=True),
                                  lambda: FastLSTMCell(4, 8)], ids=["FastLSTM", "FastLSTMCell"])
def test_whole_module_save_load(make):
    """torch.save(module) then torch.load with its default weights_only=True."""
    module = make().eval()
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    assert type(loaded) is type(module) and loaded.backend == module.backend
    x = torch.randn(3, 4)
    assert torch.equal(_flatten(loaded(x))[0], _flatten(module(x))[0])


class _Model(nn.Module):
    def __init__(self, hidden, backend):
        super().__init__()
        self.lstm = FastLSTM(8, hidden, 2, backend=backend)
        self.head = nn.Linear(hidden, 5)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        return self.head(y), h, c


# (backend, hidden, batch): an explicit backend, and auto where it picks our op (hidden 256,
# batch 1) and where it picks torch's (hidden 16, batch 4).
EXPORT_CASES = [("cpu", 16, 3), ("auto", 256, 1), ("auto", 16, 4)]


@pytest.mark.parametrize("backend, hidden, batch", EXPORT_CASES)
def test_onnx_export_runs_in_onnxruntime(backend, hidden, batch, tmp_path):
    """A plain torch.onnx.export call writes the standard ONNX LSTM operator (one per layer),
    and onnxruntime's outputs match eager's."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _Model(hidden, backend).eval()
    x = torch.randn(7, batch, 8)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), path)
    assert [n.op_type for n in onnx.load(path).graph.node].count("LSTM") == 2
    session = ort.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for g, e in zip(got, expected, strict=True):
        assert_close(torch.from_numpy(g), e, 1e-4, "onnxruntime vs eager")


@pytest.mark.parametrize("backend, hidden, batch", EXPORT_CASES)
def test_torch_export(backend, hidden, batch):
    model = _Model(hidden, backend).eval()
    x = torch.randn(7, batch, 8)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        for g, e in zip(program.module()(x), model(x), strict=True):
            assert_close(g, e, 1e-6, "exported vs eager")


# Not "aten": asked for explicitly, torch's own CPU LSTM is what it runs, and torch.compile
# fails on it here (its oneDNN layer op: "expected Tensor() for op mkldnn_rnn_layer").
@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
@pytest.mark.parametrize("hidden, batch", [(16, 4), (256, 1)])
def test_compile_training_step(backend, hidden, batch):
    """torch.compile(fullgraph=True) of a training step: the input needs no gradient, the
    parameters do (torch's CPU LSTM does not trace there; auto must route around it)."""
    torch._dynamo.reset()
    model = _Model(hidden, backend)
    x = torch.randn(5, batch, 8)
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(x)[0].square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x)[0].square().mean().backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        assert_close(g, p.grad, 1e-5, "compiled vs eager gradient")


def _gradient_penalty_grads(lstm, x, hx):
    """A gradient penalty: d/dθ of ||d(out·w)/dx||², through create_graph (double backward);
    returns the gradients on x, the states and every parameter."""
    out, (h, c) = lstm(x, hx)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (grad_x,) = torch.autograd.grad((out * weight).sum() + h.sum() + c.sum(), x,
                                    create_graph=True)
    wrt = [x, *hx, *lstm.parameters()]
    return torch.autograd.grad(grad_x.square().sum(), wrt)


def _double_backward_case(dtype):
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=dtype)
    x = torch.randn(4, 2, 3, dtype=dtype, requires_grad=True)
    hx = tuple(torch.randn(4, 2, 5, dtype=dtype, requires_grad=True) for _ in range(2))
    return theirs, x, hx


@pytest.mark.parametrize("backend", ["cpu", "auto", "reference"])
def test_double_backward_matches_nn_lstm(backend):
    theirs, x, hx = _double_backward_case(torch.float64)
    ours = FastLSTM(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64,
                    backend=backend)
    ours.load_state_dict(theirs.state_dict())
    for g, e in zip(_gradient_penalty_grads(ours, x, hx), _gradient_penalty_grads(theirs, x, hx),
                    strict=True):
        assert_close(g, e, 1e-10, "second-order gradient vs nn.LSTM")


def test_double_backward_triton():
    """The Triton op (fp32, under the interpreter on the CPU) against the float64 oracle."""
    from fastlstm import triton_ops
    if not triton_ops.available() or not triton_ops.INTERPRET:
        pytest.skip("needs triton, run under TRITON_INTERPRET=1 on the CPU")
    ref_lstm, x, hx = _double_backward_case(torch.float64)
    ours = FastLSTM(3, 5, num_layers=2, bidirectional=True, backend="triton")
    ours.load_state_dict(ref_lstm.state_dict())
    ref = FastLSTM(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64,
                   backend="reference")
    ref.load_state_dict(ref_lstm.state_dict())
    x32 = x.detach().float().requires_grad_()
    hx32 = tuple(t.detach().float().requires_grad_() for t in hx)
    for g, e in zip(_gradient_penalty_grads(ours, x32, hx32), _gradient_penalty_grads(ref, x, hx),
                    strict=True):
        assert_close(g, e, 1e-5, "triton second-order gradient vs the oracle")


def test_cell_double_backward_matches_nn_lstmcell():
    torch.manual_seed(0)
    theirs = nn.LSTMCell(3, 5, dtype=torch.float64)
    ours = FastLSTMCell(3, 5, dtype=torch.float64, backend="cpu")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(2, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def grads(cell):
        h, c = cell(x, hx)
        (gx,) = torch.autograd.grad((h * c).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), [x, *hx, *cell.parameters()])
    for g, e in zip(grads(ours), grads(theirs), strict=True):
        assert_close(g, e, 1e-10, "cell second-order gradient vs nn.LSTMCell")


def test_small_activation_gradients():
    """Near-zero activations: the CPU op's fp32 gradients keep their relative accuracy
    (a tanh computed as 1 - 2/(1 + e^2x) alone was ~1e-7 off in absolute terms near 0,
    and gradients reached 1.5e-5 relative error here)."""
    torch.manual_seed(0)
    ref = FastLSTM(16, 32, 2, dtype=torch.float64, backend="reference")
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(1e-3)
    ours = FastLSTM(16, 32, 2, backend="cpu")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(20, 3, 16, dtype=torch.float64) * 1e-3
    results = []
    for lstm, inp in ((ours, x.float()), (ref, x)):
        inp = inp.clone().requires_grad_()
        out, (h, c) = lstm(inp)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        grads = torch.autograd.grad((out * weight).sum() + c.sum(), [inp, *lstm.parameters()])
        results.append([out, h, c, *grads])
    for got, expected in zip(*results, strict=True):
        assert_close(got, expected, 2e-6, "small activations")


class _WordLM(nn.Module):
    """The shape of PyTorch's word_language_model example's RNNModel (LSTM variant)."""
    def __init__(self, lstm_cls, ntoken=50, ninp=16, nhid=32, nlayers=2):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = lstm_cls(ninp, nhid, nlayers, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(output)), hidden


def test_word_language_model_scenario(tmp_path):
    """Train, torch.save(model), torch.load, generate, ONNX export: with FastLSTM where the
    example has nn.LSTM, and the same losses and generated words as nn.LSTM gives."""
    pytest.importorskip("onnxscript")
    # The user's own classes need allowing, for nn.LSTM as for us; FastLSTM needs nothing.
    torch.serialization.add_safe_globals([_WordLM, nn.Dropout, nn.Embedding, nn.Linear,
                                          nn.LSTM])
    runs = {}
    for cls in (nn.LSTM, FastLSTM):
        torch.manual_seed(0)
        model = _WordLM(cls)
        if cls is FastLSTM:
            model.load_state_dict(runs[nn.LSTM]["init"])
        init = {k: v.clone() for k, v in model.state_dict().items()}
        data = torch.randint(0, 50, (21, 4), generator=torch.Generator().manual_seed(1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        losses, hidden = [], None
        for _ in range(3):
            torch.manual_seed(2)  # the same dropout masks for both
            output, hidden = model(data[:-1], hidden)
            hidden = tuple(h.detach() for h in hidden)
            loss = nn.functional.cross_entropy(output.view(-1, 50), data[1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        path = tmp_path / f"{cls.__name__}.pt"
        torch.save(model, path)
        loaded = torch.load(path).eval()
        word, hidden, words = torch.tensor([[3]]), None, []
        with torch.no_grad():
            for _ in range(10):
                output, hidden = loaded(word, hidden)
                word = output[-1].argmax(-1, keepdim=True)
                words.append(word.item())
        runs[cls] = {"init": init, "losses": losses, "words": words, "model": loaded}
    assert runs[FastLSTM]["losses"] == pytest.approx(runs[nn.LSTM]["losses"], rel=1e-5)
    assert runs[FastLSTM]["words"] == runs[nn.LSTM]["words"]
    hidden = tuple(torch.zeros(2, 1, 32) for _ in range(2))
    torch.onnx.export(runs[FastLSTM]["model"], (torch.tensor([[3], [7]]), hidden),
                      tmp_path / "wordlm.onnx")
