// The few-pixels path's three products (conv2d_few_pixels.cpp drives them), in portable vector
// code compiled once per instruction set. With few output pixels (one small image: a middle
// layer's 4 x 4 to 8 x 8 at batch 1) the GEMM paths spend most of a call re-laying out the
// weights (128->256 3x3 on 4 x 4: 1,152 x 256 weights for 16 pixels). Here the weights and their
// gradient stay in PyTorch's [K, T] layout (T = C*R*S taps in (c, r, s) order, a row per output
// channel) and only the image side is laid out (im2col, T x P, small):
//   forward      y[k][p]  = b[k] + sum_t w[k][t] col[t][p]   pixels in vectors, w broadcast from its rows
//   weight grad  dw[k][t] = sum_l dyt[l][k] rows[l][t]       taps in vectors, dy broadcast
//   input grad   dcol[t][p] = sum_k w[k][t] dy[k][p]         pixels in vectors, w broadcast from its rows
// Each output is one thread's, summed in a fixed order (taps, pixels or channels in order): the
// same for any thread count.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "conv2d_common.hpp"
#include "isa.hpp"
#include "isa_target.hpp"
#include "parallel.hpp"

#if defined(CNNFAST_ISA_AVX512) || defined(CNNFAST_ISA_AVX2)
#include <immintrin.h>
#endif

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

constexpr int VL = CNNFAST_VEC_BYTES / 4;  // floats per vector
#include "vec_impl.hpp"
// the first n (< VL * count) floats of `count` vectors, through a buffer
inline void store_part(float* p, const vec* v, int count, i64 n) {
  float tail[8 * 16];
  for (int j = 0; j < count; ++j) store(tail + j * VL, v[j]);
  std::memcpy(p, tail, sizeof(float) * size_t(n));
}

constexpr i64 kBlockRows = 24;  // the forward's rows per block of work (whole tiles of 8, 6 or 4 rows)
// rows of NV vectors of sums (acc[i*NV + j]) to out, rows ld apart: the first n floats of each
template <int NV>
inline void store_rows(float* out, i64 ld, const vec* acc, int rows, i64 n) {
  for (int i = 0; i < rows; ++i) {
    if (n == NV * VL)
      for (int j = 0; j < NV; ++j) store(out + i * ld + j * VL, acc[i * NV + j]);
    else
      store_part(out + i * ld, acc + i * NV, NV, n);
  }
}

// Register tiles (rows of the broadcast operand x vectors of the loaded one): AVX-512 and AArch64
// have 32 vector registers, SSE2 and AVX2 16 (x86 broadcasts need a register of their own below
// AVX-512; a row pointer each for the forward's weight rows: at most 8 in the general registers)
// (kNarrowInputRows: the input gradient's taps a tile when the image is at most 2 vectors wide)
#if CNNFAST_VEC_BYTES == 64 || defined(__aarch64__)
constexpr int kForwardNV = 4, kGradRows = 4, kGradNV = 6, kInputRows = 8, kInputNV = 3, kNarrowInputRows = 8;
constexpr int forward_rows(int nv) { return nv == 4 ? 6 : 8; }  // 24-32 sums and nv vectors of col
#else
// (4 x 2 on a 4 x 4 image's 16 pixels held 8 sums, as many as AVX2's two FMA units keep in flight)
constexpr int kForwardNV = 3, kGradRows = 4, kGradNV = 3, kInputRows = 4, kInputNV = 3, kNarrowInputRows = 6;
constexpr int forward_rows(int nv) { return nv == 1 ? 8 : nv == 2 ? 6 : 4; }
#endif

// ---- forward: rows k0.. (mc of MC) by NV vectors of pixels from p0, over every tap ----
template <int NV>
void forward_tile(float* y, const float* col, i64 ld, const float* w, const float* b, i64 T, i64 P, i64 k0, int mc,
                  i64 p0) {
  constexpr int MC = forward_rows(NV);
  const float* wr[MC];  // (spare rows repeat row k0 and are not stored)
  vec acc[MC * NV];
  for (int i = 0; i < MC; ++i) {
    wr[i] = w + (k0 + (i < mc ? i : 0)) * T;
    for (int j = 0; j < NV; ++j) acc[i * NV + j] = vec{} + b[k0 + (i < mc ? i : 0)];
  }
  const float* c = col + p0;
  for (i64 t = 0; t < T; ++t, c += ld) {
    vec cv[NV];
    for (int j = 0; j < NV; ++j) cv[j] = load(c + j * VL);
    for (int i = 0; i < MC; ++i) {
      const float wi = wr[i][t];
      for (int j = 0; j < NV; ++j) acc[i * NV + j] += wi * cv[j];
    }
  }
  store_rows<NV>(y + k0 * P + p0, P, acc, mc, std::min<i64>(NV * VL, P - p0));
}

