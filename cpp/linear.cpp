// linear (fully connected): weights [O, I] as in PyTorch; each product is one SGEMM split
// over threads by rows or columns of its output (never over the summed dimension), except the
// forward pass of a narrow layer (O <= 16: the default model's 10 classes) or of a few rows (up to
// kDotRows), done as dot products (linear_narrow.cpp)
// (vector loops written for the backward pass measured slower than the SGEMMs at the default model's batch: 0.06 vs
// 0.047 ms; for a few rows they are faster: kGradRows below).
#include "gemm.hpp"

#include <algorithm>

#include "isa.hpp"
#include "parallel.hpp"

namespace cnnfast {

// Up to kDotRows rows (an image or a few: inference) of a layer wider than the narrow path's: the same dot products,
// w's rows in blocks of kDotOutputs over the threads, where the GEMM packed all of w for those few rows. Against the
// GEMM (Zen 5, AVX-512, 1-2 threads), 400->120, 512->256, 512->4096 and 4096->1000: at batch 1 0.08-0.23x the time
// (512->4096 0.87 -> 0.13 ms on one thread, PyTorch 0.12), batch 4 0.14-0.70x (1600->128 too), 8 0.38-0.76x; at 16
// 0.47-1.07x, at 32 0.84-1.36x, at 64 the GEMM is faster (1.5-2.2x).
constexpr i64 kDotRows = 8, kDotOutputs = 64;
// The backward of up to kGradRows rows (at most linear_narrow.cpp's kMaxGradRows): dx with w read once, its columns
// over the threads in blocks of kGradColumns (a multiple of every ISA's block of columns there, so that each column
// takes the same code however the threads split them), dw row by row. Against the GEMMs (as above, 1-2 threads): at
// batch 1 0.41-0.75x the time on 400->120, 512->4096, 4096->1000, 1600->10 and 120->84; at 4 0.68-0.87x (but 400->120
// and 120->84 0.86-1.11x); at 8 even.
constexpr i64 kGradRows = 4, kGradColumns = 64;

// x: [N, I], w: [O, I], b: [O] -> y: [N, O] = x w^T + b
void linear_forward(float* y, const float* x, const float* w, const float* b, i64 N, i64 I, i64 O) {
  if (O <= 16) {  // narrow: dot products, threads splitting the rows in blocks of 4
    const i64 blocks = (N + 3) / 4;
    const int nt = std::max(1, std::min<int>(threads_for(double(N) * I * O), int(std::max<i64>(blocks, 1))));
    const auto linear_forward_rows = active_isa().linear_forward_rows;  // linear_narrow.cpp, per ISA
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 blk = 0; blk < blocks; ++blk) linear_forward_rows(y, O, x, w, b, 4 * blk, std::min(N, 4 * blk + 4), I, O);
    return;
  }
  if (N <= kDotRows) {  // a few rows of a wider layer: each row alone, w's rows in blocks over the threads
    const i64 blocks = (O + kDotOutputs - 1) / kDotOutputs;
    const int nt = std::max(1, std::min<int>(threads_for(double(N) * I * O), int(blocks)));
    const auto linear_forward_rows = active_isa().linear_forward_rows;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 blk = 0; blk < blocks; ++blk) {
      const i64 o0 = blk * kDotOutputs, ob = std::min(kDotOutputs, O - o0);
      linear_forward_rows(y + o0, O, x, w + o0 * I, b + o0, 0, N, I, ob);
    }
    return;
  }
  for (i64 n = 0; n < N; ++n)
    for (i64 o = 0; o < O; ++o) y[n * O + o] = b[o];
  sgemm_parallel(false, true, N, O, I, x, I, w, I, y, O, /*accumulate=*/true);
}

// x: [N, I], w: [O, I], dy: [N, O] -> dx: [N, I] = dy w (skipped if null), dw: [O, I] = dy^T x, db: [O] = sum_n dy
void linear_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy, i64 N, i64 I,
                     i64 O) {
  if (N >= 1 && N <= kGradRows && O > 0) {  // a few rows: dx with w read once (the GEMM packed it), dw row by row
    const IsaKernels& isa = active_isa();
    const i64 column_blocks = (I + kGradColumns - 1) / kGradColumns;
    const int nt = std::max(1, std::min<int>(threads_for(double(N) * I * O), int(dx ? std::min(column_blocks, O) : O)));
    if (nt == 1) {  // (no parallel region: a small layer's backward took 1.5x as long in one)
      if (dx) isa.linear_input_grad_columns(dx, dy, w, N, I, O, 0, I);
      isa.linear_weight_grad_rows(dw, dy, x, N, I, O, 0, O);
    } else {
#pragma omp parallel num_threads(nt)
      {
#pragma omp for schedule(static)
        for (i64 blk = 0; blk < (dx ? column_blocks : 0); ++blk)
          isa.linear_input_grad_columns(dx, dy, w, N, I, O, blk * kGradColumns, std::min(I, (blk + 1) * kGradColumns));
#pragma omp for schedule(static)
        for (i64 o = 0; o < O; ++o) isa.linear_weight_grad_rows(dw, dy, x, N, I, O, o, o + 1);
      }
    }
  } else {
    if (dx) sgemm_parallel(false, false, N, I, O, dy, O, w, I, dx, I, false);
    sgemm_parallel(true, false, O, I, N, dy, O, x, I, dw, I, false);
  }
  for (i64 o = 0; o < O; ++o) {
    double sum = 0.0;
    for (i64 n = 0; n < N; ++n) sum += dy[n * O + o];
    db[o] = float(sum);
  }
}

}  // namespace cnnfast
