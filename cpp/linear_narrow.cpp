// linear's forward for narrow layers (few outputs, as the default model's 10 classes), compiled
// once per instruction set: a GEMM would pad 10 outputs to its 32-column tile and spend more time
// packing than multiplying (0.078 -> 0.020 ms for the 1600 -> 10 layer at batch 128).
#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

// y[n][o] = b[o] + sum_i x[n][i] w[o][i] for rows n0..n1. Four rows of x (in L1) meet each row of
// w in turn; each dot product is VL interleaved lanes (lane j: the i = j mod VL; VL the ISA's
// vector width, so 4 accumulators and 2 operands fit any register file), added up in lane order,
// then b.
void linear_forward_rows(float* y, const float* x, const float* w, const float* b, i64 n0, i64 n1, i64 I, i64 O) {
  constexpr int VL = CNNFAST_VEC_BYTES / 4;
  typedef float vec __attribute__((vector_size(CNNFAST_VEC_BYTES)));
  const i64 IV = I / VL * VL;
  for (i64 r0 = n0; r0 < n1; r0 += 4) {
    const i64 rows = n1 - r0 < 4 ? n1 - r0 : 4;
    const float* xr[4];
    for (i64 r = 0; r < 4; ++r) xr[r] = x + (r0 + (r < rows ? r : 0)) * I;  // (spare rows repeat row 0)
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
      for (i64 r = 0; r < rows; ++r) {
        float lanes[VL];
        __builtin_memcpy(lanes, &acc[r], sizeof lanes);
        for (i64 i = IV; i < I; ++i) lanes[i % VL] += xr[r][i] * wo[i];
        float sum = 0.0f;
        for (int j = 0; j < VL; ++j) sum += lanes[j];
        y[(r0 + r) * O + o] = b[o] + sum;
      }
    }
  }
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
