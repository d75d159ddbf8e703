"""python benchmarks/results/2026-12-06-cpu-xeon-amx-streaming-cpp/ab_old_route.py ROUNDS CASES
A/B: FastLSTM's streaming call in C++ (new) against the Python quick route it replaced
(old: FastLSTM._streaming_call of c4738a2~1, its source inlined below), the op alone and onnxruntime;
interleaved blocks of calls, median per round, median over rounds."""
import sys, time, statistics, textwrap, torch
sys.path.insert(0, "benchmarks")  # run from the repository root
from test_bench_streaming import make_call, CASES
import fastlstm.module as M
from fastlstm import FastLSTM, ops, _extension
from fastlstm.module import CPU_FUSED_MIN_STEPS, _cpu_auto_fused, _onnx_exporting

src = '    def _streaming_call(self, input, hx):\n        """forward for what a deployed model calls again and again, without gradient: a\n        plain batched CPU tensor of under 4 steps in the weights\' dtype (or autocast\'s), given\n        or zero states, that the stack op runs (_stack_inference_fits and auto\'s rule).\n        _forward\'s routing and checks in few operations (where the weights stream from L3 at\n        every call, the interpreter\'s own code and data are cold at every call too); None for\n        anything else, which _forward then routes and checks as usual."""\n        if type(input) is not torch.Tensor or input.dim() != 3 or not input.is_cpu \\\n                or self.backend not in ("auto", "cpu") or self.bidirectional or self.proj_size:\n            return None\n        steps, batch = input.shape[:2] if not self.batch_first else input.shape[1::-1]\n        if steps >= CPU_FUSED_MIN_STEPS or input.size(2) != self.input_size:\n            return None\n        weight = self._parameters[self._weight_names[0]]\n        autocast = torch.is_autocast_enabled("cpu")\n        if not weight.is_cpu or (input.dtype != weight.dtype and not autocast):\n            return None\n        dtype = torch.get_autocast_dtype("cpu") if autocast else input.dtype\n        if hx is None:\n            state = self._zero_state(batch, input)\n        else:\n            shape = (self.num_layers, batch, self.hidden_size)\n            if len(hx) != 2 or any(type(t) is not torch.Tensor or t.shape != shape\n                                   or not t.is_cpu or (t.dtype != weight.dtype and not autocast)\n                                   for t in hx):\n                return None\n            state = hx\n        if not _extension.cpu_fused(dtype) or _onnx_exporting() or torch.compiler.is_compiling():\n            return None  # (cpu_fused: also whether the extension is there)\n        if self.backend == "auto" and not _cpu_auto_fused(dtype, False, steps, batch,\n                                                          self.hidden_size, streaming=True):\n            return None\n        out, h_n, c_n = self._forward_stack_inference(input, state, dtype)\n        return out, (h_n, c_n)\n\n    def _layer_params(self):\n        """(w_ih, w_hh, b_ih, b_hh) lists, one entry per layer (a unidirectional stack); the\n        bias lists empty without bias."""\n        names = self.__dict__.get("_layer_param_names")\n        if names is None:  # once per module (and for modules pickled before this existed)\n            per = len(self._weight_names) // self.num_layers\n            names = [self._weight_names[k::per] for k in range(4 if self.bias else 2)]\n            self._layer_param_names = names\n        params = self._parameters\n        columns = [[params[name] for name in column] for column in names]\n        return columns if self.bias else columns + [[], []]\n'
ns = dict(M.__dict__)
exec(textwrap.dedent(src), ns)

class Old(FastLSTM):
    def forward(self, input, hx=None):
        if not torch.is_grad_enabled():
            out = self._streaming_call(input, hx)
            if out is not None:
                return out
        return self._forward(input, hx)
    _streaming_call = ns["_streaming_call"]
    _layer_params = ns["_layer_params"]
    def _forward_stack_inference(self, x, state, dtype):
        params = self._layer_params()
        out, h_n, c_n = ops.stack_inference(x.transpose(0, 1) if self.batch_first else x, *state, *params, dtype)
        return (out.transpose(0, 1) if self.batch_first else out), h_n, c_n

rounds = int(sys.argv[1]); cases = sys.argv[2].split(",")
for case in cases:
  for dt in ("fp32", "bf16"):
    layers, hidden, batch, steps = CASES[case]
    torch.manual_seed(0)
    new = FastLSTM(hidden, hidden, layers).eval(); old = Old(hidden, hidden, layers).eval(); old.load_state_dict(new.state_dict())
    x = torch.randn(steps, batch, hidden); st = (torch.randn(layers, batch, hidden), torch.randn(layers, batch, hidden))
    params = new._layer_params(); dtype = torch.float32 if dt == "fp32" else torch.bfloat16
    op = torch.ops.fastlstm.lstm_stack_inference.default
    ac = lambda: torch.autocast("cpu", torch.bfloat16, enabled=dt == "bf16")
    v = {"new": lambda: new(x, st), "old": lambda: old(x, st), "op": lambda: op(x, *st, *params, dtype)}
    ort = make_call(case, "onnxruntime", "fp32")
    res = {k: [] for k in list(v) + ["ort"]}
    with torch.no_grad(), ac():
      a, b = new(x, st), old(x, st); assert torch.equal(a[0], b[0])
      for r in range(rounds):
        for k, f in list(v.items()) + [("ort", ort)]:
            time.sleep(0.002)
            for _ in range(5): f()
            t = []
            for _ in range(10):
                t0 = time.perf_counter(); f(); t.append(time.perf_counter() - t0)
            res[k].append(statistics.median(t))
    med = {k: statistics.median(r) * 1e6 for k, r in res.items()}
    ratio = lambda k: statistics.median([a / b for a, b in zip(res[k], res["ort"])])
    print(f"{case:10s} {dt}: " + "  ".join(f"{k} {med[k]:7.1f} us ({ratio(k):.2f})" for k in med), flush=True)
