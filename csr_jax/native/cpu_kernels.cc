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
#include <cmath>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

namespace ffi = xla::ffi;

namespace {

using csr_native::ChunkStart;
using csr_native::ParallelChunks;

struct Geometry {
  int64_t n, h, w, c;   // x
  int64_t ho, wo;       // y / g
  int64_t kh, kw, sh, sw, pt, pl;
};

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

// Runs range(r0, r1) over [0, rows) cut into at most kRowChunks chunks, on the pool.
template <typename Range>
void ForEachRowRange(ffi::ThreadPool& pool, int64_t rows, Range range) {
  const int64_t count = std::max<int64_t>(1, std::min(rows, kRowChunks));
  ParallelChunks(pool, count, [&](int64_t i) {
    range(ChunkStart(rows, count, i), ChunkStart(rows, count, i + 1));
  });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 4> x, ffi::Buffer<ffi::F32, 4> k,
                   ffi::ResultBuffer<ffi::F32, 4> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pl) {
  const Geometry q = MakeGeometry(x.dimensions(), y->dimensions(), k.dimensions()[0],
                                  k.dimensions()[1], sh, sw, pt, pl);
  if (auto e = CheckGeometry(q); e.failure()) return e;
  const float *xd = x.typed_data(), *kd = k.typed_data();
  float* yd = y->typed_data();
  ForEachRowRange(pool, q.n * q.ho,
                  [&](int64_t r0, int64_t r1) { ForwardRows(q, xd, kd, yd, r0, r1); });
  return ffi::Error::Success();
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 4> g, ffi::Buffer<ffi::F32, 4> k,
                     ffi::ResultBuffer<ffi::F32, 4> dx, int64_t sh, int64_t sw, int64_t pt,
                     int64_t pl) {
  const Geometry q = MakeGeometry(dx->dimensions(), g.dimensions(), k.dimensions()[0],
                                  k.dimensions()[1], sh, sw, pt, pl);
  if (auto e = CheckGeometry(q); e.failure()) return e;
  const float *gd = g.typed_data(), *kd = k.typed_data();
  float* dxd = dx->typed_data();
  ForEachRowRange(pool, q.n * q.h,
                  [&](int64_t r0, int64_t r1) { InputGradRows(q, gd, kd, dxd, r0, r1); });
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


// ---------------------------------------------------------------------------------------------
// BatchNorm in training mode with an optional ReLU / ReLU6 after it, on x viewed as (M, C):
// M = every position (batch and space), C = channels, innermost. The statistics are summed in
// double precision over a FIXED number of row parts (added in part order), so the result does
// not depend on the thread count.

enum Activation : int64_t { kNone = 0, kRelu = 1, kRelu6 = 2 };

// The activation's gradient mask at its input z (jax.nn.relu: z > 0; jax.nn.relu6: 0 < z < 6).
// ACT is a template parameter so that the compiler vectorises each loop for one activation.
template <int64_t ACT>
inline float Pass(float z) {
  if (ACT == kRelu) return z > 0.0f ? 1.0f : 0.0f;
  if (ACT == kRelu6) return (z > 0.0f && z < 6.0f) ? 1.0f : 0.0f;
  return 1.0f;
}

template <int64_t ACT>
inline float Activate(float z) {
  if (ACT == kRelu) return std::max(z, 0.0f);
  if (ACT == kRelu6) return std::min(std::max(z, 0.0f), 6.0f);
  return z;
}

// Rows summed in float before each addition to the double totals: short enough for float's
// rounding to stay below the tests' tolerance, long enough that the double adds cost little.
constexpr int64_t kSumBlock = 64;

// Per-channel sums over the rows: out0[c] = sum of what row(r, acc0, acc1) adds to acc0, out1
// the same for acc1; in `parts` fixed parts added in part order (independent of the threads).
template <typename Row>
void ChannelSums(ffi::ThreadPool& pool, int64_t m, int64_t c, Row row, double* out0,
                 double* out1) {
  const int64_t parts = std::max<int64_t>(1, std::min(m, kGradParts));
  std::vector<double> partial(parts * 2 * c, 0.0);
  ParallelChunks(pool, parts, [&](int64_t p) {
    double* s0 = partial.data() + p * 2 * c;
    double* s1 = s0 + c;
    std::vector<float> a0(c, 0.0f), a1(c, 0.0f);
    const int64_t r0 = ChunkStart(m, parts, p), r1 = ChunkStart(m, parts, p + 1);
    for (int64_t block = r0; block < r1; block += kSumBlock) {
      const int64_t end = std::min(r1, block + kSumBlock);
      for (int64_t r = block; r < end; ++r) row(r, a0.data(), a1.data());
      for (int64_t v = 0; v < c; ++v) {
        s0[v] += a0[v];
        s1[v] += a1[v];
        a0[v] = 0.0f;
        a1[v] = 0.0f;
      }
    }
  });
  std::fill(out0, out0 + c, 0.0);
  std::fill(out1, out1 + c, 0.0);
  for (int64_t p = 0; p < parts; ++p) {
    const double* s0 = partial.data() + p * 2 * c;
    for (int64_t v = 0; v < c; ++v) {
      out0[v] += s0[v];
      out1[v] += s0[c + v];
    }
  }
}

template <typename Row>
void ForEachRowChunk(ffi::ThreadPool& pool, int64_t m, Row row) {
  ForEachRowRange(pool, m, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) row(r);
  });
}

