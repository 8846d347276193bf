// linear (fully connected): weights [O, I] as in PyTorch; each product is one SGEMM split
// over threads by rows or columns of its output (never over the summed dimension), except the
// forward pass of a narrow layer (O <= 16: the default model's 10 classes), done as dot products
// (vector loops written for the backward pass measured slower than the SGEMMs: 0.06 vs 0.047 ms).
#include "gemm.hpp"

#include <algorithm>
#include <omp.h>

namespace cnnfast {

namespace {

typedef float v16 __attribute__((vector_size(64)));

// y[n][o] = b[o] + sum_i x[n][i] w[o][i] for rows n0..n1 of a narrow layer (few outputs, as the
// default model's 10 classes: a GEMM would pad them to its 32-column tile and spend more time
// packing than multiplying). Four rows of x (in L1) meet each row of w in turn; each dot product
// is 16 interleaved lanes (lane j: the i = j mod 16), added up in lane order, then b.
__attribute__((target_clones("avx512f", "avx2", "default")))
void linear_forward_rows(float* y, const float* x, const float* w, const float* b, i64 n0, i64 n1, i64 I, i64 O) {
  const i64 I16 = I / 16 * 16;
  for (i64 r0 = n0; r0 < n1; r0 += 4) {
    const i64 rows = n1 - r0 < 4 ? n1 - r0 : 4;
    const float* xr[4];
    for (i64 r = 0; r < 4; ++r) xr[r] = x + (r0 + (r < rows ? r : 0)) * I;  // (spare rows repeat row 0)
    for (i64 o = 0; o < O; ++o) {
      const float* wo = w + o * I;
      v16 acc[4] = {};
      for (i64 i = 0; i < I16; i += 16) {
        v16 wv;
        __builtin_memcpy(&wv, wo + i, sizeof wv);
        for (int r = 0; r < 4; ++r) {
          v16 xv;
          __builtin_memcpy(&xv, xr[r] + i, sizeof xv);
          acc[r] += xv * wv;
        }
      }
      for (i64 r = 0; r < rows; ++r) {
        float lanes[16];
        __builtin_memcpy(lanes, &acc[r], sizeof lanes);
        for (i64 i = I16; i < I; ++i) lanes[i % 16] += xr[r][i] * wo[i];
        float sum = 0.0f;
        for (int j = 0; j < 16; ++j) sum += lanes[j];
        y[(r0 + r) * O + o] = b[o] + sum;
      }
    }
  }
}

}  // namespace

// x: [N, I], w: [O, I], b: [O] -> y: [N, O] = x w^T + b
void linear_forward(float* y, const float* x, const float* w, const float* b, i64 N, i64 I, i64 O) {
  if (O <= 16) {  // narrow: dot products, threads splitting the rows in blocks of 4
    const i64 blocks = (N + 3) / 4;
    const int nt = std::max(1, std::min<int>(threads_for(double(N) * I * O), int(std::max<i64>(blocks, 1))));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 blk = 0; blk < blocks; ++blk) linear_forward_rows(y, x, w, b, 4 * blk, std::min(N, 4 * blk + 4), I, O);
    return;
  }
  for (i64 n = 0; n < N; ++n)
    for (i64 o = 0; o < O; ++o) y[n * O + o] = b[o];
  sgemm_parallel(false, true, N, O, I, x, I, w, I, y, O, /*accumulate=*/true);
}

// x: [N, I], w: [O, I], dy: [N, O] -> dx: [N, I] = dy w, dw: [O, I] = dy^T x, db: [O] = sum_n dy
void linear_backward(float* dx, float* dw, float* db, const float* x, const float* w,
                     const float* dy, i64 N, i64 I, i64 O) {
  sgemm_parallel(false, false, N, I, O, dy, O, w, I, dx, I, false);
  sgemm_parallel(true, false, O, I, N, dy, O, x, I, dw, I, false);
  for (i64 o = 0; o < O; ++o) {
    double sum = 0.0;
    for (i64 n = 0; n < N; ++n) sum += dy[n * O + o];
    db[o] = float(sum);
  }
}

}  // namespace cnnfast
