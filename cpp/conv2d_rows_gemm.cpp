// conv2d through patch rows and GEMMs: the portable path for any shape (after the ISA's own
// paths, conv2d.cpp's list). An image is first copied into a zero-bordered channels-last copy
// xp[H+2p][W+2p][C]; then every output pixel's receptive field is one contiguous "patch row" of
// R*S*C taps (R copies of S*C floats), and with the weights reordered to wt[K][R][S][C] the
// convolution is one matrix product: y^T[pixels, K] = rows[pixels, RSC] wt^T. Because rows, dy
// and wt are all stored with the summed dimension where the GEMM packs it from, packing is plain
// row copies. A few images are laid side by side (a chunk, conv2d_common.hpp's Chunking) and
// each thread takes whole chunks.
#include <cstring>
#include <memory>
#include <vector>

#include "conv2d_common.hpp"
#include "gemm.hpp"
#include "parallel.hpp"

namespace cnnfast {
namespace {

// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y: [N, K, Ho, Wo]
void rows_gemm_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N) {
  const i64 C = s.C, H = s.H, W = s.W, K = s.K, P = s.P(), T = s.taps();
  const Chunking ch(N, P);
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * T), int(std::max<i64>(ch.chunks, 1))));
  const std::vector<float> wt = weights_rsc(w, s);
  const size_t image_floats = size_t(s.Hp) * s.Wp * C, chunk_pixels = size_t(ch.per_chunk) * P;
  const size_t scratch_per_thread = image_floats + chunk_pixels * (T + K);
  std::vector<float> scratch(size_t(nt) * scratch_per_thread);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 chunk = 0; chunk < ch.chunks; ++chunk) {
    const i64 n0 = chunk * ch.per_chunk, n1 = std::min(N, n0 + ch.per_chunk), L = (n1 - n0) * P;
    float* xp = scratch.data() + size_t(omp_get_thread_num()) * scratch_per_thread;
    float* rows = xp + image_floats;  // [L, T]
    float* out = rows + chunk_pixels * T;  // [K, L] or [L, K]
    for (i64 n = n0; n < n1; ++n) {
      to_padded_nhwc(xp, x + n * C * H * W, s);
      im2row(rows + (n - n0) * P * T, xp, s);
    }
    // Long patch rows (T > K) are packed cheaply as the product's rows, y^T = rows wt^T, at the
    // price of transposing the small result; short ones (conv1: 9 taps) go in as columns, and a
    // single image's product is then written straight into y.
    const bool pixel_rows = T > K;
    if (!pixel_rows && n1 - n0 == 1) {
      float* yn = y + n0 * K * P;
      for (i64 k = 0; k < K; ++k) std::fill(yn + k * P, yn + (k + 1) * P, b[k]);
      sgemm(false, true, K, P, T, wt.data(), T, rows, T, yn, P, /*accumulate=*/true);
      continue;
    }
    if (pixel_rows)
      sgemm(false, true, L, K, T, rows, T, wt.data(), T, out, K, false);   // out: [L, K]
    else
      sgemm(false, true, K, L, T, wt.data(), T, rows, T, out, L, false);   // out: [K, L]
    const i64 pixel_stride = pixel_rows ? K : 1, channel_stride = pixel_rows ? 1 : L;
    for (i64 n = n0; n < n1; ++n)  // y_n[k][p] = out[k][(n - n0)*P + p] + b[k]
      for (i64 k = 0; k < K; ++k) {
        const float* src = out + (n - n0) * P * pixel_stride + k * channel_stride;
        float* dst = y + (n * K + k) * P;
        for (i64 p = 0; p < P; ++p) dst[p] = src[p * pixel_stride] + b[k];
      }
  }
}

// A chunk's dy (images n0..n1, L pixels) for conv2d_backward_gemm: as [K, L] (channel-major),
// and, where the source can give it cheaply, also as [L, K] (pixel-major), which spares the
// weight-gradient GEMM a transposing pack.
struct DyChunk {
  const float* by_channel;  // [K, L]
  const float* by_pixel;    // [L, K] or null
};

