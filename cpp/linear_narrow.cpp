// linear's forward for narrow layers (few outputs, as the default model's 10 classes), compiled
// once per instruction set: a GEMM would pad 10 outputs to its 32-column tile and spend more time
// packing than multiplying (0.078 -> 0.020 ms for the 1600 -> 10 layer at batch 128).
#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

// y[n][o] = b[o] + sum_i x[n][i] w[o][i] for rows n0..n1. Four rows of x (in L1) meet each row of
// w in turn; each dot product is 16 interleaved lanes (lane j: the i = j mod 16), added up in lane
// order, then b.
void linear_forward_rows(float* y, const float* x, const float* w, const float* b, i64 n0, i64 n1, i64 I, i64 O) {
  typedef float v16 __attribute__((vector_size(64)));
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

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