template <int64_t ACT>
void NormalizeRows(ffi::ThreadPool& pool, int64_t m, int64_t c, const float* __restrict xd,
                   const float* __restrict mu, const float* __restrict a,
                   const float* __restrict b, float* __restrict yd) {
  ForEachRowChunk(pool, m, [&](int64_t r) {
    const float* __restrict xr = xd + r * c;
    float* __restrict yr = yd + r * c;
    for (int64_t v = 0; v < c; ++v) yr[v] = Activate<ACT>((xr[v] - mu[v]) * a[v] + b[v]);
  });
}

// y = act((x - mean) * (inv * scale) + bias) with the batch mean and the raw variance
// E[x^2] - E[x]^2 (returned, not clipped; inv = rsqrt(max(var, 0) + eps)).
ffi::Error BatchNormForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 2> x,
                            ffi::Buffer<ffi::F32, 1> scale, ffi::Buffer<ffi::F32, 1> bias,
                            ffi::ResultBuffer<ffi::F32, 2> y, ffi::ResultBuffer<ffi::F32, 1> mean,
                            ffi::ResultBuffer<ffi::F32, 1> raw_var, float eps, int64_t act) {
  if (act < kNone || act > kRelu6) {
    return ffi::Error::InvalidArgument("csr_jax batch norm: unknown activation code");
  }
  const int64_t m = x.dimensions()[0], c = x.dimensions()[1];
  const float* xd = x.typed_data();
  std::vector<double> s1(c), s2(c);
  ChannelSums(
      pool, m, c,
      [&](int64_t r, float* __restrict f0, float* __restrict f1) {
        const float* __restrict xr = xd + r * c;
        for (int64_t v = 0; v < c; ++v) {
          f0[v] += xr[v];
          f1[v] += xr[v] * xr[v];
        }
      },
      s1.data(), s2.data());
  std::vector<float> mu(c), a(c);
  const float* sd = scale.typed_data();
  for (int64_t v = 0; v < c; ++v) {
    const double mean_v = s1[v] / m;
    const float var_v = static_cast<float>(s2[v] / m - mean_v * mean_v);
    mu[v] = static_cast<float>(mean_v);
    mean->typed_data()[v] = mu[v];
    raw_var->typed_data()[v] = var_v;
    a[v] = sd[v] / std::sqrt(std::max(var_v, 0.0f) + eps);
  }
  const float* bd = bias.typed_data();
  float* yd = y->typed_data();
  if (act == kRelu) NormalizeRows<kRelu>(pool, m, c, xd, mu.data(), a.data(), bd, yd);
  else if (act == kRelu6) NormalizeRows<kRelu6>(pool, m, c, xd, mu.data(), a.data(), bd, yd);
  else NormalizeRows<kNone>(pool, m, c, xd, mu.data(), a.data(), bd, yd);
  return ffi::Error::Success();
}

