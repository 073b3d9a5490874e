// A whole 1x1 CSR-Conv layer (docs/csr_conv.md sections 2-5) on the CPU, forward and backward,
// as two XLA FFI custom calls (csr_jax/native/__init__.py registers them, csr_jax/csr_conv.py
// uses them for float32 widening 1x1 layers on the CPU path; csr_jax/pointwise_native.py says
// when).
//
// Why native code: with XLA the layer is a few dots (one per step and path) and, between them,
// memory-bound passes over full-size tensors that the ordinary conv does not have -- the steps cut
// out of the input path's output, the hidden update and its recomputation in the backward pass,
// the steps joined into the output, their gradients split and joined again. In the CSR
// MobileNetV2-CIFAR train step those passes cost as much time as the dots themselves. Here every
// pass runs on a tile of pixels that stays in cache: for each tile the T steps' matrix products,
// the update and the writes of the output happen back to back, so the output is written once
// and nothing but the output and the hidden terms r_3 .. r_T touches memory.
//
// Shapes, float32, row-major, P = batch * height * width pixels:
//   x (P, C_in); U (g_in, g_out); V (g_out, g_out); bU, bV (g_out) (zeros without bias);
//   alpha, beta (1); y (P, C_out); r, the residual for the backward pass, (P, (T-2) g_out):
//   r_3 .. r_T. r_2 is composed from x_1 (see Weights) and recomputed in the backward pass.
// The input channels wrap around (chunk t reads channels (t g_in + j) mod C_in) and the output
// is cut to C_out, as the layer's definition says.
//
// Backward: the input path a_t = x_t U + bU is recomputed per tile (g_in < g_out: cheaper than
// storing it), r_3 .. r_T are read back, h_{t-1} is read from y. The weight gradients are summed
// per part of the pixels (a count fixed by the pixel count) and the parts added in order, so
// results do not depend on the threads.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using csr_native::ChunkStart;
using csr_native::ParallelChunks;

// 16 floats: one AVX-512 register, two AVX2 registers, four SSE registers.
typedef float Vec16 __attribute__((vector_size(64), may_alias, aligned(4)));

inline Vec16 Load(const float* p) { return *reinterpret_cast<const Vec16*>(p); }
inline void Store(float* p, Vec16 v) { *reinterpret_cast<Vec16*>(p) = v; }

