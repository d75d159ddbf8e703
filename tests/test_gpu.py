"""CUDA-only behaviour of the fused op: determinism, autocast, eval-mode backward, streams,
the cell. (The differential tests in test_lstm.py run on CUDA too.)"""
import pytest
import torch

import fastlstm
from fastlstm import FastLSTM, FastLSTMCell, lstm_cell_reference, reference_lstm
from helpers import TOLERANCE, assert_close, relative_error

pytestmark = pytest.mark.gpu


def make(dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    lstm = FastLSTM(33, 70, 2, backend="cuda", **kwargs).cuda().to(dtype)
    x = torch.randn(9, 5, 33, device="cuda", dtype=dtype, requires_grad=True)
    return lstm, x


def grads(lstm, x):
    out, (h, c) = lstm(x)
    g = torch.randn_like(out, generator=torch.Generator("cuda").manual_seed(1))
    return torch.autograd.grad((out * g).sum() + h.sum() + c.sum(), [x, *lstm.parameters()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_is_deterministic(dtype):
    lstm, x = make(dtype)
    first, second = grads(lstm, x), grads(lstm, x)
    for a, b in zip(first, second):
        assert torch.equal(a, b), "two backward runs on the same inputs must be bitwise equal"


def test_backward_in_eval_mode():
    lstm, x = make()
    lstm.eval()
    g = grads(lstm, x)
    assert all(torch.isfinite(t).all() for t in g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    """As nn.LSTM: outputs in autocast's dtype, fp32 parameters and gradients. (nn.LSTM on
    cuDNN runs float16 even under a bfloat16 autocast, seen with torch 2.11; we run the
    dtype asked for.)"""
    lstm, x = make()
    params64 = {n: p.detach().double().cpu() for n, p in lstm.named_parameters()}
    want = reference_lstm(x.detach().double().cpu(), None, params64, num_layers=2)[0]
    with torch.autocast("cuda", dtype=dtype):
        out, (h, c) = lstm(x)
    assert out.dtype == h.dtype == c.dtype == dtype
    assert_close(out, want, TOLERANCE[dtype], "autocast output vs oracle")
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lstm.parameters())


def test_runs_on_the_current_stream():
    lstm, x = make()
    want = lstm(x)[0].detach()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = lstm(x)[0].detach()
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(out, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cell(dtype):
    torch.manual_seed(0)
    cell = FastLSTMCell(21, 45, backend="cuda").cuda().to(dtype)
    x, h, c = (torch.randn(6, n, device="cuda", dtype=dtype) for n in (21, 45, 45))
    p = {n: t.detach().double().cpu() for n, t in cell.named_parameters()}
    want = lstm_cell_reference(*(t.double().cpu() for t in (x, h, c)), p["weight_ih"],
                               p["weight_hh"], p["bias_ih"], p["bias_hh"])
    got = cell(x, (h, c))
    assert got[0].dtype == got[1].dtype == dtype
    for a, b, name in zip(got, want, "hc"):
        assert_close(a, b, TOLERANCE[dtype], f"cell {name}")


@pytest.fixture
def graphs_restored():
    before = fastlstm.cuda_graphs_enabled()
    yield
    fastlstm.set_cuda_graphs(before)


def forward_backward(lstm, x):
    out, (h, c) = lstm(x)
    return [out, h, c, *grads(lstm, x)]


def test_cuda_graphs_match_plain_launches(graphs_restored):
    lstm, x = make()
    for trial in range(3):  # capture, then replays with new values in the same shapes
        x = torch.randn_like(x).requires_grad_()
        fastlstm.set_cuda_graphs(False)
        want = forward_backward(lstm, x)
        fastlstm.set_cuda_graphs(True)
        got = forward_backward(lstm, x)
        for a, b in zip(got, want):
            assert_close(a, b, 1e-6, f"graph replay {trial} vs plain launches")


def test_inside_a_callers_cuda_graph(graphs_restored):
    """While the caller captures, the op runs its loop plainly (into the caller's graph)."""
    fastlstm.set_cuda_graphs(True)
    lstm, x = make()
    static_x = x.detach().clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad():
        with torch.cuda.stream(side):
            for _ in range(2):
                lstm(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = lstm(static_x)[0]
        new_x = torch.randn_like(static_x)
        static_x.copy_(new_x)
        graph.replay()
        want = lstm(new_x)[0]
    assert_close(static_out, want, 1e-6, "caller's graph replay")


@pytest.fixture(params=["1", "4"], ids=["p1", "p4"])
def persistent(monkeypatch, request):
    """The persistent forward on (p1: layer by layer; p4: unidirectional modules as one stack
    launch, the others layer by layer as stacks of one), and its step-loop fallback an error
    (so these tests cannot pass without the kernel running). Yields the version."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", request.param)
    before = fastlstm.persistent_enabled()
    fastlstm.set_persistent(True)
    yield request.param
    fastlstm.set_persistent(before)


def skip_p4_fp32(version, dtype):
    if version == "4" and dtype == torch.float32:
        pytest.skip("p4 runs fp32 only as TF32 (test_persistent_p4_fp32_only_as_tf32)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["one_layer", "three_layers_seq1", "bidirectional",
                                  "wide_small_batch", "long_bidir_batch_first"])
def test_persistent_kernel_matches_oracle(persistent, case, dtype):
    """The persistent forward, trained through the existing backward."""
    skip_p4_fp32(persistent, dtype)
    from test_lstm import CASES, compare_to_oracle
    compare_to_oracle(next(c for c in CASES if c.name == case), "cuda", "cuda", dtype, seed=11)


def test_persistent_kernel_falls_back_where_it_does_not_fit(persistent, monkeypatch):
    """hidden 4096 in bf16: W_hh slices of 1 MB per block, far over shared memory."""
    xproj = torch.randn(3, 2, 4 * 4096, device="cuda", dtype=torch.bfloat16)
    h0, c0 = (torch.randn(2, 4096, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    w = (torch.randn(4 * 4096, 4096, device="cuda") * 0.01).bfloat16()
    with pytest.raises(RuntimeError, match="cannot run this layer"):
        torch.ops.fastlstm.lstm_layer_persistent(xproj, h0, c0, w, False)
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "0")
    ours = torch.ops.fastlstm.lstm_layer_persistent(xproj, h0, c0, w, False)
    loop = torch.ops.fastlstm.lstm_layer(xproj, h0, c0, w, False)
    for a, b, name in zip(ours, loop, ("hs", "cs", "gates")):
        assert_close(a, b, 0, f"fallback {name}")


@pytest.mark.parametrize("value", ["2", "3", "5"])
def test_persistent_version_must_be_known(monkeypatch, value):
    monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", value)
    x = torch.randn(2, 1, 8, device="cuda")
    h0, c0, w = torch.zeros(1, 2, device="cuda"), torch.zeros(1, 2, device="cuda"), \
        torch.zeros(8, 2, device="cuda")
    with pytest.raises(RuntimeError, match="VERSION must be 1 or 4"):
        torch.ops.fastlstm.lstm_layer_persistent(x, h0, c0, w, False)


def test_persistent_kernel_equals_the_step_loop(persistent):
    """Against the step loop on the same inputs: p1 in fp32 (the same sums, 1e-6), p4 in bf16
    (tensor-core sums in another order: bf16's tolerance)."""
    dtype, tol = (torch.float32, 1e-6) if persistent == "1" else (torch.bfloat16, 1e-2)
    g = torch.Generator(device="cuda").manual_seed(0)
    xproj = torch.randn(7, 5, 4 * 70, device="cuda", generator=g).to(dtype)
    h0, c0 = (torch.randn(5, 70, device="cuda", generator=g).to(dtype) for _ in range(2))
    w = (torch.randn(4 * 70, 70, device="cuda", generator=g) * 0.2).to(dtype)
    for reverse in (False, True):
        ours = torch.ops.fastlstm.lstm_layer_persistent(xproj, h0, c0, w, reverse)
        loop = torch.ops.fastlstm.lstm_layer(xproj, h0, c0, w, reverse)
        for a, b, name in zip(ours, loop, ("hs", "cs", "gates")):
            assert_close(a, b, tol, f"persistent {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_persistent_stack_at_s1_width_matches_oracle(persistent, dtype):
    """Hidden 512, batch 64 (S1's width: 132 blocks' worth of tiles on an H200), 2 layers,
    20 steps, trained through the existing backward."""
    skip_p4_fp32(persistent, dtype)
    from test_lstm import Case, compare_to_oracle
    compare_to_oracle(Case("s1_width", layers=2, hidden=512, batch=64, seq=20, inputs=64),
                      "cuda", "cuda", dtype, seed=21)


def stack_inputs(dtype, device="cuda", scale=1.0, **shape):
    from test_stack import stack_args
    return [[t.detach().to(device, dtype) * scale for t in a] if isinstance(a, list)
            else a.detach().to(device, dtype) for a in stack_args(**shape)]


@pytest.mark.parametrize("hidden,h0_offset", [(70, 0), (64, 0), (64, 1)],
                         ids=["scalar_loads", "vector_loads", "scalar_loads_unaligned_h0"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_persistent_p4_equals_its_host_run(monkeypatch, dtype, hidden, h0_offset):
    """p4 on tensor cores against the same per-warp code run on the CPU (the CPU op, fp32 in
    full precision) from the same values: the GPU rounds h to 16 bits every step (bf16, fp16)
    or the products' factors to TF32 (fp32, allowed for this test), so the tolerance is
    theirs. p4 loads its fragments element by element where hidden is not a multiple of 8 or
    h0 is not 16-byte aligned (h0_offset: h0 starts one element into its storage), else in
    16-byte chunks."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    args = stack_inputs(dtype, layers=3, steps=9, batch=37, hidden=hidden, seed=6)
    if h0_offset:
        h0 = args[1]
        shifted = torch.empty(h0.numel() + h0_offset, device="cuda", dtype=dtype)
        args[1] = shifted[h0_offset:].view_as(h0).copy_(h0)
        assert args[1].is_contiguous() and args[1].data_ptr() % 16 != 0
    host = [[t.cpu().float() for t in a] if isinstance(a, list) else a.cpu().float()
            for a in args]
    got = torch.ops.fastlstm.lstm_stack_persistent(*args)
    want = torch.ops.fastlstm.lstm_stack_persistent(*host)
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    for a, b, name in zip(got, want, ("hs", "cs", "gates")):
        assert_close(a.float().cpu(), b, tol, f"p4 vs its host run {name}")


def test_persistent_p4_fp32_only_as_tf32(monkeypatch):
    """fp32 under p4: not run while TF32 is off (the tests' default: an error under STRICT,
    the step loop without it); with torch.backends.cuda.matmul.allow_tf32 on, TF32 tensor
    cores: different from the step loop, but within TF32's error (10-bit mantissa inputs,
    fp32 sums)."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    # Weights x 0.2: gates off saturation, where TF32's rounding shows in the outputs.
    args = stack_inputs(torch.float32, scale=0.2, layers=2, steps=9, batch=37, hidden=70,
                        seed=7)
    with pytest.raises(RuntimeError, match="cannot run this stack"):
        torch.ops.fastlstm.lstm_stack_persistent(*args)
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "0")
    loop = torch.ops.fastlstm.lstm_stack_persistent(*args)
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    tf32 = torch.ops.fastlstm.lstm_stack_persistent(*args)
    err = relative_error(tf32[0], loop[0])
    # TF32 rounding of these inputs costs 1.5e-4 (benchmarks/tf32_error.py, a CPU emulation)
    assert 1e-7 < err < 1e-3, f"p4 with TF32 vs the step loop: relative error {err:.3g}"


def test_persistent_stack_falls_back_where_it_does_not_fit(monkeypatch):
    """Hidden 2048 bf16, 2 layers: 64 MB of weights, far over the GPU's shared memory."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    args = stack_inputs(torch.bfloat16, layers=2, steps=3, batch=2, hidden=2048, seed=5)
    args[3] = [w * 0.05 for w in args[3]]
    args[5] = [w * 0.05 for w in args[5]]
    with pytest.raises(RuntimeError, match="cannot run this stack"):
        torch.ops.fastlstm.lstm_stack_persistent(*args)
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "0")
    hs, cs, gates = torch.ops.fastlstm.lstm_stack_persistent(*args)
    xproj, h0, c0, w_ih, bias, w_hh = args
    below = None
    for layer in range(2):
        xp = xproj if layer == 0 else torch.addmm(bias[0], below.flatten(0, 1),
                                                  w_ih[0].t()).view(3, 2, -1)
        want = torch.ops.fastlstm.lstm_layer(xp, h0[layer], c0[layer], w_hh[layer], False)
        for a, b, name in zip((hs[layer], cs[layer], gates[layer]), want, ("hs", "cs", "gates")):
            assert_close(a, b, 1e-2, f"fallback layer {layer} {name}")
        below = want[0]


# The CUDA generation op (csrc/torch/generate_cuda.cpp). Not yet run on a GPU: until these
# pass in a recorded run, fastlstm.charrnn.model.generate keeps CUDA models on its
# per-character loop.
def generation_model(vocab=40, hidden=70, layers=3):
    from fastlstm.charrnn.model import CharRNN
    torch.manual_seed(0)
    m = CharRNN(vocab, hidden, layers, 0.0, 16).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.3, 0.3)
    return m


def test_generate_op_teacher_forced_matches_the_oracle():
    from fastlstm import ops
    from fastlstm.charrnn.model import CharRNN, _op_weights
    m = generation_model()
    ids = torch.randint(40, (5, 20), generator=torch.Generator().manual_seed(1))
    ref = CharRNN(**m.config, backend="reference").double().eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        expected = ref(ids)[0][:, -1]
    g = m.cuda()
    h = torch.zeros(3, 5, 70, device="cuda")
    _, logits, _, _ = ops.generate(torch.zeros(5, 40, device="cuda"), h, h.clone(),
                                   *_op_weights(g), 20, forced=ids.cuda())
    assert_close(logits, expected, 1e-5, "CUDA generate, teacher forced")


def test_generate_op_draws_as_the_cpu_op_does():
    """The first draw reads the logits given: the same bits in, the same ids out (up to a
    rounding at a boundary between two ids, so a handful may differ)."""
    from fastlstm import ops
    from fastlstm.charrnn.model import _op_weights
    m = generation_model(vocab=12, hidden=8, layers=1)
    logits = (torch.randn(12, generator=torch.Generator().manual_seed(3)) * 1.5).expand(20000, 12)
    h = torch.zeros(1, 20000, 8)
    for top_k, top_p in [(None, 1.0), (5, 1.0), (None, 0.7)]:
        cpu, *_ = ops.generate(logits.contiguous(), h, h.clone(), *_op_weights(m), 1, 0.9, top_k,
                               top_p, 42)
        gpu, *_ = ops.generate(logits.cuda().contiguous(), h.cuda(), h.cuda(),
                               *_op_weights(m.cuda()), 1, 0.9, top_k, top_p, 42)
        m.cpu()
        assert (cpu != gpu.cpu()).sum() <= 2


def test_generate_op_chunks_replay_the_graph_with_new_offsets():
    from fastlstm import ops
    from fastlstm.charrnn.model import _op_weights
    m = generation_model().cuda()
    w = _op_weights(m)
    start = torch.randn(4, 40, device="cuda")
    h = torch.zeros(3, 4, 70, device="cuda")
    whole, *_ = ops.generate(start, h, h.clone(), *w, 24, 0.8, 10, 0.9, 7)
    parts, logits, hh, cc = [], start, h, h.clone()
    for offset in range(0, 24, 8):
        ids, logits, hh, cc = ops.generate(logits, hh, cc, *w, 8, 0.8, 10, 0.9, 7, offset)
        parts.append(ids)
    assert torch.equal(whole, torch.cat(parts, 1))
    with pytest.raises(RuntimeError, match="bf16=True is CPU only"):
        ops.generate(start, h, h.clone(), *w, 2, bf16=True)