template <int... NV>
void forward_tile_n(int nv, float* y, const float* col, i64 ld, const float* w, const float* b, i64 T, i64 P, i64 k0,
                    int mc, i64 p0, std::integer_sequence<int, NV...>) {
  ((nv == NV + 1 ? forward_tile<NV + 1>(y, col, ld, w, b, T, P, k0, mc, p0) : void()), ...);
}

// ---- weight gradient: rows k0.. (mc of kGradRows) by NV vectors of taps from t0, over every pixel ----
template <int NV>
void weight_grad_tile(float* dw, const float* dyt, i64 ldd, const float* rows, i64 ldr, i64 T, i64 L, i64 k0, int mc,
                      i64 t0) {
  constexpr int MC = kGradRows;
  vec acc[MC * NV] = {};
  const float* d = dyt + k0;  // (dyt's columns past K are zero: the spare rows read them)
  const float* r = rows + t0;
  for (i64 l = 0; l < L; ++l, d += ldd, r += ldr) {
    vec rv[NV];
    for (int j = 0; j < NV; ++j) rv[j] = load(r + j * VL);
    for (int i = 0; i < MC; ++i) {
      const float di = d[i];
      for (int j = 0; j < NV; ++j) acc[i * NV + j] += di * rv[j];
    }
  }
  store_rows<NV>(dw + k0 * T + t0, T, acc, mc, std::min<i64>(NV * VL, T - t0));
}

template <int... NV>
void weight_grad_tile_n(int nv, float* dw, const float* dyt, i64 ldd, const float* rows, i64 ldr, i64 T, i64 L, i64 k0,
                        int mc, i64 t0, std::integer_sequence<int, NV...>) {
  ((nv == NV + 1 ? weight_grad_tile<NV + 1>(dw, dyt, ldd, rows, ldr, T, L, k0, mc, t0) : void()), ...);
}

// ---- input gradient: mt (of MT) taps by NV vectors of pixels from p0, over every channel: w's
// values broadcast from its rows (wt: column t0 of row 0, rows ldw apart), dy's loaded ----
template <int MT, int NV>
void input_grad_tile(float* dcol, i64 ldc, const float* dy, i64 ldd, const float* wt, i64 ldw, i64 K, int mt, i64 p0) {
  vec acc[MT * NV] = {};
  const float* d = dy + p0;
  for (i64 k = 0; k < K; ++k, d += ldd, wt += ldw) {
    vec dv[NV];
    for (int j = 0; j < NV; ++j) dv[j] = load(d + j * VL);
    for (int i = 0; i < MT; ++i) {
      const float wi = wt[i];
      for (int j = 0; j < NV; ++j) acc[i * NV + j] += wi * dv[j];
    }
  }
  for (int i = 0; i < mt; ++i)
    for (int j = 0; j < NV; ++j) store(dcol + i * ldc + p0 + j * VL, acc[i * NV + j]);
}

template <int MT, int... NV>
void input_grad_tile_n(int nv, float* dcol, i64 ldc, const float* dy, i64 ldd, const float* wt, i64 ldw, i64 K, int mt,
                       i64 p0, std::integer_sequence<int, NV...>) {
  ((nv == NV + 1 ? input_grad_tile<MT, NV + 1>(dcol, ldc, dy, ldd, wt, ldw, K, mt, p0) : void()), ...);
}

// few_pixels_input_grad with tiles of MT taps
template <int MT>
void input_grad_by_tiles(float* dcol, i64 ldc, const float* dy, i64 ldd, const float* w, i64 N, i64 K, i64 T, i64 P) {
  const i64 tiles = (T + MT - 1) / MT;
  const i64 whole = T / MT * MT;
  std::vector<float> tail(T > whole ? size_t(K) * MT : 0, 0.0f);  // [K][MT]
  for (i64 k = 0; k < K && T > whole; ++k)
    std::memcpy(tail.data() + k * MT, w + k * T + whole, sizeof(float) * size_t(T - whole));
#pragma omp parallel for num_threads(threads_over(double(N) * K * T * P, N * tiles)) schedule(static)
  for (i64 job = 0; job < N * tiles; ++job) {
    const i64 n = job / tiles, t0 = job % tiles * MT;
    const bool last = t0 == whole;
    for (i64 p0 = 0; p0 < P;) {
      const int nv = int(std::min<i64>(kInputNV, (P - p0 + VL - 1) / VL));
      input_grad_tile_n<MT>(nv, dcol + (n * T + t0) * ldc, ldc, dy + n * K * ldd, ldd, last ? tail.data() : w + t0,
                            last ? MT : T, K, int(std::min<i64>(MT, T - t0)), p0,
                            std::make_integer_sequence<int, kInputNV>{});
      p0 += nv * VL;
    }
  }
}

}  // namespace

