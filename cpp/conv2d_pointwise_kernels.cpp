// conv2d's pointwise path (a 1x1 convolution at stride 1, no padding), forward, compiled once per
// instruction set. Image by image it is one matrix product, y_n[K, P] = w[K, C] x_n[C, P] + b: x_n's
// rows are the product's B as they lie (NR pixels of each of the C rows, P apart), w is packed once
// into panels of MR output channels, and each MR x NR tile of y is written in place, its sums
// started from the bias. No im2col, no transposition into y: the panels' forward packed each
// 12-pixel panel from x and transposed its [pixels, K] result into y (the rule and what it measured:
// pointwise_product_fits, conv2d_common.cpp). The same product gives a 1x1 layer's input gradient,
// dx_n = w^T dy_n.
//
// Every output is one tile_product's sums, whatever the thread split: results do not depend on the
// thread count.
#include <algorithm>

#include "conv2d_common.hpp"
#include "isa_target.hpp"
#include "parallel.hpp"

#if defined(CNNFAST_ISA_AVX512) || defined(CNNFAST_ISA_AVX2)
#include <immintrin.h>
#endif

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

#include "conv2d_loops_impl.hpp"  // for_each_over
#include "vec_impl.hpp"
#include "tile_product_impl.hpp"  // VL, MR, NV, NR, tile_product

}  // namespace

// x: [N, C, P], w: [K, C] (w[k][c] at w[k*out_stride + c*in_stride]: [K, C] itself, or a [C, K]
// array read transposed, as the input gradient's w^T), b: [K] (may be null) -> y: [N, K, P], C at most
// kPointwiseChannels (the products' depth in one block: blocks of 128 channels on AVX-512, a B panel
// of 16 KB, took 1.37x the time on 192->64 on 16 x 16 at batch 32). Work goes over the threads in
// units of one image's NR pixels (all K channels).
void pointwise_forward(float* y, const float* x, const float* w, i64 out_stride, i64 in_stride, const float* b, i64 N,
                       i64 C, i64 K, i64 P) {
  const i64 Kp = (K + MR - 1) / MR * MR;
  ScratchFloats packed(size_t(Kp) * C + size_t(Kp));  // [Kp / MR][C][MR], then the bias [Kp]
  float* wp = packed.get();
  float* bias = wp + Kp * C;
  for (i64 k0 = 0; k0 < Kp; k0 += MR)
    for (i64 c = 0; c < C; ++c)
      for (i64 i = 0; i < MR; ++i)
        wp[k0 * C + c * MR + i] = k0 + i < K ? w[(k0 + i) * out_stride + c * in_stride] : 0.0f;
  for (i64 k = 0; k < Kp; ++k) bias[k] = b && k < K ? b[k] : 0.0f;

  const i64 panels = (P + NR - 1) / NR, units = N * panels;
  const int nt = threads_over(double(N) * K * C * P, units);
  // a thread's staging: a partial panel's B ([C][NR], zero-padded) and its sums ([Kp][NR])
  const size_t stage = lines(size_t(C) * NR) + size_t(Kp) * NR;
  ScratchFloats scratch(size_t(nt) * stage);
  for_each_over(units, nt, [&](i64 u) {
    const i64 n = u / panels, p0 = u % panels * NR, cols = std::min<i64>(NR, P - p0);
    float* own = scratch.get() + size_t(omp_get_thread_num()) * stage;
    const float* bp = x + n * C * P + p0;
    float* yn = y + n * K * P + p0;
    float* sums = own + lines(size_t(C) * NR);  // [Kp][NR]: the tiles not whole in y, staged
    if (cols < NR) {                            // the image's last pixels: copied, so that no vector reads past x
      for (i64 c = 0; c < C; ++c) {
        std::copy_n(bp + c * P, cols, own + c * NR);
        std::fill(own + c * NR + cols, own + (c + 1) * NR, 0.0f);
      }
      bp = own;
    }
    const i64 ldb = cols < NR ? NR : P;
    auto whole = [&](i64 k0) { return cols == NR && k0 + MR <= K; };
    for (i64 k0 = 0; k0 < Kp; k0 += MR)
      tile_product(C, wp + k0 * C, bp, ldb, whole(k0) ? yn + k0 * P : sums + k0 * NR, whole(k0) ? P : NR, false,
                   bias + k0);
    for (i64 k = 0; k < K; ++k)
      if (!whole(k / MR * MR)) std::copy_n(sums + k * NR, cols, yn + k * P);
  });
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
