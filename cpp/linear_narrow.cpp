// linear's forward for narrow layers (few outputs, as the default model's 10 classes) and for a few
// rows of any layer, and its backward for a few rows, compiled once per instruction set: a GEMM would
// pad 10 outputs to its 32-column tile and spend more time packing than multiplying (0.078 -> 0.020
// ms for the 1600 -> 10 layer at batch 128), and for a single image it packed all of w (linear.cpp).
#include <algorithm>
#include <array>
#include <cstddef>
#include <utility>

#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

namespace {

constexpr int VL = CNNFAST_VEC_BYTES / 4;
typedef float vec __attribute__((vector_size(CNNFAST_VEC_BYTES)));
#if defined(CNNFAST_ISA_AVX512) || defined(__aarch64__)
constexpr int kMaxOutputs = 16;  // a row's dot products at once (32 vector registers)
#else
constexpr int kMaxOutputs = 8;  // (16 registers)
#endif

// One dot product's VL lanes added up in lane order (with the elements past the last whole
// vector), then b: the same order for every path below
inline float finish(vec acc, const float* x, const float* w, i64 IV, i64 I, float b) {
  float lanes[VL];
  __builtin_memcpy(lanes, &acc, sizeof lanes);
  for (i64 i = IV; i < I; ++i) lanes[i % VL] += x[i] * w[i];
  float sum = 0.0f;
  for (int j = 0; j < VL; ++j) sum += lanes[j];
  return b + sum;
}

// One row's OB outputs o0.. at once: OB independent chains of multiply-adds (one row's dot
// products one at a time would wait on each multiply-add's latency)
template <int OB>
void row_outputs(float* y, const float* x, const float* w, const float* b, i64 o0, i64 I) {
  const i64 IV = I / VL * VL;
  vec acc[OB] = {};
  for (i64 i = 0; i < IV; i += VL) {
    vec xv;
    __builtin_memcpy(&xv, x + i, sizeof xv);
    for (int j = 0; j < OB; ++j) {
      vec wv;
      __builtin_memcpy(&wv, w + (o0 + j) * I + i, sizeof wv);
      acc[j] += xv * wv;
    }
  }
  for (int j = 0; j < OB; ++j) y[o0 + j] = finish(acc[j], x, w + (o0 + j) * I, IV, I, b[o0 + j]);
}

template <int... OB>
constexpr auto row_kernels(std::integer_sequence<int, OB...>) {
  return std::array<void (*)(float*, const float*, const float*, const float*, i64, i64), sizeof...(OB)>{
      &row_outputs<OB + 1>...};
}
constexpr auto kRowKernels = row_kernels(std::make_integer_sequence<int, kMaxOutputs>());

// A few rows' input gradient over CB vectors of columns at i, rows o0..o1 of w: dx[n][i + j*VL..] (0 if o0 == 0) +=
// dy[n][o] w[o][i + j*VL..] for o in order, each row of w's block loaded once for the NR rows of dy
#if defined(CNNFAST_ISA_AVX512) || defined(__aarch64__)
constexpr int kGradColumnVectors = 2;  // (NR x 2 sums: up to 16 of the 32 registers)
#else
constexpr int kGradColumnVectors = 1;  // (16 registers)
#endif
template <int NR>
void input_grad_block(float* dx, const float* dy, const float* w, i64 I, i64 O, i64 i, i64 o0, i64 o1) {
  constexpr int CB = kGradColumnVectors;
  vec acc[NR][CB] = {};
  for (int n = 0; n < NR && o0 > 0; ++n) __builtin_memcpy(acc[n], dx + n * I + i, sizeof acc[n]);
  for (i64 o = o0; o < o1; ++o) {
    vec wv[CB];
    __builtin_memcpy(wv, w + o * I + i, sizeof wv);
    for (int n = 0; n < NR; ++n)
      for (int j = 0; j < CB; ++j) acc[n][j] += dy[n * O + o] * wv[j];
  }
  for (int n = 0; n < NR; ++n) __builtin_memcpy(dx + n * I + i, acc[n], sizeof acc[n]);
}
template <int... NR>
constexpr auto input_grad_kernels(std::integer_sequence<int, NR...>) {
  return std::array<void (*)(float*, const float*, const float*, i64, i64, i64, i64, i64), sizeof...(NR)>{
      &input_grad_block<NR + 1>...};
}
constexpr int kMaxGradRows = 8;
static_assert(64 % (kGradColumnVectors * VL) == 0, "linear.cpp splits dx's columns in blocks of 64 (kGradColumns)");
constexpr auto kInputGradKernels = input_grad_kernels(std::make_integer_sequence<int, kMaxGradRows>());

}  // namespace

