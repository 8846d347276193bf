// The GEMM micro-kernel for AArch64 NEON: an 8 x 12 tile, as BLIS's armv8a sgemm kernel (bli_sgemm_armv8a_asm_8x12).
//
// Register budget (32 q registers of 4 floats): C's 8 rows x 3 vectors = 24 accumulators, B's
// three vectors of a step, A's two vectors (8 rows) of a step: 29. Each depth step loads 5
// vectors and issues 24 fused multiply-adds, each taking its A value from a lane of a register
// (fmla v.4s, v.4s, v.s[lane]), so A needs no broadcast. Packed as for every micro-kernel
// (gemm.cpp): a[k*8 + i], b[k*12 + j], zero-padded edge tiles, so an element's sum is the same
// k-ordered chain of fused multiply-adds wherever its tile falls.
// Expected: 2 FMA pipes x 4 lanes x 2 FLOP per cycle (Cortex-A76/Neoverse N1, Apple M: 4 pipes);
// 24 FMAs per 5 loads keep the pipes fed from L1, so ~80-90% of that peak for large K.
#include <arm_neon.h>

#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

constexpr int MR = 8, NR = 12;

void run(long kc, const float* a, const float* b, float* c, long ldc, long m, long n, int accumulate) {
  float32x4_t acc[MR][3];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = acc[i][2] = vdupq_n_f32(0.0f);
  for (long k = 0; k < kc; ++k) {
    const float32x4_t a0 = vld1q_f32(a + k * MR), a1 = vld1q_f32(a + k * MR + 4);
    const float32x4_t b0 = vld1q_f32(b + k * NR), b1 = vld1q_f32(b + k * NR + 4), b2 = vld1q_f32(b + k * NR + 8);
#define CNNFAST_ROW(i, av, lane)                        \
  acc[i][0] = vfmaq_laneq_f32(acc[i][0], b0, av, lane); \
  acc[i][1] = vfmaq_laneq_f32(acc[i][1], b1, av, lane); \
  acc[i][2] = vfmaq_laneq_f32(acc[i][2], b2, av, lane)
    CNNFAST_ROW(0, a0, 0);
    CNNFAST_ROW(1, a0, 1);
    CNNFAST_ROW(2, a0, 2);
    CNNFAST_ROW(3, a0, 3);
    CNNFAST_ROW(4, a1, 0);
    CNNFAST_ROW(5, a1, 1);
    CNNFAST_ROW(6, a1, 2);
    CNNFAST_ROW(7, a1, 3);
#undef CNNFAST_ROW
  }
  if (m == MR && n == NR) {  // full tile: vector stores
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc;
      for (int j = 0; j < 3; ++j)
        vst1q_f32(ci + 4 * j, accumulate ? vaddq_f32(vld1q_f32(ci + 4 * j), acc[i][j]) : acc[i][j]);
    }
    return;
  }
  for (long i = 0; i < m; ++i) {  // edge tile: the same sums, stored element by element
    float row[NR];
    for (int j = 0; j < 3; ++j) vst1q_f32(row + 4 * j, acc[i][j]);
    float* ci = c + i * ldc;
    for (long j = 0; j < n; ++j) ci[j] = accumulate ? ci[j] + row[j] : row[j];
  }
}

}  // namespace

extern const MicroKernel gemm_microkernel = {MR, NR, &run};

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