// The backward pass: g = gy * act'(z) with z recomputed from x, then
//   sum_g = sum g, sum_gc = sum g * (x - mean) (returned), and
//   dx = a * g + c0 + c1 * (x - mean) with a = inv * scale,
//   c0 = (g_mean - a * sum_g) / M, c1 = (2 g_var - scale inv^3 sum_gc) / M where raw_var > 0, else 0.
template <int64_t ACT>
void BatchNormBackwardImpl(ffi::ThreadPool& pool, int64_t m, int64_t c, const float* xd,
                           const float* gd, const float* mu, const float* raw_var,
                           const float* sd, const float* bd, const float* g_mean,
                           const float* g_var, float eps, float* dxd, float* sum_g_out,
                           float* sum_gc_out) {
  std::vector<float> inv(c), a(c);
  for (int64_t v = 0; v < c; ++v) {
    inv[v] = 1.0f / std::sqrt(std::max(raw_var[v], 0.0f) + eps);
    a[v] = inv[v] * sd[v];
  }
  const float* __restrict ap = a.data();
  std::vector<double> sg(c), sgc(c);
  ChannelSums(
      pool, m, c,
      [&](int64_t r, float* __restrict f0, float* __restrict f1) {
        const float *__restrict xr = xd + r * c, *__restrict gr = gd + r * c;
        for (int64_t v = 0; v < c; ++v) {
          const float centred = xr[v] - mu[v];
          const float g = gr[v] * Pass<ACT>(centred * ap[v] + bd[v]);
          f0[v] += g;
          f1[v] += g * centred;
        }
      },
      sg.data(), sgc.data());
  std::vector<float> c0(c), c1(c);
  for (int64_t v = 0; v < c; ++v) {
    const float sum_g = static_cast<float>(sg[v]), sum_gc = static_cast<float>(sgc[v]);
    sum_g_out[v] = sum_g;
    sum_gc_out[v] = sum_gc;
    c0[v] = (g_mean[v] - a[v] * sum_g) / m;
    c1[v] = raw_var[v] > 0.0f ? (2.0f * g_var[v] - sd[v] * inv[v] * inv[v] * inv[v] * sum_gc) / m
                              : 0.0f;
  }
  const float *__restrict c0p = c0.data(), *__restrict c1p = c1.data();
  ForEachRowChunk(pool, m, [&](int64_t r) {
    const float *__restrict xr = xd + r * c, *__restrict gr = gd + r * c;
    float* __restrict dr = dxd + r * c;
    for (int64_t v = 0; v < c; ++v) {
      const float centred = xr[v] - mu[v];
      const float g = gr[v] * Pass<ACT>(centred * ap[v] + bd[v]);
      dr[v] = ap[v] * g + c0p[v] + c1p[v] * centred;
    }
  });
}

ffi::Error BatchNormBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 2> x,
                             ffi::Buffer<ffi::F32, 2> gy, ffi::Buffer<ffi::F32, 1> mean,
                             ffi::Buffer<ffi::F32, 1> raw_var, ffi::Buffer<ffi::F32, 1> scale,
                             ffi::Buffer<ffi::F32, 1> bias, ffi::Buffer<ffi::F32, 1> g_mean,
                             ffi::Buffer<ffi::F32, 1> g_var, ffi::ResultBuffer<ffi::F32, 2> dx,
                             ffi::ResultBuffer<ffi::F32, 1> sum_g,
                             ffi::ResultBuffer<ffi::F32, 1> sum_gc, float eps, int64_t act) {
  const int64_t m = x.dimensions()[0], c = x.dimensions()[1];
  auto run = [&](auto impl) {
    impl(pool, m, c, x.typed_data(), gy.typed_data(), mean.typed_data(), raw_var.typed_data(),
         scale.typed_data(), bias.typed_data(), g_mean.typed_data(), g_var.typed_data(), eps,
         dx->typed_data(), sum_g->typed_data(), sum_gc->typed_data());
  };
  if (act == kRelu) run(BatchNormBackwardImpl<kRelu>);
  else if (act == kRelu6) run(BatchNormBackwardImpl<kRelu6>);
  else if (act == kNone) run(BatchNormBackwardImpl<kNone>);
  else return ffi::Error::InvalidArgument("csr_jax batch norm: unknown activation code");
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

using Vec = ffi::Buffer<ffi::F32, 1>;
using Mat = ffi::Buffer<ffi::F32, 2>;
using VecOut = ffi::ResultBuffer<ffi::F32, 1>;

#define CSR_BN_FORWARD_BIND()                                                             \
  ffi::Ffi::Bind()                                                                       \
      .Ctx<ffi::ThreadPool>()                                                            \
      .Arg<Mat>()                                                                        \
      .Arg<Vec>()                                                                        \
      .Arg<Vec>()                                                                        \
      .Ret<Mat>()                                                                        \
      .Ret<Vec>()                                                                        \
      .Ret<Vec>()                                                                        \
      .Attr<float>("eps")                                                                \
      .Attr<int64_t>("act")

#define CSR_BN_BACKWARD_BIND()                                                            \
  ffi::Ffi::Bind()                                                                       \
      .Ctx<ffi::ThreadPool>()                                                            \
      .Arg<Mat>()                                                                        \
      .Arg<Mat>()                                                                        \
      .Arg<Vec>()                                                                        \
      .Arg<Vec>()                                                                        \
      .Arg<Vec>()                                                                        \
      .Arg<Vec>()                                                                        \
      .Arg<Vec>()                                                                        \
      .Arg<Vec>()                                                                        \
      .Ret<Mat>()                                                                        \
      .Ret<Vec>()                                                                        \
      .Ret<Vec>()                                                                        \
      .Attr<float>("eps")                                                                \
      .Attr<int64_t>("act")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CsrBatchNormForward, BatchNormForward, CSR_BN_FORWARD_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CsrBatchNormBackward, BatchNormBackward, CSR_BN_BACKWARD_BIND());
