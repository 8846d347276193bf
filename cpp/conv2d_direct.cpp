// conv2d's direct path: patches of few taps (C*R*S <= kDirectTaps = 32: conv1, a first layer on
// 1-3 channels), and, forward, at any number of taps, a first layer (<= kTapRowsChannels input
// channels) or a layer whose output rows fill two vectors, or 7/8 of theirs (rows_fill_vectors). There packing
// GEMM operands costs as much as it saves. Forward: each image laid out zero-bordered (PhaseLayout: split into phases
// when strided) and its taps read where they lie by the ISA's loops (conv2d_direct_kernels.cpp); dW: col[T, P] (im2col,
// the image's T shifted copies) built in L1 and combined row by row with dy. The input gradient, when wanted, goes
// through the panels' backward (conv2d_panels_impl.hpp). Images over the threads.
#include <cstring>
#include <memory>
#include <vector>

#include "conv2d_common.hpp"
#include "isa.hpp"
#include "parallel.hpp"

namespace cnnfast {
namespace {

// dw through the direct path: one partial per image, added in image order.
void direct_weight_grad(float* dw, const float* x, const float* dy, const ConvShape& s, i64 N) {
  const i64 K = s.K, P = s.P(), T = s.taps();
  const auto kernel = active_isa().direct_weight_grad;
  const int nt = threads_over(double(N) * K * P * T, N);
  std::vector<float> cols(size_t(nt) * T * P), partial(size_t(std::max<i64>(N, 1)) * K * T, 0.0f);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* col = cols.data() + size_t(omp_get_thread_num()) * T * P;
    im2col(col, x + n * s.C * s.H * s.W, s, P);
    kernel(partial.data() + n * K * T, dy + n * K * P, col, K, T, P);
  }
  sum_parts(dw, partial.data(), N, K * T);  // w's layout [K, C, R, S] is [K, T]: no reordering
}

}  // namespace

// (16 pixels at least: measured on AVX2 and AVX-512 only. 3x3 layers of over 32 input channels stay
// with the panels: stride-2 64->128 and 128->256 on 64 x 64, 128->128 on 33 x 33 took 1.04-1.06x the
// time on AVX2, 0.99-1.00x AVX-512, where 64->64 5x5 on 32 x 32 took 0.82-0.88x. Rows of one vector
// too, AVX-512's 16 (Zen 5, against the panels, 1-2 threads, batch 1-128: 64->64 5x5 on 16 x 16
// 0.83-0.93x the time, stride-2 16->32 on 32 x 32 0.80-0.95x, 8->16 3x3 0.80x), and rows filling 7/8
// of their vectors or more, AVX-512's 28-31 (8->16 3x3 on 28 x 28 0.66-0.83x the time of the tap rows',
// 16->32 and 32->32 there, 24->48 on 30 x 30, 0.93-1.21x, even); but not rows of 20 or 24, whose
// second vector is mostly empty: 48->48 5x5 on 20 x 20 1.40x, stride-2 16->32 to 24 x 24 1.16x)
bool rows_fill_vectors(const ConvShape& s) {
  const i64 v = active_isa().vector_floats, lanes = (s.Wo + v - 1) / v * v;
  return s.R * s.S > 1 && s.Wo >= 16 && (s.Wo >= 2 * v || 8 * s.Wo >= 7 * lanes) && (s.C <= 32 || s.R * s.S >= 25);
}

