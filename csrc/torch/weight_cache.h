// What is made from weights (their packed layouts) kept across calls while the weights are
// unchanged: inference and sampling call again and again with the same weights. An entry is
// found by the very tensors it was made from (each TensorImpl held by a weak reference: an
// entry whose tensor is freed is dropped, and the address cannot be reused while the weak
// reference lives), each tensor's version counter, which every in-place change (an optimizer
// step) bumps, and its data pointer, plus a caller's tag. An entry made from an older
// version of a tensor being looked up is dropped then (it would never match again).
#pragma once

#include <ATen/ATen.h>

#include <deque>
#include <mutex>
#include <vector>

namespace fastlstm {

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
                      w.unsafeGetTensorImpl()->version_counter().current_version(), w.data_ptr()});
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
  };
  struct Entry {
    std::vector<Key> keys;
    int64_t tag;
    Value value;
  };

  static bool same(const std::vector<Key>& a, const std::vector<Key>& b) {
    if (a.size() != b.size()) return false;
    for (size_t k = 0; k < a.size(); ++k)
      if (a[k].impl != b[k].impl || a[k].version != b[k].version || a[k].data != b[k].data)
        return false;
    return true;
  }
  // One of the entry's tensors freed, or one of `keys`' tensors at another version or place.
  static bool stale(const Entry& e, const std::vector<Key>& keys) {
    for (const Key& k : e.keys) {
      if (k.weight.expired()) return true;
      for (const Key& q : keys)
        if (q.impl == k.impl && (q.version != k.version || q.data != k.data)) return true;
    }
    return false;
  }

  const size_t capacity_;
  std::mutex mutex_;
  std::deque<Entry> entries_;
};

}  // namespace fastlstm
