// FastLSTM's and FastLSTMCell's streaming calls in C++ (fastlstm._C.streaming_call;
// module.py, _StreamingCalls):
// a deployed model calls a one-step forward again and again, and the Python that checked and
// routed such a call cost 12-18 us of a ~65 us call at 2 x 256 (batch 1, fp32), most of it
// cache misses: the weights' stream evicts the interpreter's data at every call. Here the
// same checks run on the tensors, the parameters are looked up in the module's own dict at
// every call (a replaced parameter is seen), and the stack op is called through the
// dispatcher (tracing, vmap and dispatch modes see it as they see ops.stack_inference), the
// GIL released. Anything this path does not take returns None: the module's Python route
// then checks it (errors included) and runs it as before.
#include "streaming_call.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <vector>

#include "layer_cpu_fused.h"

namespace fastlstm {
namespace {

using at::Tensor;

using StackOp = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                   at::TensorList, at::TensorList,
                                                   at::TensorList, at::TensorList,
                                                   at::ScalarType);

// The GIL released for the op (the kernel's threads need no Python); taken back however
// the op returns.
struct ReleasedGil {
  PyThreadState* state = PyEval_SaveThread();
  ~ReleasedGil() { PyEval_RestoreThread(state); }
};

bool plain_cpu(const Tensor& t) { return t.is_cpu() && t.layout() == at::kStrided; }

// The module's parameters named in `names` (a tuple of str), appended to `out`; false where
// one is missing or not a tensor (the Python route then deals with it).
bool lookup(PyObject* params, PyObject* names, std::vector<Tensor>& out) {
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(names); ++k) {
    PyObject* p = PyDict_GetItemWithError(params, PyTuple_GET_ITEM(names, k));
    if (p == nullptr || !THPVariable_CheckExact(p)) return false;
    out.push_back(THPVariable_Unpack(p));
  }
  return true;
}

// A state given to the call: a tuple or list of two tensors shaped `shape` ([L, B, H], or a
// cell's [B, H]), on the CPU, in the weights' dtype (or any, under autocast).
bool given_state(PyObject* hx, at::IntArrayRef shape, at::ScalarType weight_dtype,
                 bool autocast, Tensor& h0, Tensor& c0) {
  if (!(PyTuple_CheckExact(hx) || PyList_CheckExact(hx)) || PySequence_Fast_GET_SIZE(hx) != 2)
    return false;
  Tensor* state[2] = {&h0, &c0};
  for (int k = 0; k < 2; ++k) {
    PyObject* t = PySequence_Fast_GET_ITEM(hx, k);
    if (!THPVariable_CheckExact(t)) return false;
    *state[k] = THPVariable_Unpack(t);
    if (state[k]->sizes() != shape || !plain_cpu(*state[k]) ||
        (state[k]->scalar_type() != weight_dtype && !autocast))
      return false;
  }
  return true;
}

}  // namespace

