// The weight cache's Python side (weight_cache.h): the fingerprint module.py's cast cache
// keys on, and the hook every torch optimizer step calls.
#include "weight_cache.h"

#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

namespace fastlstm {

PyObject* py_weight_fingerprint(PyObject*, PyObject* tensor) {
  if (!THPVariable_Check(tensor)) {
    PyErr_SetString(PyExc_TypeError, "weight_fingerprint: expected a tensor");
    return nullptr;
  }
  return PyLong_FromUnsignedLongLong(weight_fingerprint(THPVariable_Unpack(tensor)));
}

PyObject* py_weights_changed(PyObject*, PyObject*) {
  weights_generation().fetch_add(1, std::memory_order_relaxed);
  Py_RETURN_NONE;
}

}  // namespace fastlstm