// C[MR x 16 NV] (+)= A[MR x k] B[k x 16 NV]; A's element (i, p) at a[i * ai + p * ak].
template <int MR, int NV>
inline void Tile(int64_t k, const float* __restrict a, int64_t ai, int64_t ak,
                 const float* __restrict b, int64_t ldb, float* __restrict c, int64_t ldc,
                 bool accumulate) {
  Vec16 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = accumulate ? Load(c + i * ldc + 16 * v) : Vec16{};
  for (int64_t p = 0; p < k; ++p) {
    Vec16 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = Load(b + p * ldb + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float s = a[i * ai + p * ak];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += s * bv[v];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Store(c + i * ldc + 16 * v, acc[i][v]);
}

constexpr int kRows = 6;  // rows per register tile: 6 x 32 accumulators + 2 loads fit AVX-512

template <int NV>
void ColumnBlock(int64_t m, int64_t k, const float* a, int64_t ai, int64_t ak, const float* b,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + kRows <= m; i += kRows)
    Tile<kRows, NV>(k, a + i * ai, ai, ak, b, ldb, c + i * ldc, ldc, accumulate);
  const float* at = a + i * ai;
  float* ct = c + i * ldc;
  switch (m - i) {  // the last rows, in one register tile
    case 5: Tile<5, NV>(k, at, ai, ak, b, ldb, ct, ldc, accumulate); break;
    case 4: Tile<4, NV>(k, at, ai, ak, b, ldb, ct, ldc, accumulate); break;
    case 3: Tile<3, NV>(k, at, ai, ak, b, ldb, ct, ldc, accumulate); break;
    case 2: Tile<2, NV>(k, at, ai, ak, b, ldb, ct, ldc, accumulate); break;
    case 1: Tile<1, NV>(k, at, ai, ak, b, ldb, ct, ldc, accumulate); break;
    default: break;
  }
}

// C[m x n] (+)= A[m x k] B[k x n]: A's element (i, p) at a[i * ai + p * ak] (row-major A has
// ai = lda, ak = 1; a transposed one ai = 1, ak = lda), B row-major with leading dimension ldb.
void Gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t ai, int64_t ak,
          const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) ColumnBlock<2>(m, k, a, ai, ak, b + j, ldb, c + j, ldc, accumulate);
  for (; j + 16 <= n; j += 16) ColumnBlock<1>(m, k, a, ai, ak, b + j, ldb, c + j, ldc, accumulate);
  if (j == n) return;
  // The last n - j < 16 columns: through a zero-padded copy of B's columns and a 16-wide C.
  const int64_t rest = n - j;
  thread_local std::vector<float> bp, cp;
  bp.assign(k * 16, 0.0f);
  cp.assign(m * 16, 0.0f);
  for (int64_t p = 0; p < k; ++p) std::memcpy(&bp[p * 16], b + p * ldb + j, sizeof(float) * rest);
  if (accumulate)
    for (int64_t i = 0; i < m; ++i) std::memcpy(&cp[i * 16], c + i * ldc + j, sizeof(float) * rest);
  ColumnBlock<1>(m, k, a, ai, ak, bp.data(), 16, cp.data(), 16, accumulate);
  for (int64_t i = 0; i < m; ++i) std::memcpy(c + i * ldc + j, &cp[i * 16], sizeof(float) * rest);
}

struct Layer {
  int64_t p, c_in, c_out, steps, g_in, g;
  // A row of the residual: r_3 .. r_T, (T - 2) g values. r_2 is recomputed in the backward pass
  // (x_1 W: g_in g multiply-adds per pixel); recomputing r_3 .. r_T (g^2 each) was slower even
  // for MobileNetV2's narrowest layers (g = 32) than writing and reading them.
  int64_t rw;
};

// Pixels per tile: small enough that a tile's buffers stay in L2, large enough that the weight
// gradients' products (summed over the tile's pixels) run long register loops.
constexpr int64_t kTile = 96;
// Parts of the pixels whose weight-gradient sums are kept apart: a count fixed by the pixel count
// alone (not the threads), added in order.
constexpr int64_t kParts = 16;

// Tile rows of x with the channels wrapped around: xe (rows, T g_in).
// Rows are short (tens of floats): copied in place, not by a library call per row, which cost more
// than the copy itself (GCC would turn the loop back into memcpy calls without the attribute).
__attribute__((optimize("no-tree-loop-distribute-patterns"))) void GatherInput(
    const Layer& q, const float* x, int64_t rows, float* xe) {
  const int64_t width = q.steps * q.g_in;
  for (int64_t i = 0; i < rows; ++i) {
    const float* __restrict src = x + i * q.c_in;
    float* __restrict dst = xe + i * width;
    for (int64_t done = 0; done < width; done += q.c_in) {
      const int64_t n = std::min(q.c_in, width - done);
      for (int64_t j = 0; j < n; ++j) dst[done + j] = src[j];
    }
  }
}

// a = xe_t U (without bU, which the update adds) for a tile.
void InputPath(const Layer& q, const float* xe, int64_t rows, int64_t t, const float* u,
               float* a) {
  Gemm(rows, q.g, q.g_in, xe + t * q.g_in, q.steps * q.g_in, 1, u, q.g, a, q.g, false);
}

// Step t's columns of a y row that exist (the last step may be cut at C_out).
inline int64_t StepWidth(const Layer& q, int64_t t) {
  return std::max<int64_t>(0, std::min(q.g, q.c_out - t * q.g));
}

