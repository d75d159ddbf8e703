// fastlstm._C.streaming_call: FastLSTM's short calls without gradient, checked and routed in
// C++ (streaming_call.cpp).
#pragma once

#include <Python.h>

namespace fastlstm {

PyObject* streaming_call(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

}  // namespace fastlstm
