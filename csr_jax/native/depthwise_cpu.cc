// Depthwise 2-D convolution on the CPU: forward, input gradient and kernel gradient, as XLA FFI
// custom calls (csr_jax/native/__init__.py builds and registers them; csr_jax/depthwise.py uses
// them for float32 on the CPU path).
//
// Why native code: XLA:CPU has no fast depthwise convolution. Written as k*k shifted multiplies
// (csr_jax/depthwise.py) the forward and input gradient are fused loops, but they read a padded
// copy of the input that XLA materialises, and the kernel gradient becomes k*k separate
// reductions that each read the whole input and cotangent. Here each of the three is ONE pass
// over its operands, channels innermost (NHWC), vectorised by the compiler.
//
// Layouts: x (N, H, W, C), y and g (N, Ho, Wo, C), kernel (KH, KW, 1, C), all float32,
// row-major. Geometry: y[n, ho, wo, c] = sum_{i, j} x[n, ho*sh + i - pt, wo*sw + j - pl, c]
// * k[i, j, c], with x zero outside its bounds (pt, pl: the low padding; the high padding is
// implied by the shapes).
//
// Threads: work is cut into a fixed number of chunks and run on XLA's intra-op thread pool; the
// calling thread claims chunks too, so a busy pool never deadlocks it, and the result does not
// depend on how many threads ran (the kernel gradient's partial sums are per chunk, added in
// chunk order).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c;   // x
  int64_t ho, wo;       // y / g
  int64_t kh, kw, sh, sw, pt, pl;
};

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
void ParallelChunks(ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> run) {
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

inline void MultiplyAdd(float* __restrict acc, const float* __restrict a,
                        const float* __restrict b, int64_t c) {
  for (int64_t v = 0; v < c; ++v) acc[v] += a[v] * b[v];
}

// y rows (n, ho) in [r0, r1).
void ForwardRows(const Geometry& q, const float* x, const float* k, float* y, int64_t r0,
                 int64_t r1) {
  const int64_t C = q.c;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / q.ho, ho = r % q.ho;
    float* yrow = y + r * q.wo * C;
    std::memset(yrow, 0, sizeof(float) * q.wo * C);
    for (int64_t i = 0; i < q.kh; ++i) {
      const int64_t hi = ho * q.sh + i - q.pt;
      if (hi < 0 || hi >= q.h) continue;
      const float* xrow = x + (n * q.h + hi) * q.w * C;
      for (int64_t wo = 0; wo < q.wo; ++wo) {
        for (int64_t j = 0; j < q.kw; ++j) {
          const int64_t wi = wo * q.sw + j - q.pl;
          if (wi < 0 || wi >= q.w) continue;
          MultiplyAdd(yrow + wo * C, xrow + wi * C, k + (i * q.kw + j) * C, C);
        }
      }
    }
  }
}

// dx rows (n, h) in [r0, r1): the gather form of the forward's transpose.
void InputGradRows(const Geometry& q, const float* g, const float* k, float* dx, int64_t r0,
                   int64_t r1) {
  const int64_t C = q.c;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / q.h, h = r % q.h;
    float* dxrow = dx + r * q.w * C;
    std::memset(dxrow, 0, sizeof(float) * q.w * C);
    for (int64_t i = 0; i < q.kh; ++i) {
      const int64_t t = h + q.pt - i;
      if (t < 0 || t % q.sh != 0 || t / q.sh >= q.ho) continue;
      const float* grow = g + (n * q.ho + t / q.sh) * q.wo * C;
      for (int64_t w = 0; w < q.w; ++w) {
        for (int64_t j = 0; j < q.kw; ++j) {
          const int64_t u = w + q.pl - j;
          if (u < 0 || u % q.sw != 0 || u / q.sw >= q.wo) continue;
          MultiplyAdd(dxrow + w * C, grow + (u / q.sw) * C, k + (i * q.kw + j) * C, C);
        }
      }
    }
  }
}

// Adds the kernel gradient of g rows (n, ho) in [r0, r1) to acc (KH * KW * C).
void KernelGradRows(const Geometry& q, const float* x, const float* g, float* acc, int64_t r0,
                    int64_t r1) {
  const int64_t C = q.c;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / q.ho, ho = r % q.ho;
    const float* grow = g + r * q.wo * C;
    for (int64_t i = 0; i < q.kh; ++i) {
      const int64_t hi = ho * q.sh + i - q.pt;
      if (hi < 0 || hi >= q.h) continue;
      const float* xrow = x + (n * q.h + hi) * q.w * C;
      for (int64_t wo = 0; wo < q.wo; ++wo) {
        for (int64_t j = 0; j < q.kw; ++j) {
          const int64_t wi = wo * q.sw + j - q.pl;
          if (wi < 0 || wi >= q.w) continue;
          MultiplyAdd(acc + (i * q.kw + j) * C, xrow + wi * C, grow + wo * C, C);
        }
      }
    }
  }
}