// dx[n][i] = sum_o dy[n][o] w[o][i] for n < N (1 to kMaxGradRows) and the columns i0..i1 (i0 a multiple of 64, so
// that the same columns fall in whole blocks however the threads split them): w read once, in blocks of columns, each
// sum in o's order. Rows of w go in tiles of kGradRowTile (their blocks of columns stay in L2 from one block to the
// next; a block's walk down all of w's rows missed the caches), each sum carried from tile to tile through dx.
void linear_input_grad_columns(float* dx, const float* dy, const float* w, i64 N, i64 I, i64 O, i64 i0, i64 i1) {
  constexpr i64 step = kGradColumnVectors * VL, kGradRowTile = 16;
  const i64 whole = i0 + (i1 - i0) / step * step;
  for (i64 o0 = 0; o0 < O; o0 += kGradRowTile) {
    const i64 o1 = std::min(O, o0 + kGradRowTile);
    for (i64 i = i0; i < whole; i += step) kInputGradKernels[std::size_t(N - 1)](dx, dy, w, I, O, i, o0, o1);
  }
  // (the last columns, fewer than a block: the same order, the columns' sums side by side)
  float sums[kMaxGradRows][kGradColumnVectors * VL] = {};
  for (i64 o = 0; o < O; ++o)
    for (i64 n = 0; n < N; ++n) {
      const float g = dy[n * O + o];
      for (i64 i = whole; i < i1; ++i) sums[n][i - whole] += g * w[o * I + i];
    }
  for (i64 n = 0; n < N; ++n)
    for (i64 i = whole; i < i1; ++i) dx[n * I + i] = sums[n][i - whole];
}
// dw[o][i] = sum_n dy[n][o] x[n][i] for the rows o0..o1 (n in order; N up to kMaxGradRows), a vector of a row at a
// time
void linear_weight_grad_rows(float* dw, const float* dy, const float* x, i64 N, i64 I, i64 O, i64 o0, i64 o1) {
  const i64 IV = I / VL * VL;
  for (i64 o = o0; o < o1; ++o) {
    float* d = dw + o * I;
    float g[kMaxGradRows];
    for (i64 n = 0; n < N; ++n) g[n] = dy[n * O + o];
    for (i64 i = 0; i < IV; i += VL) {
      vec xv;
      __builtin_memcpy(&xv, x + i, sizeof xv);
      vec acc = g[0] * xv;
      for (i64 n = 1; n < N; ++n) {
        __builtin_memcpy(&xv, x + n * I + i, sizeof xv);
        acc += g[n] * xv;
      }
      __builtin_memcpy(d + i, &acc, sizeof acc);
    }
    for (i64 i = IV; i < I; ++i) {
      float acc = g[0] * x[i];
      for (i64 n = 1; n < N; ++n) acc += g[n] * x[n * I + i];
      d[i] = acc;
    }
  }
}

// y[n][o] = b[o] + sum_i x[n][i] w[o][i] for rows n0..n1. Four rows of x (in L1) meet each row of
// w in turn; each dot product is VL interleaved lanes (lane j: the i = j mod VL; VL the ISA's
// vector width, so 4 accumulators and 2 operands fit any register file), added up in lane order,
// then b. Rows left over (fewer than 4: a single image) take their outputs up to kMaxOutputs at
// a time instead, in the same order.
void linear_forward_rows(float* y, i64 ldy, const float* x, const float* w, const float* b, i64 n0, i64 n1, i64 I,
                         i64 O) {
  const i64 IV = I / VL * VL;
  i64 r0 = n0;
  for (; r0 + 4 <= n1; r0 += 4) {
    const float* xr[4];
    for (i64 r = 0; r < 4; ++r) xr[r] = x + (r0 + r) * I;
    for (i64 o = 0; o < O; ++o) {
      const float* wo = w + o * I;
      vec acc[4] = {};
      for (i64 i = 0; i < IV; i += VL) {
        vec wv;
        __builtin_memcpy(&wv, wo + i, sizeof wv);
        for (int r = 0; r < 4; ++r) {
          vec xv;
          __builtin_memcpy(&xv, xr[r] + i, sizeof xv);
          acc[r] += xv * wv;
        }
      }
      for (i64 r = 0; r < 4; ++r) y[(r0 + r) * ldy + o] = finish(acc[r], xr[r], wo, IV, I, b[o]);
    }
  }
  for (; r0 < n1; ++r0)
    for (i64 o0 = 0; o0 < O; o0 += kMaxOutputs) {
      const i64 ob = O - o0 < kMaxOutputs ? O - o0 : kMaxOutputs;
      kRowKernels[std::size_t(ob - 1)](y + r0 * ldy, x + r0 * I, w, b, o0, I);
    }
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
