// conv2d's reference: the specification, in plain loops, last in conv2d.cpp's list. It accepts
// every layer (the empty ones too: no images, channels or taps) and is the path those take.
#include <memory>
#include <vector>

#include "conv2d_common.hpp"

namespace cnnfast {

// y[n][k][oh][ow] = b[k] + sum_{c,r,s} w[k][c][r][s] * x[n][c][oh*stride + r - pad][ow*stride + s - pad]
void conv2d_forward_naive(float* y, const float* x, const float* w, const float* b, i64 N, i64 C, i64 H, i64 W, i64 K,
                          i64 R, i64 S, i64 pad, i64 stride) {
  const ConvShape s(C, H, W, K, R, S, pad, stride);
  for (i64 n = 0; n < N; ++n)
    for (i64 k = 0; k < K; ++k)
      for (i64 oh = 0; oh < s.Ho; ++oh)
        for (i64 ow = 0; ow < s.Wo; ++ow) {
          float sum = b[k];
          for (i64 c = 0; c < C; ++c)
            for (i64 r = 0; r < R; ++r)
              for (i64 q = 0; q < S; ++q) {
                const i64 ih = oh * stride + r - pad, iw = ow * stride + q - pad;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                  sum += w[((k * C + c) * R + r) * S + q] * x[((n * C + c) * H + ih) * W + iw];
              }
          y[((n * K + k) * s.Ho + oh) * s.Wo + ow] = sum;
        }
}

// The adjoint, from the same loops: every term b[k] + w[k][c][r][s] * x[n][c][ih][iw] of y sends
// dy back to b, w and x. dw and db are summed in double.
void conv2d_backward_naive(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy, i64 N,
                           i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad, i64 stride) {
  const ConvShape s(C, H, W, K, R, S, pad, stride);
  std::vector<double> dw_sum(size_t(K * C * R * S), 0.0), db_sum(size_t(K), 0.0);
  if (dx) std::fill(dx, dx + N * C * H * W, 0.0f);
  for (i64 n = 0; n < N; ++n)
    for (i64 k = 0; k < K; ++k)
      for (i64 oh = 0; oh < s.Ho; ++oh)
        for (i64 ow = 0; ow < s.Wo; ++ow) {
          const float g = dy[((n * K + k) * s.Ho + oh) * s.Wo + ow];
          db_sum[size_t(k)] += g;
          for (i64 c = 0; c < C; ++c)
            for (i64 r = 0; r < R; ++r)
              for (i64 q = 0; q < S; ++q) {
                const i64 ih = oh * stride + r - pad, iw = ow * stride + q - pad;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                const i64 wi = ((k * C + c) * R + r) * S + q, xi = ((n * C + c) * H + ih) * W + iw;
                dw_sum[size_t(wi)] += double(g) * x[xi];
                if (dx) dx[xi] += g * w[wi];
              }
        }
  for (i64 i = 0; i < K * C * R * S; ++i) dw[i] = float(dw_sum[size_t(i)]);
  for (i64 k = 0; k < K; ++k) db[k] = float(db_sum[size_t(k)]);
}

// The list's entries: pooled, the convolution whole, then max_pool2d and its backward
void reference_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                            const ConvShape& s, i64 N, i64 pool_k) {
  if (pool_k == 0) return conv2d_forward_naive(y, x, w, b, N, s.C, s.H, s.W, s.K, s.R, s.S, s.pad, s.stride);
  std::unique_ptr<float[]> conv(new float[size_t(N) * s.K * s.P()]);
  conv2d_forward_naive(conv.get(), x, w, b, N, s.C, s.H, s.W, s.K, s.R, s.S, s.pad, s.stride);
  pool_whole(y, argmax, conv.get(), s, N, pool_k);
}

bool reference_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                             const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  if (pool_k == 0) {
    conv2d_backward_naive(dx, dw, db, x, w, dy, N, s.C, s.H, s.W, s.K, s.R, s.S, s.pad, s.stride);
    return true;
  }
  std::unique_ptr<float[]> dconv;
  dy = whole_dconv(dconv, dy, argmax, s, N, pool_k);
  conv2d_backward_naive(dx, dw, db, x, w, dy, N, s.C, s.H, s.W, s.K, s.R, s.S, s.pad, s.stride);
  return true;
}

}  // namespace cnnfast