ffi::Error CheckGeometry(const Geometry& q) {
  if (q.kh < 1 || q.kw < 1 || q.sh < 1 || q.sw < 1 || q.pt < 0 || q.pl < 0) {
    return ffi::Error::InvalidArgument(
        "csr_jax depthwise: kernel sizes and strides must be >= 1 and paddings >= 0");
  }
  return ffi::Error::Success();
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y, int64_t kh,
                      int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  return Geometry{x[0], x[1], x[2], x[3], y[1], y[2], kh, kw, sh, sw, pt, pl};
}

// Chunks per pass: enough for the pool to balance, few enough to keep each one long.
constexpr int64_t kRowChunks = 32;
// The kernel gradient's partial sums: a FIXED count, so the result is the same on any pool.
constexpr int64_t kGradParts = 16;

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 4> x, ffi::Buffer<ffi::F32, 4> k,
                   ffi::ResultBuffer<ffi::F32, 4> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pl) {
  const Geometry q = MakeGeometry(x.dimensions(), y->dimensions(), k.dimensions()[0],
                                  k.dimensions()[1], sh, sw, pt, pl);
  if (auto e = CheckGeometry(q); e.failure()) return e;
  const int64_t rows = q.n * q.ho;
  const int64_t count = std::max<int64_t>(1, std::min(rows, kRowChunks));
  const float *xd = x.typed_data(), *kd = k.typed_data();
  float* yd = y->typed_data();
  ParallelChunks(pool, count, [&](int64_t i) {
    ForwardRows(q, xd, kd, yd, ChunkStart(rows, count, i), ChunkStart(rows, count, i + 1));
  });
  return ffi::Error::Success();
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 4> g, ffi::Buffer<ffi::F32, 4> k,
                     ffi::ResultBuffer<ffi::F32, 4> dx, int64_t sh, int64_t sw, int64_t pt,
                     int64_t pl) {
  const Geometry q = MakeGeometry(dx->dimensions(), g.dimensions(), k.dimensions()[0],
                                  k.dimensions()[1], sh, sw, pt, pl);
  if (auto e = CheckGeometry(q); e.failure()) return e;
  const int64_t rows = q.n * q.h;
  const int64_t count = std::max<int64_t>(1, std::min(rows, kRowChunks));
  const float *gd = g.typed_data(), *kd = k.typed_data();
  float* dxd = dx->typed_data();
  ParallelChunks(pool, count, [&](int64_t i) {
    InputGradRows(q, gd, kd, dxd, ChunkStart(rows, count, i), ChunkStart(rows, count, i + 1));
  });
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 4> x, ffi::Buffer<ffi::F32, 4> g,
                      ffi::ResultBuffer<ffi::F32, 4> dk, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pl) {
  const Geometry q = MakeGeometry(x.dimensions(), g.dimensions(), dk->dimensions()[0],
                                  dk->dimensions()[1], sh, sw, pt, pl);
  if (auto e = CheckGeometry(q); e.failure()) return e;
  const int64_t rows = q.n * q.ho;
  const int64_t size = q.kh * q.kw * q.c;
  const int64_t parts = std::max<int64_t>(1, std::min(rows, kGradParts));
  std::vector<float> partial(parts * size, 0.0f);
  const float *xd = x.typed_data(), *gd = g.typed_data();
  ParallelChunks(pool, parts, [&](int64_t i) {
    KernelGradRows(q, xd, gd, partial.data() + i * size, ChunkStart(rows, parts, i),
                   ChunkStart(rows, parts, i + 1));
  });
  float* out = dk->typed_data();
  std::memcpy(out, partial.data(), sizeof(float) * size);
  for (int64_t p = 1; p < parts; ++p) {
    const float* src = partial.data() + p * size;
    for (int64_t t = 0; t < size; ++t) out[t] += src[t];
  }
  return ffi::Error::Success();
}

}  // namespace

#define CSR_DW_BIND()                                                                    \
  ffi::Ffi::Bind()                                                                       \
      .Ctx<ffi::ThreadPool>()                                                            \
      .Arg<ffi::Buffer<ffi::F32, 4>>()                                                   \
      .Arg<ffi::Buffer<ffi::F32, 4>>()                                                   \
      .Ret<ffi::Buffer<ffi::F32, 4>>()                                                   \
      .Attr<int64_t>("sh")                                                               \
      .Attr<int64_t>("sw")                                                               \
      .Attr<int64_t>("pt")                                                               \
      .Attr<int64_t>("pl")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CsrDepthwiseForward, Forward, CSR_DW_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CsrDepthwiseInputGrad, InputGrad, CSR_DW_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CsrDepthwiseKernelGrad, KernelGrad, CSR_DW_BIND());
