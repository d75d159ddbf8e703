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


@pytest.fixture(params=["1", "2", "3", "4", "3d", "4d"],
                ids=["p1", "p2", "p3", "p4", "p3_dataflow", "p4_dataflow"])
def persistent(monkeypatch, request):
    """The persistent forward on (each version; p3 and p4 run unidirectional modules as one
    stack launch, the others layer by layer as p2 and p4; p4 is p3 in fp32; "d": with the
    dataflow sync instead of grid barriers), and its step-loop fallback an error (so these
    tests cannot pass without the kernel running)."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", request.param.removesuffix("d"))
    monkeypatch.setenv("FASTLSTM_PERSISTENT_DATAFLOW", "1" if request.param.endswith("d") else "0")
    before = fastlstm.persistent_enabled()
    fastlstm.set_persistent(True)
    yield
    fastlstm.set_persistent(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["one_layer", "three_layers_seq1", "bidirectional",
                                  "wide_small_batch", "long_bidir_batch_first"])
def test_persistent_kernel_matches_oracle(persistent, case, dtype):
    """The persistent forward (issue 7, first pass), trained through the existing backward."""
    from test_lstm import CASES, compare_to_oracle
    compare_to_oracle(next(c for c in CASES if c.name == case), "cuda", "cuda", dtype, seed=11)


def test_persistent_kernel_falls_back_where_it_does_not_fit(persistent, monkeypatch):
    """hidden 4096 in fp32: W_hh slices of 2 MB per block, far over shared memory."""
    xproj = torch.randn(3, 2, 4 * 4096, device="cuda")
    h0, c0 = (torch.randn(2, 4096, device="cuda") for _ in range(2))
    w = torch.randn(4 * 4096, 4096, device="cuda") * 0.01
    with pytest.raises(RuntimeError, match="does not fit"):
        torch.ops.fastlstm.lstm_layer_persistent(xproj, h0, c0, w, False)
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "0")
    ours = torch.ops.fastlstm.lstm_layer_persistent(xproj, h0, c0, w, False)
    loop = torch.ops.fastlstm.lstm_layer(xproj, h0, c0, w, False)
    for a, b, name in zip(ours, loop, ("hs", "cs", "gates")):
        assert_close(a, b, 0, f"fallback {name}")


def test_persistent_version_must_be_known(monkeypatch):
    monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", "5")
    x = torch.randn(2, 1, 8, device="cuda")
    h0, c0, w = torch.zeros(1, 2, device="cuda"), torch.zeros(1, 2, device="cuda"), \
        torch.zeros(8, 2, device="cuda")
    with pytest.raises(RuntimeError, match="VERSION must be 1 to 4"):
        torch.ops.fastlstm.lstm_layer_persistent(x, h0, c0, w, False)


def test_persistent_kernel_equals_the_step_loop(persistent):
    g = torch.Generator(device="cuda").manual_seed(0)
    xproj = torch.randn(7, 5, 4 * 70, device="cuda", generator=g)
    h0, c0 = (torch.randn(5, 70, device="cuda", generator=g) for _ in range(2))
    w = torch.randn(4 * 70, 70, device="cuda", generator=g) * 0.2
    for reverse in (False, True):
        ours = torch.ops.fastlstm.lstm_layer_persistent(xproj, h0, c0, w, reverse)
        loop = torch.ops.fastlstm.lstm_layer(xproj, h0, c0, w, reverse)
        for a, b, name in zip(ours, loop, ("hs", "cs", "gates")):
            assert_close(a, b, 1e-6, f"persistent {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_persistent_stack_at_s1_width_matches_oracle(persistent, dtype):
    """Hidden 512, batch 64 (S1's width: 132 blocks' worth of tiles on an H200), 2 layers,
    20 steps, trained through the existing backward."""
    from test_lstm import Case, compare_to_oracle
    compare_to_oracle(Case("s1_width", layers=2, hidden=512, batch=64, seq=20, inputs=64),
                      "cuda", "cuda", dtype, seed=21)


@pytest.mark.parametrize("parts", ["1", "3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_persistent_stack_kernel_equals_its_host_run(monkeypatch, dtype, parts):
    """The CUDA kernel against the same per-block code run on the CPU (the CPU op), with the
    batch in `parts` parts."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    monkeypatch.setenv("FASTLSTM_PERSISTENT_BATCH_PARTS", parts)
    from test_stack import stack_args
    args = stack_args(layers=3, steps=7, batch=5, hidden=70, seed=4)
    to = lambda a, device: ([t.detach().to(device, dtype) for t in a]  # noqa: E731
                            if isinstance(a, list) else a.detach().to(device, dtype))
    host, cuda = [to(a, "cpu") for a in args], [to(a, "cuda") for a in args]
    want = torch.ops.fastlstm.lstm_stack_persistent(*host)
    got = torch.ops.fastlstm.lstm_stack_persistent(*cuda)
    for a, b, name in zip(got, want, ("hs", "cs", "gates")):
        assert_close(a, b, 1e-12 if dtype == torch.float64 else 1e-6, f"stack {name}")