// The layer's parameters, and the composed second hidden term's: h_1 = x_1 U + bU is linear, so
// r_2 = h_1 V + bV = x_1 W + c2 with W = U V (g_in x g_out) and c2 = bU V + bV. Every widening
// layer (g_in < g_out, the only ones this runs) saves g_out^2 - g_in g_out multiply-adds per pixel
// so, in the forward pass and in both gradients.
struct Weights {
  const float *u, *v, *bu, *bv;
  float alpha, beta;
  std::vector<float> w, c2;

  Weights(const Layer& q, const float* u_, const float* v_, const float* bu_, const float* bv_,
          float alpha_, float beta_)
      : u(u_), v(v_), bu(bu_), bv(bv_), alpha(alpha_), beta(beta_), w(q.g_in * q.g),
        c2(bv_, bv_ + q.g) {
    Gemm(q.g_in, q.g, q.g, u, q.g, 1, v, q.g, w.data(), q.g, false);
    Gemm(1, q.g, q.g, bu, q.g, 1, v, q.g, c2.data(), q.g, true);
  }
};

// One pixel's update: r += bias (in place: r is kept for the backward pass), then
// h = alpha relu(a + bU + r) + (1 - beta) r.
inline void UpdateRow(int64_t g, float alpha, float keep, const float* __restrict a,
                      const float* __restrict bu, const float* __restrict bias,
                      float* __restrict r, float* __restrict h) {
  for (int64_t j = 0; j < g; ++j) {
    const float rv = r[j] + bias[j];
    const float s = a[j] + bu[j] + rv;
    h[j] = alpha * (s > 0.0f ? s : 0.0f) + keep * rv;
    r[j] = rv;
  }
}

// The matrix products write straight into the output y (h_t, and the A operand of the next
// step's product) and into the residual r: nothing is copied but the last step where the
// output cuts it.
void ForwardTiles(const Layer& q, const Weights& w, const float* x, float* y, float* r_out,
                  int64_t r0, int64_t r1) {
  const int64_t width = q.steps * q.g_in;
  std::vector<float> xe(kTile * width), a(kTile * q.g), hidden(kTile * q.g), cut(kTile * q.g);
  const float alpha = w.alpha, keep = 1.0f - w.beta;
  for (int64_t p0 = r0; p0 < r1; p0 += kTile) {
    const int64_t rows = std::min(kTile, r1 - p0);
    GatherInput(q, x + p0 * q.c_in, rows, xe.data());
    float* yt = y + p0 * q.c_out;
    float* rt = r_out + p0 * q.rw;
    // h_1 = x_1 U + bU (never cut: T >= 2 and (T - 1) g <= C_out).
    Gemm(rows, q.g, q.g_in, xe.data(), width, 1, w.u, q.g, yt, q.c_out, false);
    for (int64_t i = 0; i < rows; ++i) {
      float* __restrict h = yt + i * q.c_out;
      for (int64_t j = 0; j < q.g; ++j) h[j] += w.bu[j];
    }
    for (int64_t t = 1; t < q.steps; ++t) {
      InputPath(q, xe.data(), rows, t, w.u, a.data());
      const bool kept = t >= 2;
      float* r = kept ? rt + (t - 2) * q.g : hidden.data();
      const int64_t ldr = kept ? q.rw : q.g;
      if (t == 1)  // r_2 = x_1 W + c2
        Gemm(rows, q.g, q.g_in, xe.data(), width, 1, w.w.data(), q.g, r, ldr, false);
      else  // r_t = h_{t-1} V + bV
        Gemm(rows, q.g, q.g, yt + (t - 1) * q.g, q.c_out, 1, w.v, q.g, r, ldr, false);
      const int64_t cols = StepWidth(q, t);
      const bool whole = cols == q.g;
      float* h = whole ? yt + t * q.g : cut.data();
      const int64_t ldh = whole ? q.c_out : q.g;
      const float* bias = t == 1 ? w.c2.data() : w.bv;
      for (int64_t i = 0; i < rows; ++i)
        UpdateRow(q.g, alpha, keep, a.data() + i * q.g, w.bu, bias, r + i * ldr, h + i * ldh);
      if (!whole)
        for (int64_t i = 0; i < rows; ++i)
          std::memcpy(yt + i * q.c_out + t * q.g, cut.data() + i * q.g, sizeof(float) * cols);
    }
  }
}