// y: [N, K, P] = b + w [K, T] x col_n [T, ld] for each image (col_n's columns P.. are zero, ld a
// multiple of VL): blocks of rows over the threads, each block's weights kept in L1 while the
// pixels pass
void few_pixels_forward(float* y, const float* col, i64 ld, const float* w, const float* b, i64 N, i64 K, i64 T,
                        i64 P) {
  constexpr i64 MC = kBlockRows;
  const i64 blocks = (K + MC - 1) / MC;
#pragma omp parallel for num_threads(threads_over(double(N) * K * T * P, N * blocks)) schedule(static)
  for (i64 job = 0; job < N * blocks; ++job) {
    const i64 n = job / blocks, k0 = job % blocks * MC;
    const int kn = int(std::min<i64>(MC, K - k0));
    for (i64 p0 = 0; p0 < P;) {
      const int nv = int(std::min<i64>(kForwardNV, (P - p0 + VL - 1) / VL)), mc = forward_rows(nv);
      for (int k = 0; k < kn; k += mc)
        forward_tile_n(nv, y + n * K * P, col + n * T * ld, ld, w, b, T, P, k0 + k, std::min(mc, kn - k), p0,
                       std::make_integer_sequence<int, kForwardNV>{});
      p0 += nv * VL;
    }
  }
}

// dw: [K, T] = dyt^T x rows: dyt [L, ldd] (columns K.. zero, ldd >= K rounded up to 8), rows
// [L, ldr] (columns T.. zero, ldr a multiple of VL). Blocks of rows over the threads; with 8-float
// vectors, blocks of taps instead, every block of rows passing over one, whose columns of rows then
// stay in L1 (blocks of rows streamed all of rows from L2 for each: 128->256 on 4 x 4 backward took
// 1.08x as long on AVX2; on AVX-512, whose blocks of taps are 4x as wide, dw's scattered rows made
// 256->256 on 4 x 4 1.36x slower the other way round)
void few_pixels_weight_grad(float* dw, const float* dyt, i64 ldd, const float* rows, i64 ldr, i64 K, i64 T, i64 L) {
  if (VL <= 8) {
    constexpr i64 TB = kGradNV * VL;  // taps a block
    const i64 blocks = (T + TB - 1) / TB;
#pragma omp parallel for num_threads(threads_over(double(K) * T * L, blocks)) schedule(static)
    for (i64 blk = 0; blk < blocks; ++blk) {
      const i64 t0 = blk * TB;
      const int nv = int(std::min<i64>(kGradNV, (T - t0 + VL - 1) / VL));
      for (i64 k0 = 0; k0 < K; k0 += kGradRows)
        weight_grad_tile_n(nv, dw, dyt, ldd, rows, ldr, T, L, k0, int(std::min<i64>(kGradRows, K - k0)), t0,
                           std::make_integer_sequence<int, kGradNV>{});
    }
    return;
  }
  const i64 blocks = (K + kGradRows - 1) / kGradRows;
#pragma omp parallel for num_threads(threads_over(double(K) * T * L, blocks)) schedule(static)
  for (i64 blk = 0; blk < blocks; ++blk) {
    const i64 k0 = blk * kGradRows;
    const int mc = int(std::min<i64>(kGradRows, K - k0));
    for (i64 t0 = 0; t0 < T;) {
      const int nv = int(std::min<i64>(kGradNV, (T - t0 + VL - 1) / VL));
      weight_grad_tile_n(nv, dw, dyt, ldd, rows, ldr, T, L, k0, mc, t0, std::make_integer_sequence<int, kGradNV>{});
      t0 += nv * VL;
    }
  }
}

// dcol_n: [T, ldc] = w^T x dy_n for each image: dcol_n[t][p] = sum_k w[k][t] dy_n[k][p], dy_n's
// rows ldd apart (ldd and ldc multiples of 16, ldd <= ldc; dy zero past P, and so is dcol). Tiles of
// kInputRows taps (kNarrowInputRows for images of up to 2 vectors) over the threads, with the
// images; the last, partial tile's columns of w copied into a padded block first (its rows would be
// read past T).
void few_pixels_input_grad(float* dcol, i64 ldc, const float* dy, i64 ldd, const float* w, i64 N, i64 K, i64 T, i64 P) {
  if (P <= 2 * VL) return input_grad_by_tiles<kNarrowInputRows>(dcol, ldc, dy, ldd, w, N, K, T, P);
  input_grad_by_tiles<kInputRows>(dcol, ldc, dy, ldd, w, N, K, T, P);
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