// The plain source: dy itself, gathered.
struct GatherDy {
  const float* dy;
  i64 K, P;
  // kl: room for [K, L]; lk: room for [L, K] (unused here)
  DyChunk operator()(i64 n0, i64 n1, float* kl, float*) const {
    if (n1 - n0 == 1) return {dy + n0 * K * P, nullptr};  // one image's dy serves as it is
    const i64 L = (n1 - n0) * P;
    for (i64 n = n0; n < n1; ++n)
      for (i64 k = 0; k < K; ++k)
        std::memcpy(kl + k * L + (n - n0) * P, dy + (n * K + k) * P, sizeof(float) * P);
    return {kl, nullptr};
  }
};

// The fused kernel's source: d(conv) rebuilt from the pooled dy and argmax, chunk by chunk (both
// layouts), its bias-gradient lanes taken on the way.
struct PooledDy {
  const float* dy;
  const std::int32_t* argmax;
  const ConvShape& s;
  i64 pool_k;
  const std::int32_t* every;  // every[p] = p
  float* lanes;
  DyChunk operator()(i64 n0, i64 n1, float* kl, float* lk) const {
    pooled_dconv_chunk(kl, lk, s.K, lanes, dy, argmax, s, pool_k, n0, n1, every, s.P());  // (no pixel is outside)
    return {kl, lk};
  }
};

// dw and dx (either may be null; x is read only for dw) through GEMMs on patch rows. Per chunk,
// dy's rows are laid side by side, dy_rows[K, pixels]:
//   dwt += dy_rows rows          ([K, RSC]: one GEMM summing over every pixel of the chunk)
//   drows = dy_rows^T wt, dx = row2im(drows)
// Each chunk's dwt is a separate partial sum; they are added in chunk order at the end. dy_of
// gives each chunk's dy (GatherDy, or PooledDy for the fused kernel).
template <typename DyOf>
void conv2d_backward_gemm(float* dx, float* dw, const float* x, const float* w, const DyOf& dy_of,
                          const ConvShape& s, i64 N) {
  const i64 C = s.C, H = s.H, W = s.W, K = s.K, R = s.R, S = s.S, P = s.P(), T = s.taps();
  const Chunking ch(N, P);
  const int nt = std::max(1, std::min<int>(threads_for(2.0 * N * K * P * T), int(std::max<i64>(ch.chunks, 1))));
  const std::vector<float> wt = weights_rsc(w, s);
  // Rows of the dw product: output channels (dwt as is) or taps (dwt transposed), whichever
  // wastes less of the micro-kernel's tile (conv1 has 9 taps: as columns they would fill 9 of 32).
  const MicroKernel& mk = active_microkernel();
  auto padded = [](i64 v, i64 unit) { return (v + unit - 1) / unit * unit; };
  const bool taps_as_rows = padded(T, mk.mr) * padded(K, mk.nr) < padded(K, mk.mr) * padded(T, mk.nr);
  std::vector<float> partial(dw ? size_t(std::max<i64>(ch.chunks, 1)) * K * T : 0, 0.0f);
  const size_t image_floats = size_t(s.Hp) * s.Wp * C, chunk_pixels = size_t(ch.per_chunk) * P;
  const size_t scratch_per_thread = image_floats + chunk_pixels * (T + 2 * K);
  std::vector<float> scratch(size_t(nt) * scratch_per_thread);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 chunk = 0; chunk < ch.chunks; ++chunk) {
    const i64 n0 = chunk * ch.per_chunk, n1 = std::min(N, n0 + ch.per_chunk), L = (n1 - n0) * P;
    float* xp = scratch.data() + size_t(omp_get_thread_num()) * scratch_per_thread;
    float* rows = xp + image_floats;  // [L, T]
    float* kl = rows + chunk_pixels * T;
    const DyChunk d = dy_of(n0, n1, kl, kl + chunk_pixels * K);
    const float* dy_rows = d.by_channel;  // [K, L]
    for (i64 n = n0; n < n1 && dw; ++n) {  // (x's patch rows serve dw only)
      to_padded_nhwc(xp, x + n * C * H * W, s);
      im2row(rows + (n - n0) * P * T, xp, s);
    }
    float* out = dw ? partial.data() + chunk * K * T : nullptr;  // (no arithmetic on an empty vector's data())
    // (the same products whichever layout of dy they are packed from)
    if (!dw) {
    } else if (taps_as_rows && d.by_pixel)
      sgemm(true, false, T, K, L, rows, T, d.by_pixel, K, out, K, false);  // out: [T, K]
    else if (taps_as_rows)
      sgemm(true, true, T, K, L, rows, T, dy_rows, L, out, K, false);
    else if (d.by_pixel)
      sgemm(true, false, K, T, L, d.by_pixel, K, rows, T, out, T, false);  // out: [K, T]
    else
      sgemm(false, false, K, T, L, dy_rows, L, rows, T, out, T, false);
    if (dx) {  // rows are no longer needed: they become drows
      sgemm(true, false, L, T, K, dy_rows, L, wt.data(), T, rows, T, false);
      for (i64 n = n0; n < n1; ++n) {
        row2im(xp, rows + (n - n0) * P * T, s);
        from_padded_nhwc(dx + n * C * H * W, xp, s);
      }
    }
  }
  if (!dw) return;
  std::vector<float> total(size_t(K) * T);
  sum_parts(total.data(), partial.data(), ch.chunks, K * T);  // the chunks' products, in chunk order
  for (i64 k = 0; k < K; ++k)  // dw[k][c][r][q] = dwt[k][(r*S + q)*C + c]
    for (i64 c = 0; c < C; ++c)
      for (i64 r = 0; r < R; ++r)
        for (i64 q = 0; q < S; ++q) {
          const i64 t = (r * S + q) * C + c;
          dw[((k * C + c) * R + r) * S + q] = total[size_t(taps_as_rows ? t * K + k : k * T + t)];
        }
}

