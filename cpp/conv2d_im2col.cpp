// conv2d's im2col path, for strided layers (a ResNet's 3x3 and 1x1 stride-2 downsampling, a stem's
// 7x7 stride 2), which the other paths do not take. A chunk of images (conv2d_common.hpp's
// Chunking) is laid out as patches side by side, col[T, L] (T = C*R*S taps, L = images * Ho*Wo),
// and each pass is one GEMM of the ISA's micro-kernel (gemm.cpp):
//   forward    y[K, L] = w[K, T] col[T, L] + b
//   backward   dw[K, T] = sum over chunks of dy[K, L] col[T, L]^T;  dcol[T, L] = w^T dy, col2im'd into dx
// Chunks over the threads (a chunk's GEMMs on one thread); a batch of a single chunk splits its
// GEMMs over the threads instead. dw is summed chunk by chunk in chunk order: the same for any
// thread count. Pooled layers convolve whole, then max_pool2d (as the reference does).
#include <memory>

#include "conv2d_common.hpp"
#include "gemm.hpp"
#include "parallel.hpp"

namespace cnnfast {
namespace {

struct ChunkRange {
  i64 n0, n1;
};
ChunkRange chunk_range(const Chunking& ch, i64 c, i64 N) {
  return {c * ch.per_chunk, std::min(N, (c + 1) * ch.per_chunk)};
}

// One GEMM, on this thread, or split over the threads when the batch is a single chunk
void gemm(bool split, bool trans_a, bool trans_b, i64 M, i64 N, i64 K, const float* A, i64 lda, const float* B, i64 ldb,
          float* C, i64 ldc) {
  (split ? sgemm_parallel : sgemm)(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, false);
}

// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y: [N, K, Ho, Wo]
void im2col_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N) {
  const i64 K = s.K, P = s.P(), T = s.taps(), image = s.C * s.H * s.W;
  const Chunking ch(N, P);
  const i64 L = ch.per_chunk * P;
  const int nt = threads_over(double(N) * K * P * T, ch.chunks);
  const bool split = ch.chunks == 1;
  const size_t per_thread = lines(size_t(T) * L) + lines(size_t(K) * L);
  ScratchFloats scratch(size_t(nt) * per_thread);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 c = 0; c < ch.chunks; ++c) {
    const auto [n0, n1] = chunk_range(ch, c, N);
    const i64 Lc = (n1 - n0) * P;
    float* col = scratch.get() + size_t(omp_get_thread_num()) * per_thread;
    float* out = col + lines(size_t(T) * L);  // [K, Lc]
    for (i64 n = n0; n < n1; ++n) im2col(col + (n - n0) * P, x + n * image, s, Lc);
    gemm(split, false, false, K, Lc, T, w, T, col, Lc, out, Lc);
    for (i64 n = n0; n < n1; ++n)
      for (i64 k = 0; k < K; ++k) {
        const float* from = out + k * Lc + (n - n0) * P;
        float* to = y + (n * K + k) * P;
        for (i64 p = 0; p < P; ++p) to[p] = from[p] + b[k];
      }
  }
}

// dy: [N, K, Ho, Wo] -> dx: [N, C, H, W] (may be null), dw: [K, C, R, S], db: [K]
void im2col_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                     const ConvShape& s, i64 N) {
  const i64 K = s.K, P = s.P(), T = s.taps(), image = s.C * s.H * s.W;
  const Chunking ch(N, P);
  const i64 L = ch.per_chunk * P;
  const int nt = threads_over(double(N) * K * P * T * (dx ? 2 : 1), ch.chunks);
  const bool split = ch.chunks == 1;
  const size_t per_thread = lines(size_t(T) * L) * (dx ? 2 : 1) + lines(size_t(K) * L);
  ScratchFloats scratch(size_t(nt) * per_thread), partial(size_t(ch.chunks) * K * T);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 c = 0; c < ch.chunks; ++c) {
    const auto [n0, n1] = chunk_range(ch, c, N);
    const i64 Lc = (n1 - n0) * P;
    float* col = scratch.get() + size_t(omp_get_thread_num()) * per_thread;
    float* dyc = col + lines(size_t(T) * L);  // [K, Lc]: the chunk's dy, images side by side
    float* dcol = dyc + lines(size_t(K) * L);
    for (i64 n = n0; n < n1; ++n) {
      im2col(col + (n - n0) * P, x + n * image, s, Lc);
      for (i64 k = 0; k < K; ++k)
        std::copy(dy + (n * K + k) * P, dy + (n * K + k + 1) * P, dyc + k * Lc + (n - n0) * P);
    }
    gemm(split, false, true, K, T, Lc, dyc, Lc, col, Lc, partial.get() + c * K * T, T);
    if (!dx) continue;
    gemm(split, true, false, T, Lc, K, w, T, dyc, Lc, dcol, Lc);
    for (i64 n = n0; n < n1; ++n) col2im(dx + n * image, dcol + (n - n0) * P, s, Lc);
  }
  sum_parts(dw, partial.get(), ch.chunks, K * T);  // w's layout [K, C, R, S] is [K, T]
  bias_grad(db, dy, N, K, P);
}

}  // namespace

// x: [N, C, H, W] -> y: [N, K, Ho, Wo], or pooled: y, argmax: [N, K, Ho/k, Wo/k]
void im2col_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                         const ConvShape& s, i64 N, i64 pool_k) {
  if (pool_k == 0) return im2col_forward(y, x, w, b, s, N);
  const i64 pooled = s.K * (s.Ho / pool_k) * (s.Wo / pool_k);
  std::unique_ptr<float[]> conv(new float[size_t(N) * s.K * s.P()]);
  std::unique_ptr<std::int32_t[]> unwanted(argmax ? nullptr : new std::int32_t[size_t(N) * pooled]);
  im2col_forward(conv.get(), x, w, b, s, N);
  max_pool2d_forward(y, argmax ? argmax : unwanted.get(), conv.get(), N, s.K, s.Ho, s.Wo, pool_k, true);
}

// dy: [N, K, Ho, Wo] (or pooled, with argmax) -> dx (may be null), dw, db
bool im2col_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                          const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  if (pool_k == 0) {
    im2col_backward(dx, dw, db, x, w, dy, s, N);
    return true;
  }
  std::unique_ptr<float[]> dconv(new float[size_t(N) * s.K * s.P()]);
  max_pool2d_backward(dconv.get(), argmax, dy, N, s.K, s.Ho, s.Wo, s.Ho / pool_k, s.Wo / pool_k);
  im2col_backward(dx, dw, db, x, w, dconv.get(), s, N);
  return true;
}

}  // namespace cnnfast
