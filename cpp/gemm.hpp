// Single-precision matrix multiply: the one hot loop under conv2d and linear.
//
//   C[M, N] = op(A)[M, K] * op(B)[K, N]          (accumulate = false)
//   C[M, N] += op(A)[M, K] * op(B)[K, N]         (accumulate = true)
//
// Row-major with leading dimensions. op(A) = A stored [M, K] (lda >= K), or with trans_a,
// A stored [K, M] (lda >= M); likewise B. Single-threaded: callers split the work (so that
// each C element is reduced by one thread, in one order, whatever the thread count).
#pragma once
#include "isa.hpp"  // MicroKernel, active_microkernel()

namespace cnnfast {

void sgemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb, float* C,
           i64 ldc, bool accumulate);
// The same product split over threads by rows (M) or columns (N), whichever is larger.
void sgemm_parallel(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb,
                    float* C, i64 ldc, bool accumulate);
// Packing, for callers that drive the micro-kernel themselves (conv2d's patch panels):
// op(B)[k0 : k0+kc, j0 : j0+nc] -> panels of nr columns, dst[q*kc + k*nr + j], zero-padded.
void pack_b(float* dst, bool trans_b, const float* B, i64 ldb, i64 k0, i64 j0, i64 kc, i64 nc, int nr);
// The depth of sgemm's blocks for a product of depth K (equal blocks of at most 256).
i64 depth_block(i64 K);
// Three plain loops: the specification the fast path is tested against.
void sgemm_naive(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb,
                 float* C, i64 ldc, bool accumulate);

}  // namespace cnnfast
