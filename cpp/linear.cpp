// linear (fully connected): weights [O, I] as in PyTorch; each product is one SGEMM split
// over threads by rows or columns of its output (never over the summed dimension).
#include "gemm.hpp"

namespace cnnfast {

// x: [N, I], w: [O, I], b: [O] -> y: [N, O] = x w^T + b
void linear_forward(float* y, const float* x, const float* w, const float* b, i64 N, i64 I, i64 O) {
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
