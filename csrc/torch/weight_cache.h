// What is made from weights (their packed layouts) kept across calls while the weights are
// unchanged: inference and sampling call again and again with the same weights. An entry is
// found by the very tensors it was made from (each TensorImpl held by a weak reference: an
// entry whose tensor is freed is dropped, and the address cannot be reused while the weak
// reference lives), each tensor's version counter, which every in-place change (an optimizer
// step) bumps, and its data pointer, plus a caller's tag. An entry made from an older
// version of a tensor being looked up is dropped then (it would never match again).
// Version counters miss some in-place writes: torch's fused optimizers (Adam(fused=True))
// and writes through .data bump none. So each key also holds a fingerprint: the weights'
// generation, which every optimizer step bumps (fastlstm registers weights_changed as a
// post-step hook of all torch optimizers, ops.py), and a hash of elements spread over the
// tensor (any other write that changes a sampled element, as every update of all elements).
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

struct _object;  // PyObject

namespace fastlstm {

inline std::atomic<uint64_t>& weights_generation() {
  static std::atomic<uint64_t> generation{0};
  return generation;
}

// The generation mixed with a hash of 16 elements spread evenly over w (any layout). A
// streaming call looks up every layer's weights: 16 loads each, most of them cache misses,
// ~0.3 us a tensor (32 samples with a stride walk per sample cost 2-5 us a call). Elsewhere
// than in CPU memory (a GPU, meta, a tensor subclass as a trace's fakes) the generation alone:
// no element is read.
inline uint64_t weight_fingerprint(const at::Tensor& w) {
  constexpr int64_t kSamples = 16;
  const uint64_t generation = weights_generation().load(std::memory_order_relaxed);
  if (w.device().type() != at::kCPU || !w.has_storage() ||
      w.unsafeGetTensorImpl()->is_python_dispatch())
    return generation;
  uint64_t hash = 1469598103934665603ull ^ generation;
  const int64_t n = w.numel();
  const auto* base = static_cast<const uint8_t*>(w.data_ptr());
  const size_t bytes = std::min<size_t>(w.element_size(), 8);
  const bool contiguous = w.is_contiguous();
  for (int64_t k = 0; k < kSamples && n > 0; ++k) {
    int64_t index = static_cast<int64_t>(static_cast<double>(k) * (n - 1) / (kSamples - 1));
    int64_t offset = contiguous ? index : 0;  // of the element at row-major index `index`
    for (int64_t d = w.dim() - 1; d >= 0 && !contiguous; --d) {
      offset += index % w.size(d) * w.stride(d);
      index /= w.size(d);
    }
    uint64_t value = 0;
    std::memcpy(&value, base + offset * static_cast<int64_t>(w.element_size()), bytes);
    hash = (hash ^ value) * 1099511628211ull;
  }
  return hash;
}

// Python: _C.weight_fingerprint(tensor) -> int (module.py's cast cache), _C.weights_changed().
_object* py_weight_fingerprint(_object*, _object* tensor);
_object* py_weights_changed(_object*, _object*);

template <typename Value>
class WeightCache {
 public:
  explicit WeightCache(size_t capacity) : capacity_(capacity) {}

  // The value made from `weights` with `tag`, made by make() on a miss.
  template <typename MakeFn>
  Value get(at::ArrayRef<at::Tensor> weights, int64_t tag, MakeFn make) {
    std::vector<Key> keys;
    for (const at::Tensor& w : weights)
      keys.push_back({WeakImpl(w.getIntrusivePtr()), w.unsafeGetTensorImpl(),
                      w.unsafeGetTensorImpl()->version_counter().current_version(), w.data_ptr(),
                      weight_fingerprint(w)});
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = entries_.begin(); it != entries_.end();) {
        if (stale(*it, keys)) {
          it = entries_.erase(it);
        } else if (it->tag == tag && same(it->keys, keys)) {
          return it->value;
        } else {
          ++it;
        }
      }
    }
    Value value = make();
    const std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() >= capacity_) entries_.pop_front();
    entries_.push_back({std::move(keys), tag, value});
    return value;
  }

 private:
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  struct Key {
    WeakImpl weight;
    const c10::TensorImpl* impl;
    uint32_t version;
    const void* data;
    uint64_t print;  // weight_fingerprint
  };
  struct Entry {
    std::vector<Key> keys;
    int64_t tag;
    Value value;
  };

  static bool same(const std::vector<Key>& a, const std::vector<Key>& b) {
    if (a.size() != b.size()) return false;
    for (size_t k = 0; k < a.size(); ++k)
      if (a[k].impl != b[k].impl || changed(a[k], b[k])) return false;
    return true;
  }
  static bool changed(const Key& a, const Key& b) {
    return a.version != b.version || a.data != b.data || a.print != b.print;
  }
  // One of the entry's tensors freed, or one of `keys`' tensors changed since.
  static bool stale(const Entry& e, const std::vector<Key>& keys) {
    for (const Key& k : e.keys) {
      if (k.weight.expired()) return true;
      for (const Key& q : keys)
        if (q.impl == k.impl && changed(q, k)) return true;
    }
    return false;
  }

  const size_t capacity_;
  std::mutex mutex_;
  std::deque<Entry> entries_;
};

}  // namespace fastlstm
