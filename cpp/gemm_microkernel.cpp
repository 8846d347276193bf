// The GEMM micro-kernel in portable vector code, compiled once per x86-64 instruction set
// (see CMakeLists.txt): baseline: 16-byte vectors (SSE2) 6 x 8, avx2: 32-byte (AVX2 + FMA,
// 16 ymm registers) 6 x 16, avx512: 64-byte (32 zmm registers) 12 x 32. CNNFAST_VEC_BYTES
// names the vector width, CNNFAST_MR the tile height. (AArch64: gemm_microkernel_neon.cpp.)
//
// Blocking: a tile of MR rows x NR = 2 vectors of columns of C lives in 2*MR vector registers
// for the whole k loop; each step loads two vectors of packed B, broadcasts MR values of packed
// A, and issues 2*MR fused multiply-adds (an edge tile of one vector of columns: that vector's
// MR). Packing (gemm.cpp) makes both loads contiguous and pads edge tiles with zeros, so every
// element's sum is the same multiply-adds in the same order wherever its tile falls, which keeps
// results independent of the thread split.
#include "isa.hpp"
#include "isa_target.hpp"

#if defined(CNNFAST_ISA_AVX512) || defined(CNNFAST_ISA_AVX2)
#include <immintrin.h>
#endif

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

constexpr int VLEN = CNNFAST_VEC_BYTES / 4;
constexpr int MR = CNNFAST_MR;
constexpr int NR = 2 * VLEN;
#include "vec_impl.hpp"

// An edge tile of at most one vector of columns (80 output channels are 2.5 tiles of 32): the first
// vector's multiply-adds alone, the same sums in the same order, in half the time
void run_one_vector(long kc, const float* a, const float* b, float* c, long ldc, long m, long n, int accumulate) {
  vec acc[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i] = vec{};
  for (long k = 0; k < kc; ++k) {
    const vec bk = load(b + k * NR);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) acc[i] += a[k * MR + i] * bk;
  }
  for (long i = 0; i < m; ++i) {
    float row[VLEN];
    store(row, acc[i]);
    float* ci = c + i * ldc;
    for (long j = 0; j < n; ++j) ci[j] = accumulate ? ci[j] + row[j] : row[j];
  }
}

void run(long kc, const float* a, const float* b, float* c, long ldc, long m, long n, int accumulate) {
  if (n <= VLEN) return run_one_vector(kc, a, b, c, ldc, m, n, accumulate);
  vec acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    acc0[i] = vec{};
    acc1[i] = vec{};
  }
  for (long k = 0; k < kc; ++k) {
    const vec b0 = load(b + k * NR), b1 = load(b + k * NR + VLEN);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const float ai = a[k * MR + i];
      acc0[i] += ai * b0;
      acc1[i] += ai * b1;
    }
  }
  if (m == MR && n == NR) {  // full tile: vector stores
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc;
      if (accumulate) {
        store(ci, load(ci) + acc0[i]);
        store(ci + VLEN, load(ci + VLEN) + acc1[i]);
      } else {
        store(ci, acc0[i]);
        store(ci + VLEN, acc1[i]);
      }
    }
    return;
  }
  for (long i = 0; i < m; ++i) {  // edge tile: the same sums, stored element by element
    float row[NR];
    store(row, acc0[i]);
    store(row + VLEN, acc1[i]);
    float* ci = c + i * ldc;
    for (long j = 0; j < n; ++j) ci[j] = accumulate ? ci[j] + row[j] : row[j];
  }
}

}  // namespace

extern const MicroKernel gemm_microkernel = {MR, NR, &run};

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
