// A per-thread, aligned scratch buffer that grows to the largest size asked of it.
//
// For the ISA-specific files: they must not instantiate library templates such as std::vector,
// whose weak copies the linker could hand to baseline code (tests/test_isa_isolation.py), so this
// uses malloc, and everything here has internal linkage (one private copy per file).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace pyllm {
namespace {

class ThreadScratch {
 public:
  ThreadScratch() = default;
  ThreadScratch(const ThreadScratch&) = delete;
  ThreadScratch& operator=(const ThreadScratch&) = delete;
  ~ThreadScratch() { std::free(data_); }

  void* get(size_t bytes, size_t align) {
    bytes = (bytes + align - 1) / align * align;  // aligned_alloc wants a multiple of the alignment
    if (bytes_ < bytes) {
      std::free(data_);
      data_ = std::aligned_alloc(align, bytes);
      bytes_ = data_ ? bytes : 0;
      if (!data_) throw std::bad_alloc();
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// `count` T's, `align`-byte aligned, owned by the calling thread: one buffer per (thread, Tag),
// so a file that needs two buffers at once gives them two tags.
template <typename T, typename Tag>
T* thread_scratch(size_t count, size_t align = 64) {
  thread_local ThreadScratch buf;
  return static_cast<T*>(buf.get(count * sizeof(T), align));
}

}  // namespace
}  // namespace pyllm