// One part's sums of the parameter gradients; dw and dc2 are those of the composed W and c2.
struct Grads {
  std::vector<float> du, dv, dbu, dbv, dw, dc2, dalpha, dbeta;  // dalpha, dbeta per channel
  explicit Grads(const Layer& q)
      : du(q.g_in * q.g, 0.0f), dv(q.g * q.g, 0.0f), dbu(q.g, 0.0f), dbv(q.g, 0.0f),
        dw(q.g_in * q.g, 0.0f), dc2(q.g, 0.0f), dalpha(q.g, 0.0f), dbeta(q.g, 0.0f) {}
};

// Transposed copies of U, V and W: the input-side gradients multiply by them.
// U^T and W^T have g_in columns, usually not a multiple of 16; they are kept zero-padded to
// `gp` columns so that the input gradient's products run whole register tiles into a padded
// buffer (the Gemm's tail path copies its operands row by row, which cost more than the product).
struct Transposes {
  std::vector<float> ut, vt, wt;
  int64_t gp;
};

inline int64_t Padded16(int64_t n) { return (n + 15) / 16 * 16; }

// m^T for a row-major (rows x cols) m, as (cols x ld), ld >= rows, zero beyond column rows.
std::vector<float> Transposed(const float* m, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<float> out(cols * ld, 0.0f);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[j * ld + i] = m[i * cols + j];
  return out;
}

// The update's backward pass for one pixel: da = alpha dh [a + bU + r > 0],
// dr = da + (1 - beta) dh,
// and the per-channel sums of the biases', alpha's and beta's gradients (kept per channel: a sum
// in one float would stop the compiler from vectorising the loop).
void UpdateGrad(int64_t g, float alpha, float keep, const float* __restrict a,
                const float* __restrict bu, const float* __restrict r,
                const float* __restrict dh, float* __restrict da,
                float* __restrict dr, float* __restrict dbias, float* __restrict sum_alpha,
                float* __restrict sum_beta) {
  for (int64_t j = 0; j < g; ++j) {
    const float s = a[j] + bu[j] + r[j];
    const float relu = s > 0.0f ? s : 0.0f;
    const float g_s = s > 0.0f ? alpha * dh[j] : 0.0f;
    da[j] = g_s;
    dr[j] = g_s + keep * dh[j];
    dbias[j] += dr[j];
    sum_alpha[j] += dh[j] * relu;
    sum_beta[j] -= dh[j] * r[j];
  }
}

// dx[c] = sum of the padded per-step input gradients dxe[t][j] over t g_in + j = c (mod C_in):
// the wrapped-around channels folded back.
__attribute__((optimize("no-tree-loop-distribute-patterns"))) void FoldInputGrad(
    const Layer& q, int64_t gp, const float* dxe, int64_t rows, float* dx) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* __restrict src = dxe + i * q.steps * gp;
    float* __restrict dst = dx + i * q.c_in;
    for (int64_t t = 0, e = 0; t < q.steps; ++t) {
      for (int64_t j = 0; j < q.g_in; ++j, ++e) {
        const float v = src[t * gp + j];
        if (e < q.c_in)
          dst[e] = v;
        else
          dst[e % q.c_in] += v;
      }
    }
  }
}