// The bias gradient's partial sums of one row d[0:P] (one image, one channel): 16 interleaved

}  // namespace

void rows_gemm_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                            const ConvShape& s, i64 N, i64 pool_k) {
  if (pool_k == 0) return rows_gemm_forward(y, x, w, b, s, N);
  // pooled: the convolution whole, then max_pool2d (an argmax nobody asked for is made all the same)
  const i64 pooled = s.K * (s.Ho / pool_k) * (s.Wo / pool_k);
  std::unique_ptr<float[]> conv(new float[size_t(N) * s.K * s.P()]);
  std::unique_ptr<std::int32_t[]> unwanted(argmax ? nullptr : new std::int32_t[size_t(N) * pooled]);
  rows_gemm_forward(conv.get(), x, w, b, s, N);
  max_pool2d_forward(y, argmax ? argmax : unwanted.get(), conv.get(), N, s.K, s.Ho, s.Wo, pool_k, true);
}

bool rows_gemm_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                             const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  if (pool_k == 0) {
    conv2d_backward_gemm(dx, dw, x, w, GatherDy{dy, s.K, s.P()}, s, N);
    bias_grad(db, dy, N, s.K, s.P());
    return true;
  }
  // pooled: each chunk's d(conv) rebuilt from dy and argmax in both layouts the GEMMs want (never
  // as a whole NCHW array), its bias-gradient lanes taken on the way
  ScratchFloats lanes(size_t(N) * s.K * 16);  // (every lane written)
  std::vector<std::int32_t> every(static_cast<size_t>(s.P()));
  for (i64 p = 0; p < s.P(); ++p) every[size_t(p)] = std::int32_t(p);
  conv2d_backward_gemm(dx, dw, x, w, PooledDy{dy, argmax, s, pool_k, every.data(), lanes.get()}, s, N);
  sum_bias_lanes(db, lanes.get(), N, s.K);
  return true;
}

void rows_gemm_input_grad(float* dx, const float* w, const float* dy, const ConvShape& s, i64 N) {
  conv2d_backward_gemm(dx, nullptr, nullptr, w, GatherDy{dy, s.K, s.P()}, s, N);
}

}  // namespace cnnfast