def test_persistent_stack_falls_back_where_it_does_not_fit(monkeypatch):
    """Hidden 2048 fp32, 2 layers: 200 MB of weights, far over the GPU's shared memory."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    from test_stack import stack_args
    args = [[t.detach().float().cuda() * 0.05 for t in a] if isinstance(a, list)
            else a.detach().float().cuda() for a in stack_args(layers=2, steps=3, batch=2,
                                                                 hidden=2048, seed=5)]
    with pytest.raises(RuntimeError, match="does not fit this stack"):
        torch.ops.fastlstm.lstm_stack_persistent(*args)
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "0")
    hs, cs, gates = torch.ops.fastlstm.lstm_stack_persistent(*args)
    xproj, h0, c0, w_ih, bias, w_hh = args
    below = None
    for layer in range(2):
        xp = xproj if layer == 0 else below @ w_ih[0].t() + bias[0]
        want = torch.ops.fastlstm.lstm_layer(xp, h0[layer], c0[layer], w_hh[layer], False)
        for a, b, name in zip((hs[layer], cs[layer], gates[layer]), want, ("hs", "cs", "gates")):
            assert_close(a, b, 1e-6, f"fallback layer {layer} {name}")
        below = want[0]


@pytest.mark.parametrize("hidden,h0_offset", [(70, 0), (64, 0), (64, 1)],
                         ids=["scalar_loads", "vector_loads", "scalar_loads_unaligned_h0"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_persistent_p4_tensor_cores_equal_p3(monkeypatch, dtype, hidden, h0_offset):
    """p4's products on tensor cores against p3's on CUDA cores: the same bf16/fp16 inputs,
    fp32 sums in another order (an output rounded to 16 bits may differ in its last place,
    and that difference travels on: the half types' tolerance). p4 loads its fragments
    element by element where hidden is not a multiple of 8 or h0 is not 16-byte aligned
    (h0_offset: h0 starts one element into its storage), else in 16-byte chunks."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    from test_stack import stack_args
    args = [[t.detach().to("cuda", dtype) for t in a] if isinstance(a, list)
            else a.detach().to("cuda", dtype)
            for a in stack_args(layers=3, steps=9, batch=37, hidden=hidden, seed=6)]
    if h0_offset:
        h0 = args[1]
        shifted = torch.empty(h0.numel() + h0_offset, device="cuda", dtype=dtype)
        args[1] = shifted[h0_offset:].view_as(h0).copy_(h0)
        assert args[1].is_contiguous() and args[1].data_ptr() % 16 != 0
    results = {}
    for version in ("3", "4"):
        monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", version)
        results[version] = torch.ops.fastlstm.lstm_stack_persistent(*args)
    for a, b, name in zip(results["4"], results["3"], ("hs", "cs", "gates")):
        assert_close(a, b, 1e-2, f"p4 vs p3 {name}")


def test_persistent_p4_fp32_uses_tf32_only_where_allowed(monkeypatch):
    """fp32 under version 4: p3 exactly while TF32 is off (the tests' default); with
    torch.backends.cuda.matmul.allow_tf32 on, TF32 tensor cores: different from p3, but
    within TF32's error (10-bit mantissa inputs, fp32 sums)."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    from test_stack import stack_args
    # Weights x 0.2: gates off saturation, where TF32's rounding shows in the outputs.
    args = [[t.detach().to("cuda", torch.float32) * 0.2 for t in a] if isinstance(a, list)
            else a.detach().to("cuda", torch.float32)
            for a in stack_args(layers=2, steps=9, batch=37, hidden=70, seed=7)]
    monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", "3")
    p3 = torch.ops.fastlstm.lstm_stack_persistent(*args)
    monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", "4")
    exact = torch.ops.fastlstm.lstm_stack_persistent(*args)
    for a, b, name in zip(exact, p3, ("hs", "cs", "gates")):
        assert_close(a, b, 0, f"p4 fp32 without TF32 vs p3 {name}")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    tf32 = torch.ops.fastlstm.lstm_stack_persistent(*args)
    err = relative_error(tf32[0], p3[0])
    # TF32 rounding of these inputs costs 1.5e-4 (benchmarks/tf32_error.py, a CPU emulation)
    assert 1e-7 < err < 1e-3, f"p4 with TF32 vs p3: relative error {err:.3g}"


@pytest.mark.parametrize("layers,hidden,batch,steps", [(2, 512, 64, 30), (3, 70, 37, 9)])
@pytest.mark.parametrize("version,dtype,parts", [("3", torch.float32, "1"),
                                                 ("4", torch.bfloat16, "1"),
                                                 ("4", torch.bfloat16, "2")])
def test_persistent_dataflow_sync_equals_grid_barriers(monkeypatch, version, dtype, parts,
                                                       layers, hidden, batch, steps):
    """The dataflow sync reorders the blocks, not the arithmetic: bit for bit the grid
    barrier's outputs (a missing wait would read a step not yet written: the outputs start
    as NaN under the tests, so it would show)."""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", version)
    monkeypatch.setenv("FASTLSTM_PERSISTENT_BATCH_PARTS", parts)
    from test_stack import stack_args
    args = [[t.detach().to("cuda", dtype) * 0.3 for t in a] if isinstance(a, list)
            else a.detach().to("cuda", dtype)
            for a in stack_args(layers=layers, steps=steps, batch=batch, hidden=hidden, seed=10)]
    runs = []
    for dataflow in ("0", "1", "1"):  # dataflow twice: the block order differs run to run
        monkeypatch.setenv("FASTLSTM_PERSISTENT_DATAFLOW", dataflow)
        runs.append(torch.ops.fastlstm.lstm_stack_persistent(*args))
    for name, grid, *dataflow_runs in zip(("hs", "cs", "gates"), *runs):
        for run, got in enumerate(dataflow_runs):
            assert not got.isnan().any(), f"dataflow run {run} {name}: NaN"
            assert torch.equal(got, grid), f"dataflow run {run} {name} differs from the grid's"


@pytest.mark.parametrize("version,dtype,tol,split", [("3", torch.float32, 1e-5, ("2",)),
                                                     ("4", torch.bfloat16, 1e-2, ("2", "4"))])
def test_persistent_batch_parts_equal_one_part(monkeypatch, version, dtype, tol, split):
    """S1's width (2 layers x 512, batch 64) with the batch split in parts against one part:
    the same sums per row, in another grid. (fp32 in 4 parts needs 393 KB of weights per
    block: it does not fit, and STRICT makes that an error.)"""
    monkeypatch.setenv("FASTLSTM_PERSISTENT_STRICT", "1")
    monkeypatch.setenv("FASTLSTM_PERSISTENT_VERSION", version)
    from test_stack import stack_args
    args = [[t.detach().to("cuda", dtype) * 0.1 for t in a] if isinstance(a, list)
            else a.detach().to("cuda", dtype)
            for a in stack_args(layers=2, steps=10, batch=64, hidden=512, seed=8)]
    results = {}
    for parts in ("1", *split):
        monkeypatch.setenv("FASTLSTM_PERSISTENT_BATCH_PARTS", parts)
        results[parts] = torch.ops.fastlstm.lstm_stack_persistent(*args)
    for parts in split:
        for a, b, name in zip(results[parts], results["1"], ("hs", "cs", "gates")):
            assert_close(a, b, tol, f"{parts} batch parts vs 1: {name}")


# The CUDA generation op (csrc/torch/generate_cuda.cpp). Not yet run on a GPU: until these
# pass in a recorded run, fastlstm.model.generate keeps CUDA models on its per-character loop.
def generation_model(vocab=40, hidden=70, layers=3):
    from fastlstm.model import CharRNN
    torch.manual_seed(0)
    m = CharRNN(vocab, hidden, layers, 0.0, 16).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.3, 0.3)
    return m


def test_generate_op_teacher_forced_matches_the_oracle():
    from fastlstm import ops
    from fastlstm.model import CharRNN, _op_weights
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
    from fastlstm.model import _op_weights
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
    from fastlstm.model import _op_weights
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