void BackwardTiles(const Layer& q, const Weights& w, const Transposes& tr, const float* x,
                   const float* y, const float* r_in, const float* dy, float* dx, Grads& grads,
                   int64_t r0, int64_t r1) {
  const int64_t width = q.steps * q.g_in;
  const int64_t dxw = q.steps * tr.gp;  // a row of dxe: each step's g_in columns, padded to gp
  std::vector<float> xe(kTile * width), dxe(kTile * dxw), a(kTile * q.g), hidden(kTile * q.g),
      dh(kTile * q.g), da(kTile * q.g), dr(kTile * q.g), carry(kTile * q.g);
  const float alpha = w.alpha, keep = 1.0f - w.beta;
  for (int64_t p0 = r0; p0 < r1; p0 += kTile) {
    const int64_t rows = std::min(kTile, r1 - p0);
    GatherInput(q, x + p0 * q.c_in, rows, xe.data());
    for (int64_t t = q.steps - 1; t >= 0; --t) {
      // dh_t: the output's gradient (zero where the output is cut), plus the next step's through
      // V (none into h_1: r_2 was composed from x_1).
      const int64_t cols = StepWidth(q, t);
      const bool carried = t >= 1 && t < q.steps - 1;
      for (int64_t i = 0; i < rows; ++i) {
        const float* __restrict gy = dy + (p0 + i) * q.c_out + t * q.g;
        float* __restrict d = dh.data() + i * q.g;
        const float* __restrict c = carry.data() + i * q.g;
        for (int64_t j = 0; j < cols; ++j) d[j] = gy[j];
        for (int64_t j = cols; j < q.g; ++j) d[j] = 0.0f;
        if (carried)
          for (int64_t j = 0; j < q.g; ++j) d[j] += c[j];
      }
      const float* da_t = dh.data();  // h_1 = a_1: its gradient goes to the input path as is
      if (t > 0) {
        InputPath(q, xe.data(), rows, t, w.u, a.data());
        float* dbias = (t == 1 ? grads.dc2 : grads.dbv).data();
        float *sum_alpha = grads.dalpha.data(), *sum_beta = grads.dbeta.data();
        // r_t: read back, or r_2 = x_1 W + c2 recomputed as in the forward pass.
        const float* r = hidden.data();
        int64_t ldr = q.g;
        if (t >= 2) {
          r = r_in + p0 * q.rw + (t - 2) * q.g;
          ldr = q.rw;
        } else {
          Gemm(rows, q.g, q.g_in, xe.data(), width, 1, w.w.data(), q.g, hidden.data(), q.g, false);
          for (int64_t i = 0; i < rows; ++i) {
            float* __restrict hr = hidden.data() + i * q.g;
            for (int64_t j = 0; j < q.g; ++j) hr[j] += w.c2[j];
          }
        }
        for (int64_t i = 0; i < rows; ++i)
          UpdateGrad(q.g, alpha, keep, a.data() + i * q.g, w.bu, r + i * ldr, dh.data() + i * q.g,
                     da.data() + i * q.g, dr.data() + i * q.g, dbias, sum_alpha, sum_beta);
        if (t == 1) {
          // r_2 = x_1 W + c2: dW += x_1^T dr_2, dx_1 = dr_2 W^T (step 1 below adds its own).
          Gemm(q.g_in, q.g, rows, xe.data(), 1, width, dr.data(), q.g, grads.dw.data(), q.g,
               true);
          Gemm(rows, tr.gp, q.g, dr.data(), q.g, 1, tr.wt.data(), tr.gp, dxe.data(), dxw,
               false);
        } else {
          // r_t = h_{t-1} V + bV: dV += h_{t-1}^T dr_t (h_{t-1} read from y), dh_{t-1} = dr_t V^T.
          Gemm(q.g, q.g, rows, y + p0 * q.c_out + (t - 1) * q.g, 1, q.c_out, dr.data(), q.g,
               grads.dv.data(), q.g, true);
          Gemm(rows, q.g, q.g, dr.data(), q.g, 1, tr.vt.data(), q.g, carry.data(), q.g, false);
        }
        da_t = da.data();
      }
      for (int64_t i = 0; i < rows; ++i) {
        const float* __restrict d = da_t + i * q.g;
        float* __restrict dbu = grads.dbu.data();
        for (int64_t j = 0; j < q.g; ++j) dbu[j] += d[j];
      }
      // dU += x_t^T da_t; dx_t = da_t U^T (added to step 2's part for t = 0).
      Gemm(q.g_in, q.g, rows, xe.data() + t * q.g_in, 1, width, da_t, q.g, grads.du.data(), q.g,
           true);
      Gemm(rows, tr.gp, q.g, da_t, q.g, 1, tr.ut.data(), tr.gp, dxe.data() + t * tr.gp, dxw,
           t == 0);
    }
    FoldInputGrad(q, tr.gp, dxe.data(), rows, dx + p0 * q.c_in);
  }
}

