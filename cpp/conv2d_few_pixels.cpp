// conv2d's few-pixels path: a batch with at most 64 output pixels in all (a middle layer at batch 1:
// 4 x 4 to 8 x 8; a 1x1 layer's forward up to 512, its image read as it lies). The GEMM paths lay
// the weights out again on every call (packed panels, taps in (r, s, c) order, dw transposed
// back), which costs as much as the product when there are only 16 or 64 pixels to multiply them
// with (128->256 3x3 on 4 x 4 at batch 1: the weights' re-layout, memsets and dw's transposition
// were 3/4 of the backward). Here the weights and dw stay in their [K, C*R*S] layout and only the
// image side is laid out: im2col (taps x pixels) for the forward and for dx (whose columns are
// then added back into dx: col2im), patch rows (pixels x taps) for dw. The products are the ISA's
// (conv2d_few_pixels_kernels.cpp), over the output channels (or taps) on the threads, so a single
// image uses both cores.
#include <cstring>
#include <memory>

#include "conv2d_common.hpp"
#include "isa.hpp"
#include "parallel.hpp"

namespace cnnfast {
namespace {

// Both below go over (image, input channel) pairs: at batch 1 over the images alone they ran on one
// thread while the other waited (64->128 on 8 x 8: im2col a fifth of the forward on two threads).
// A float copied (or added) with its index arithmetic takes about as long as 8 multiply-adds: the
// work threads_for weighs (im2col of 64 channels 3x3 on 8 x 8, 37k floats: 11 us on one thread).
constexpr double kCopyWork = 8;

// dx_n = the sum of dcol_n's rows back where im2col read them from (im2col's transpose), in
// (tap, pixel) order; each input channel's plane from its own R*S rows
void col2im_add(float* dx, const float* dcol, i64 ldc, const ConvShape& s, i64 N) {
  const i64 T = s.taps(), st = s.stride, plane = s.H * s.W;
#pragma omp parallel for num_threads(threads_over(kCopyWork * N * s.P() * T, N * s.C)) schedule(static)
  for (i64 job = 0; job < N * s.C; ++job) {
    const i64 n = job / s.C, c = job % s.C;
    float* dxc = dx + job * plane;
    std::fill(dxc, dxc + plane, 0.0f);
    for (i64 r = 0; r < s.R; ++r)
      for (i64 q = 0; q < s.S; ++q) {
        const float* row = dcol + (n * T + (c * s.R + r) * s.S + q) * ldc;
        // the output columns whose input column ow*stride + q - pad lies inside [0, W), as im2col
        const i64 ow_lo = std::clamp<i64>((s.pad - q + st - 1) / st, 0, s.Wo),
                  ow_hi = std::clamp<i64>((s.W + s.pad - q + st - 1) / st, ow_lo, s.Wo);
        for (i64 oh = 0; oh < s.Ho; ++oh) {
          const i64 ih = oh * st + r - s.pad;
          if (ih < 0 || ih >= s.H) continue;
          float* out = dxc + ih * s.W + q - s.pad;
          const float* in = row + oh * s.Wo;
          if (st == 1)
            for (i64 ow = ow_lo; ow < ow_hi; ++ow) out[ow] += in[ow];
          else
            for (i64 ow = ow_lo; ow < ow_hi; ++ow) out[ow * st] += in[ow];
        }
      }
  }
}

// col: [N][T][ldc], each image's im2col with zeros past P (an input channel's R*S rows at a time)
void im2col_padded(float* col, i64 ldc, const float* x, const ConvShape& s, i64 N) {
  const i64 P = s.P(), T = s.taps(), RS = s.R * s.S;
  const ConvShape one(1, s.H, s.W, s.K, s.R, s.S, s.pad, s.stride);
#pragma omp parallel for num_threads(threads_over(kCopyWork * N * P * T, N * s.C)) schedule(static)
  for (i64 job = 0; job < N * s.C; ++job) {
    float* rows = col + job * RS * ldc;  // (image n = job / C, channel c = job % C: rows n*T + c*RS..)
    im2col(rows, x + job * s.H * s.W, one, ldc);
    for (i64 t = 0; t < RS && ldc > P; ++t) std::fill(rows + t * ldc + P, rows + (t + 1) * ldc, 0.0f);
  }
}

}  // namespace

// x: [N, C, H, W] -> y: [N, K, Ho, Wo] (pooled: whole, then max_pool2d)
void few_pixels_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                             const ConvShape& s, i64 N, i64 pool_k) {
  const i64 P = s.P(), T = s.taps(), ldc = round_up(P, 16);
  const bool as_is = pointwise(s) && s.stride == 1 && ldc == P;  // (a 1x1 layer's col is x itself)
  ScratchFloats col(as_is ? 0 : size_t(N) * T * ldc);
  if (!as_is) im2col_padded(col.get(), ldc, x, s, N);
  std::unique_ptr<float[]> conv(pool_k > 0 ? new float[size_t(N) * s.K * P] : nullptr);
  active_isa().few_pixels_forward(pool_k > 0 ? conv.get() : y, as_is ? x : col.get(), ldc, w, b, N, s.K, T, P);
  if (pool_k > 0) pool_whole(y, argmax, conv.get(), s, N, pool_k);
}

// dy: [N, K, Ho, Wo] (pooled: with argmax, d(conv) made whole first) -> dx (may be null), dw, db
bool few_pixels_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                              const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  std::unique_ptr<float[]> dconv;
  if (pool_k > 0) dy = whole_dconv(dconv, dy, argmax, s, N, pool_k);
  const IsaKernels& isa = active_isa();
  const i64 K = s.K, P = s.P(), T = s.taps(), L = N * P;
  const i64 ldc = round_up(P, 16), ldr = round_up(T, 16), ldt = round_up(K, 8);
  // im2col, then patch rows [L][ldr] and dy^T [L][ldt] (zeros past T and K) by the ISA's transposes
  ScratchFloats col(size_t(N) * T * ldc), rows(size_t(L) * ldr), dyt(size_t(L) * ldt);
  im2col_padded(col.get(), ldc, x, s, N);
  for (i64 n = 0; n < N; ++n) {
    isa.transpose(rows.get() + n * P * ldr, ldr, col.get() + n * T * ldc, ldc, T, P, ldr);
    isa.transpose(dyt.get() + n * P * ldt, ldt, dy + n * K * P, P, K, P, ldt);
  }
  isa.few_pixels_weight_grad(dw, dyt.get(), ldt, rows.get(), ldr, K, T, L);
  bias_grad(db, dy, N, K, P);
  if (!dx) return true;
  const float* dyp = dy;  // dy's rows ldc apart, zeros past P
  ScratchFloats padded(ldc > P ? size_t(N) * K * ldc : 0);
  if (ldc > P) {
    for (i64 row = 0; row < N * K; ++row) {
      std::memcpy(padded.get() + row * ldc, dy + row * P, sizeof(float) * size_t(P));
      std::fill(padded.get() + row * ldc + P, padded.get() + (row + 1) * ldc, 0.0f);
    }
    dyp = padded.get();
  }
  isa.few_pixels_input_grad(col.get(), ldc, dyp, ldc, w, N, K, T, P);  // (col's room reused for dcol)
  col2im_add(dx, col.get(), ldc, s, N);
  return true;
}

}  // namespace cnnfast
