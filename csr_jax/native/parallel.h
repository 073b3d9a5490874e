// Shared by the native CPU kernels (cpu_kernels.cc, pointwise_csr.cc): running a fixed number of
// work chunks on XLA's intra-op thread pool.
//
// The calling thread claims chunks too, so a busy pool never deadlocks it; results never depend
// on how many threads ran, because every reduction is summed per chunk and the chunks are added
// in chunk order.

#ifndef CSR_JAX_NATIVE_PARALLEL_H_
#define CSR_JAX_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace csr_native {

namespace ffi = xla::ffi;

struct Chunks {
  std::function<void(int64_t)> run;
  int64_t count;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Drain() {
    for (int64_t i; (i = next.fetch_add(1)) < count;) {
      run(i);
      done.fetch_add(1);
    }
  }
};

// Runs run(0) .. run(count - 1) on the pool and the calling thread; returns when all are done.
inline void ParallelChunks(ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> run) {
  auto chunks = std::make_shared<Chunks>();
  chunks->run = std::move(run);
  chunks->count = count;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([chunks]() { chunks->Drain(); });
  }
  chunks->Drain();
  while (chunks->done.load() < count) std::this_thread::yield();
}

// [begin, end) of chunk i when `total` items are cut into `count` chunks.
inline int64_t ChunkStart(int64_t total, int64_t count, int64_t i) { return total * i / count; }

}  // namespace csr_native

#endif  // CSR_JAX_NATIVE_PARALLEL_H_