// x: [N, C, H, W] -> y: [N, K, Ho, Wo], or pooled: y, argmax: [N, K, Ho/k, Wo/k] (each image
// convolved into a thread's scratch, in L2, and pooled from there). Each image is laid out
// (PhaseLayout) in a thread's scratch and its taps read in place by the ISA's direct_rows_forward.
// One image of enough work: its rows over the threads, each with its own copy of the image.
void direct_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                         const ConvShape& s, i64 N, i64 pool_k) {
  // more input channels than a first layer's on rows too short to fill vectors: tap rows, the input
  // values broadcast from where they lie, where they take the layer (a stride-2 1x1 16->32 layer's
  // phase split cost more than its product: 1.0-1.5x the time)
  if (s.C > kTapRowsChannels && !rows_fill_vectors(s) && tap_rows_forward_path(y, argmax, x, w, b, s, N, pool_k))
    return;
  const i64 K = s.K, P = s.P(), T = s.taps();
  const i64 pooled = pool_k > 0 ? K * (s.Ho / pool_k) * (s.Wo / pool_k) : 0;
  const auto kernel = active_isa().direct_rows_forward;
  const PhaseLayout layout(s, 16);  // (a row's last vector may read up to 15 floats past the layout)
  const int inner =
      N == 1 && pool_k == 0 && double(K) * P * T >= kSplitChunkWork ? threads_over(double(K) * P * T, s.Ho) : 1;
  const int nt = inner > 1 ? inner : threads_over(double(N) * K * P * T, N);
  const size_t per_thread = lines(size_t(layout.floats)) + (pool_k > 0 ? size_t(K) * P : 0);
  ScratchFloats scratch(size_t(nt) * per_thread);
  zero_each(scratch.get(), nt, per_thread, size_t(layout.floats));
  std::unique_ptr<std::int32_t[]> unwanted(pool_k > 0 && !argmax ? new std::int32_t[size_t(nt) * pooled] : nullptr);
  auto rows = [&](float* out, const float* src, i64 oh0, i64 oh1) {  // out's rows oh0..oh1 from the laid-out image
    kernel(out, src, layout.Ws, layout.tap_offset.data(), w, b, K, T, s.Wo, P, oh0, oh1);
  };
  if (inner > 1) {
#pragma omp parallel num_threads(inner)
    {
      const int me = omp_get_thread_num();
      float* src = scratch.get() + size_t(me) * per_thread;
      layout.copy(src, x, s);
      rows(y, src, s.Ho * me / inner, s.Ho * (me + 1) / inner);
    }
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* src = scratch.get() + size_t(omp_get_thread_num()) * per_thread;
    layout.copy(src, x + n * s.C * s.H * s.W, s);
    if (pool_k == 0) {
      rows(y + n * K * P, src, 0, s.Ho);
      continue;
    }
    float* conv = src + lines(size_t(layout.floats));                                                 // [K, Ho, Wo]
    std::int32_t* a = argmax ? argmax + n * pooled : unwanted.get() + omp_get_thread_num() * pooled;  // (nobody's)
    rows(conv, src, 0, s.Ho);
    max_pool2d_planes(y + n * pooled, a, conv, K, s.Ho, s.Wo, pool_k, true);
  }
}

// dy: [N, K, Ho, Wo] (or pooled, with argmax) -> dx (may be null), dw, db
bool direct_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                          const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  if (tap_rows_backward(dx, dw, db, x, w, dy, argmax, s, N, pool_k)) return true;  // (a first layer)
  const i64 K = s.K, P = s.P(), T = s.taps();
  if (pool_k > 0 && dx) {  // the input gradient too: d(conv) made whole, then as below
    std::unique_ptr<float[]> dconv;
    return direct_backward_path(dx, dw, db, x, w, whole_dconv(dconv, dy, argmax, s, N, pool_k), nullptr, s, N, 0);
  }
  if (pool_k == 0) {
    direct_weight_grad(dw, x, dy, s, N);
    if (dx) input_grad(dx, x, w, dy, s, N);
    bias_grad(db, dy, N, K, P);
    return true;
  }
  // Pooled, no dx: each image's d(conv) rebuilt in a thread's scratch from dy and argmax and
  // consumed at once (never a whole NCHW array)
  const i64 Hq = s.Ho / pool_k, Wq = s.Wo / pool_k, pooled = K * Hq * Wq;
  const auto kernel = active_isa().direct_weight_grad;
  const int nt = threads_over(double(N) * K * P * T, N);
  const size_t per_thread = size_t(T) * P + size_t(K) * P;
  std::vector<float> scratch(size_t(nt) * per_thread), partial(size_t(N) * K * T), lanes(size_t(N) * K * 16);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* col = scratch.data() + size_t(omp_get_thread_num()) * per_thread;
    float* dconv = col + size_t(T) * P;  // [K, Ho, Wo]
    max_pool2d_backward_planes(dconv, argmax + n * pooled, dy + n * pooled, K, s.Ho, s.Wo, Hq, Wq);
    im2col(col, x + n * s.C * s.H * s.W, s, P);
    kernel(partial.data() + n * K * T, dconv, col, K, T, P);
    for (i64 k = 0; k < K; ++k) row_lanes(lanes.data() + (n * K + k) * 16, dconv + k * P, P);
  }
  sum_parts(dw, partial.data(), N, K * T);  // as direct_weight_grad
  sum_bias_lanes(db, lanes.data(), N, K);
  return true;
}

}  // namespace cnnfast
