// SGEMM: packing and cache blocking around the per-ISA micro-kernel (gemm_microkernel.cpp).
//
// Blocking (as in BLIS): B is packed KC x NC at a time (it stays in L2 while every row block
// of A passes over it), A is packed MC x KC (it stays in L1/L2 across the NR-wide column
// panels), and the micro-kernel multiplies an MR-row panel of packed A by an NR-column panel
// of packed B. Panels are zero-padded at the edges, so the micro-kernel never branches on size.
#include "gemm.hpp"

#include <algorithm>
#include <cstring>
#include <vector>
#include "parallel.hpp"

namespace cnnfast {
namespace {

constexpr i64 KC = 256;   // depth of one packed block
constexpr i64 MC = 96;    // rows of A per packed block (a multiple of every MR: 6, 8 and 12)
constexpr i64 NC = 1024;  // columns of B per packed block

inline float a_at(bool t, const float* A, i64 lda, i64 i, i64 k) { return t ? A[k * lda + i] : A[i * lda + k]; }
inline float b_at(bool t, const float* B, i64 ldb, i64 k, i64 j) { return t ? B[j * ldb + k] : B[k * ldb + j]; }

// op(A)[i0 : i0+mc, k0 : k0+kc] -> panels of mr rows: dst[p*kc + k*mr + i]
// (the loops follow A's memory order, so reads are contiguous; rows past the edge are zeros)
void pack_a(float* dst, bool trans_a, const float* A, i64 lda, i64 i0, i64 k0, i64 mc, i64 kc, int mr) {
  for (i64 p = 0; p < mc; p += mr, dst += mr * kc) {
    const i64 rows = std::min<i64>(mr, mc - p);
    if (trans_a && rows == mr && (mr == 6 || mr == 12)) {  // whole panels: fixed-size row copies
      const float* src = A + k0 * lda + i0 + p;
      if (mr == 12)
        for (i64 k = 0; k < kc; ++k) std::memcpy(dst + k * 12, src + k * lda, 12 * sizeof(float));
      else
        for (i64 k = 0; k < kc; ++k) std::memcpy(dst + k * 6, src + k * lda, 6 * sizeof(float));
    } else if (trans_a) {
      for (i64 k = 0; k < kc; ++k) {
        const float* src = A + (k0 + k) * lda + i0 + p;
        for (i64 i = 0; i < rows; ++i) dst[k * mr + i] = src[i];
      }
    } else {
      for (i64 i = 0; i < rows; ++i) {
        const float* src = A + (i0 + p + i) * lda + k0;
        for (i64 k = 0; k < kc; ++k) dst[k * mr + i] = src[k];
      }
    }
    for (i64 i = rows; i < mr; ++i)
      for (i64 k = 0; k < kc; ++k) dst[k * mr + i] = 0.0f;
  }
}

// Packing space, one per thread, sized for the widest tile (so it never grows mid-run).
struct PackBuffers {
  std::vector<float> a, b;
  PackBuffers() : a(MC * KC), b(KC * (NC + 64)) {}
};

}  // namespace

// op(B)[k0 : k0+kc, j0 : j0+nc] -> panels of nr columns: dst[q*kc + k*nr + j]
void pack_b(float* dst, bool trans_b, const float* B, i64 ldb, i64 k0, i64 j0, i64 kc, i64 nc, int nr) {
  for (i64 q = 0; q < nc; q += nr, dst += nr * kc) {
    const i64 cols = std::min<i64>(nr, nc - q);
    if (trans_b) {
      for (i64 j = 0; j < cols; ++j) {
        const float* src = B + (j0 + q + j) * ldb + k0;
        for (i64 k = 0; k < kc; ++k) dst[k * nr + j] = src[k];
      }
      for (i64 k = 0; k < kc; ++k)
        for (i64 j = cols; j < nr; ++j) dst[k * nr + j] = 0.0f;
    } else {
      for (i64 k = 0; k < kc; ++k) {
        float* d = dst + k * nr;
        std::memcpy(d, B + (k0 + k) * ldb + j0 + q, sizeof(float) * cols);
        for (i64 j = cols; j < nr; ++j) d[j] = 0.0f;
      }
    }
  }
}

i64 depth_block(i64 K) {
  // Depth blocks of equal size (K = 288: 144 + 144, not 256 + 32, whose short block would
  // store and reload C for little work).
  return (K + (K + KC - 1) / KC - 1) / ((K + KC - 1) / KC);
}

void sgemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb, float* C,
           i64 ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (i64 i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  const MicroKernel& mk = active_microkernel();
  const i64 kc_step = depth_block(K);
  static thread_local PackBuffers buffers;
  float* Ap = buffers.a.data();
  float* Bp = buffers.b.data();
  for (i64 jc = 0; jc < N; jc += NC) {
    const i64 nc = std::min(NC, N - jc);
    for (i64 pc = 0; pc < K; pc += kc_step) {
      const i64 kc = std::min(kc_step, K - pc);
      const int acc = accumulate || pc > 0;
      pack_b(Bp, trans_b, B, ldb, pc, jc, kc, nc, mk.nr);
      for (i64 ic = 0; ic < M; ic += MC) {
        const i64 mc = std::min(MC, M - ic);
        pack_a(Ap, trans_a, A, lda, ic, pc, mc, kc, mk.mr);
        for (i64 jr = 0; jr < nc; jr += mk.nr)
          for (i64 ir = 0; ir < mc; ir += mk.mr)
            mk.run(kc, Ap + ir * kc, Bp + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc, std::min<i64>(mk.mr, mc - ir),
                   std::min<i64>(mk.nr, nc - jr), acc);
      }
    }
  }
}

void sgemm_parallel(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb,
                    float* C, i64 ldc, bool accumulate) {
  const int nt = threads_for(double(M) * double(N) * double(K));
  if (nt <= 1) return sgemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  const MicroKernel& mk = active_microkernel();
  const bool split_columns = N >= M;
  const i64 extent = split_columns ? N : M, unit = split_columns ? mk.nr : mk.mr;
  const i64 chunk = ((extent + nt - 1) / nt + unit - 1) / unit * unit;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int t = 0; t < nt; ++t) {
    const i64 start = t * chunk, len = std::min(chunk, extent - start);
    if (len <= 0) continue;
    if (split_columns)
      sgemm(trans_a, trans_b, M, len, K, A, lda, trans_b ? B + start * ldb : B + start, ldb, C + start, ldc,
            accumulate);
    else
      sgemm(trans_a, trans_b, len, N, K, trans_a ? A + start : A + start * lda, lda, B, ldb, C + start * ldc, ldc,
            accumulate);
  }
}

void sgemm_naive(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb,
                 float* C, i64 ldc, bool accumulate) {
  for (i64 i = 0; i < M; ++i)
    for (i64 j = 0; j < N; ++j) {
      float sum = 0.0f;
      for (i64 k = 0; k < K; ++k) sum += a_at(trans_a, A, lda, i, k) * b_at(trans_b, B, ldb, k, j);
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + sum : sum;
    }
}

}  // namespace cnnfast