ffi::Error CheckLayer(const Layer& q) {
  // h_1 .. h_{T-1} are read back from y, so only the last step may be cut (or left out).
  if (q.steps < 2 || q.g_in < 1 || q.g < 1 || q.steps * q.g_in < q.c_in ||
      q.steps * q.g < q.c_out || (q.steps - 1) * q.g > q.c_out ||
      q.rw != (q.steps - 2) * q.g)
    return ffi::Error::InvalidArgument(
        "csr_jax pointwise CSR: shapes do not match a CSR layer whose output keeps h_1 .. "
        "h_{T-1} whole (g = ceil(C / T), (T - 1) g_out <= C_out)");
  return ffi::Error::Success();
}

using Mat = ffi::Buffer<ffi::F32, 2>;
using Vec = ffi::Buffer<ffi::F32, 1>;
using MatOut = ffi::ResultBuffer<ffi::F32, 2>;
using VecOut = ffi::ResultBuffer<ffi::F32, 1>;

// Chunks of the forward pass: one per tile of pixels, at most 4 kParts (enough to balance the
// pool, few enough to keep each chunk long).
int64_t ForwardChunks(int64_t p) {
  return std::max<int64_t>(1, std::min<int64_t>(4 * kParts, (p + kTile - 1) / kTile));
}

ffi::Error PointwiseForward(ffi::ThreadPool pool, Mat x, Mat u, Mat v, Vec bu, Vec bv, Vec alpha,
                            Vec beta, MatOut y, MatOut r, int64_t steps) {
  const Layer q{x.dimensions()[0], x.dimensions()[1], y->dimensions()[1], steps,
                u.dimensions()[0], u.dimensions()[1], r->dimensions()[1]};
  if (auto e = CheckLayer(q); e.failure()) return e;
  const Weights w(q, u.typed_data(), v.typed_data(), bu.typed_data(), bv.typed_data(),
                  alpha.typed_data()[0], beta.typed_data()[0]);
  const float* xd = x.typed_data();
  float *yd = y->typed_data(), *rd = r->typed_data();
  const int64_t chunks = ForwardChunks(q.p);
  ParallelChunks(pool, chunks, [&](int64_t i) {
    ForwardTiles(q, w, xd, yd, rd, ChunkStart(q.p, chunks, i), ChunkStart(q.p, chunks, i + 1));
  });
  return ffi::Error::Success();
}