// streaming_call(route, params, input, hx): route = (names, input_size, hidden, batch_first,
// max_batch, cell) from _StreamingCalls._route (module.py): names four tuples of parameter
// names, one name a layer (w_ih, w_hh, b_ih, b_hh; the biases' empty without bias);
// max_batch two tuples, float32's and bfloat16's, whose entry s - 1 is the largest batch
// taken at s steps (as many entries as the short calls have steps). A module: input
// [S, B, I] (or [B, S, I]), hx None or (h0, c0) [L, B, H]; returns (out, (h_n, c_n)). A
// cell (one layer, one step): input [B, I], hx None or (h, c) [B, H]; returns (h', c').
// None where it does not take the call.
PyObject* streaming_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 4) {
    PyErr_SetString(PyExc_TypeError, "streaming_call(route, params, input, hx)");
    return nullptr;
  }
  PyObject *route = args[0], *params = args[1], *input = args[2], *hx = args[3];
  if (!PyTuple_CheckExact(route) || PyTuple_GET_SIZE(route) != 6 || !PyDict_Check(params)) {
    PyErr_SetString(PyExc_TypeError, "streaming_call: route must be a 6-tuple, params a dict");
    return nullptr;
  }
  if (!THPVariable_CheckExact(input)) Py_RETURN_NONE;
  const Tensor& x = THPVariable_Unpack(input);
  PyObject* names = PyTuple_GET_ITEM(route, 0);
  const int64_t input_size = PyLong_AsLongLong(PyTuple_GET_ITEM(route, 1));
  const int64_t hidden = PyLong_AsLongLong(PyTuple_GET_ITEM(route, 2));
  const bool batch_first = PyTuple_GET_ITEM(route, 3) == Py_True;
  const bool cell = PyTuple_GET_ITEM(route, 5) == Py_True;
  if (PyErr_Occurred()) return nullptr;
  if (x.dim() != (cell ? 2 : 3) || !plain_cpu(x) || x.size(-1) != input_size) Py_RETURN_NONE;
  const int64_t steps = cell ? 1 : x.size(batch_first ? 1 : 0);
  const int64_t batch = x.size(cell || batch_first ? 0 : 1);

  std::vector<Tensor> w[4];
  for (int k = 0; k < 4; ++k)
    if (!lookup(params, PyTuple_GET_ITEM(names, k), w[k])) {
      if (PyErr_Occurred()) return nullptr;
      Py_RETURN_NONE;
    }
  const Tensor& weight = w[0][0];
  const bool autocast = at::autocast::is_autocast_enabled(at::kCPU);
  if (!plain_cpu(weight) || (x.scalar_type() != weight.scalar_type() && !autocast))
    Py_RETURN_NONE;
  const at::ScalarType dtype = autocast ? at::autocast::get_autocast_dtype(at::kCPU)
                                        : x.scalar_type();
  if (!cpu_fused_enabled(dtype)) Py_RETURN_NONE;
  // auto's rule (or "cpu": every batch) for this dtype and number of steps
  PyObject* limits = PyTuple_GET_ITEM(PyTuple_GET_ITEM(route, 4), dtype == at::kFloat ? 0 : 1);
  if (steps < 1 || steps > PyTuple_GET_SIZE(limits) ||
      batch > PyLong_AsLongLong(PyTuple_GET_ITEM(limits, steps - 1)))
    Py_RETURN_NONE;

  const int64_t layers = static_cast<int64_t>(w[1].size());
  Tensor h0, c0;
  if (hx == Py_None) {
    h0 = at::zeros({layers, batch, hidden}, x.options());
    c0 = at::zeros({layers, batch, hidden}, x.options());
  } else if (cell) {
    if (!given_state(hx, {batch, hidden}, weight.scalar_type(), autocast, h0, c0))
      Py_RETURN_NONE;
    h0 = h0.unsqueeze(0), c0 = c0.unsqueeze(0);
  } else if (!given_state(hx, {layers, batch, hidden}, weight.scalar_type(), autocast, h0, c0)) {
    Py_RETURN_NONE;
  }

  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastlstm::lstm_stack_inference", "")
                             .typed<StackOp>();
  std::tuple<Tensor, Tensor, Tensor> result;
  {
    const ReleasedGil released;
    result = op.call(cell ? x.unsqueeze(0) : batch_first ? x.transpose(0, 1) : x, h0, c0, w[0],
                     w[1], w[2], w[3], dtype);
  }
  auto& [out, h_n, c_n] = result;
  if (cell)
    return Py_BuildValue("NN", THPVariable_Wrap(h_n.squeeze(0)), THPVariable_Wrap(c_n.squeeze(0)));
  return Py_BuildValue("N(NN)", THPVariable_Wrap(batch_first ? out.transpose(0, 1) : out),
                       THPVariable_Wrap(h_n), THPVariable_Wrap(c_n));
  END_HANDLE_TH_ERRORS
}

}  // namespace fastlstm