ffi::Error PointwiseBackward(ffi::ThreadPool pool, Mat x, Mat u, Mat v, Vec bu, Vec bv, Vec alpha,
                             Vec beta, Mat y, Mat r, Mat dy, MatOut dx, MatOut du, MatOut dv,
                             VecOut dbu, VecOut dbv, VecOut dalpha, VecOut dbeta, int64_t steps) {
  const Layer q{x.dimensions()[0], x.dimensions()[1], y.dimensions()[1], steps,
                u.dimensions()[0], u.dimensions()[1], r.dimensions()[1]};
  if (auto e = CheckLayer(q); e.failure()) return e;
  const Weights w(q, u.typed_data(), v.typed_data(), bu.typed_data(), bv.typed_data(),
                  alpha.typed_data()[0], beta.typed_data()[0]);
  const int64_t gp = Padded16(q.g_in);
  const Transposes tr{Transposed(w.u, q.g_in, q.g, gp), Transposed(w.v, q.g, q.g, q.g),
                      Transposed(w.w.data(), q.g_in, q.g, gp), gp};
  // At least a tile of pixels per part: each part's sums cost g^2 to add up, however few pixels.
  const int64_t parts = std::max<int64_t>(1, std::min(kParts, q.p / kTile));
  std::vector<Grads> grads(parts, Grads(q));
  ParallelChunks(pool, parts, [&](int64_t i) {
    BackwardTiles(q, w, tr, x.typed_data(), y.typed_data(), r.typed_data(), dy.typed_data(),
                  dx->typed_data(), grads[i], ChunkStart(q.p, parts, i),
                  ChunkStart(q.p, parts, i + 1));
  });
  Grads total(q);
  for (auto field : {&Grads::du, &Grads::dv, &Grads::dbu, &Grads::dbv, &Grads::dw, &Grads::dc2,
                     &Grads::dalpha, &Grads::dbeta}) {
    std::vector<float>& out = total.*field;
    for (const Grads& part : grads) {
      const std::vector<float>& more = part.*field;
      for (size_t j = 0; j < out.size(); ++j) out[j] += more[j];
    }
  }
  // Through W = U V and c2 = bU V + bV: dU += dW V^T, dV += U^T dW + bU^T dc2,
  // dbU += dc2 V^T, dbV += dc2.
  Gemm(q.g_in, q.g, q.g, total.dw.data(), q.g, 1, tr.vt.data(), q.g, total.du.data(), q.g, true);
  Gemm(q.g, q.g, q.g_in, w.u, 1, q.g, total.dw.data(), q.g, total.dv.data(), q.g, true);
  Gemm(q.g, q.g, 1, w.bu, 1, 1, total.dc2.data(), q.g, total.dv.data(), q.g, true);
  Gemm(1, q.g, q.g, total.dc2.data(), q.g, 1, tr.vt.data(), q.g, total.dbu.data(), q.g, true);
  for (int64_t j = 0; j < q.g; ++j) total.dbv[j] += total.dc2[j];
  std::copy(total.du.begin(), total.du.end(), du->typed_data());
  std::copy(total.dv.begin(), total.dv.end(), dv->typed_data());
  std::copy(total.dbu.begin(), total.dbu.end(), dbu->typed_data());
  std::copy(total.dbv.begin(), total.dbv.end(), dbv->typed_data());
  double sum_alpha = 0.0, sum_beta = 0.0;
  for (int64_t j = 0; j < q.g; ++j) {
    sum_alpha += total.dalpha[j];
    sum_beta += total.dbeta[j];
  }
  dalpha->typed_data()[0] = static_cast<float>(sum_alpha);
  dbeta->typed_data()[0] = static_cast<float>(sum_beta);
  return ffi::Error::Success();
}

// Both passes take the layer's input and parameters first.
auto LayerOperands() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<Mat>()   // x
      .Arg<Mat>()   // U
      .Arg<Mat>()   // V
      .Arg<Vec>()   // bU
      .Arg<Vec>()   // bV
      .Arg<Vec>()   // alpha
      .Arg<Vec>();  // beta
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CsrPointwiseForward, PointwiseForward,
                              LayerOperands()
                                  .Ret<Mat>()  // y
                                  .Ret<Mat>()  // r
                                  .Attr<int64_t>("steps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CsrPointwiseBackward, PointwiseBackward,
                              LayerOperands()
                                  .Arg<Mat>()  // y
                                  .Arg<Mat>()  // r
                                  .Arg<Mat>()  // dy
                                  .Ret<Mat>()  // dx
                                  .Ret<Mat>()  // dU
                                  .Ret<Mat>()  // dV
                                  .Ret<Vec>()  // dbU
                                  .Ret<Vec>()  // dbV
                                  .Ret<Vec>()  // dalpha
                                  .Ret<Vec>()  // dbeta
                                  .Attr<int64_t>("steps"));
