// max_pool2d: window k x k, stride k (non-overlapping), rows/columns past the last whole
// window are dropped (floor), as in PyTorch's MaxPool2d(k).
#include "kernels.hpp"

#include <algorithm>

namespace cnnfast {

// x: [N, C, H, W] -> y: [N, C, H/k, W/k], argmax: [N, C, H/k, W/k]
// argmax holds the winner's index h*W + w inside its (n, c) plane; the first maximum wins
// ties, and a NaN in the window wins (so NaN propagates, as in PyTorch).
void max_pool2d_forward(float* y, std::int32_t* argmax, const float* x,
                        i64 N, i64 C, i64 H, i64 W, i64 k) {
  const i64 Ho = H / k, Wo = W / k, planes = N * C;
#pragma omp parallel for num_threads(threads_for(double(planes) * H * W / 8.0)) schedule(static)
  for (i64 plane = 0; plane < planes; ++plane) {
    const float* xp = x + plane * H * W;
    float* yp = y + plane * Ho * Wo;
    std::int32_t* ap = argmax + plane * Ho * Wo;
    if (k == 2) {  // the common case, unrolled: the same rule (first maximum, NaN wins)
      for (i64 oh = 0; oh < Ho; ++oh) {
        const float* r0 = xp + 2 * oh * W;
        const float* r1 = r0 + W;
        for (i64 ow = 0; ow < Wo; ++ow) {
          const float v[4] = {r0[2 * ow], r0[2 * ow + 1], r1[2 * ow], r1[2 * ow + 1]};
          const i64 at[4] = {2 * oh * W + 2 * ow, 2 * oh * W + 2 * ow + 1, (2 * oh + 1) * W + 2 * ow,
                             (2 * oh + 1) * W + 2 * ow + 1};
          int best = 0;
          for (int i = 1; i < 4; ++i)
            if (v[i] > v[best] || (v[i] != v[i] && v[best] == v[best])) best = i;
          yp[oh * Wo + ow] = v[best];
          ap[oh * Wo + ow] = std::int32_t(at[best]);
        }
      }
      continue;
    }
    for (i64 oh = 0; oh < Ho; ++oh)
      for (i64 ow = 0; ow < Wo; ++ow) {
        i64 best = oh * k * W + ow * k;
        float best_value = xp[best];
        for (i64 r = 0; r < k; ++r)
          for (i64 s = 0; s < k; ++s) {
            const i64 i = (oh * k + r) * W + ow * k + s;
            const float v = xp[i];
            if (v > best_value || (v != v && best_value == best_value)) { best_value = v; best = i; }
          }
        yp[oh * Wo + ow] = best_value;
        ap[oh * Wo + ow] = std::int32_t(best);
      }
  }
}

// dy, argmax: [N, C, Ho, Wo] -> dx: [N, C, H, W]; dx is zero except at each window's argmax
void max_pool2d_backward(float* dx, const std::int32_t* argmax, const float* dy,
                         i64 N, i64 C, i64 H, i64 W, i64 Ho, i64 Wo) {
  const i64 planes = N * C;
#pragma omp parallel for num_threads(threads_for(double(planes) * H * W / 8.0)) schedule(static)
  for (i64 plane = 0; plane < planes; ++plane) {
    float* dxp = dx + plane * H * W;
    std::fill(dxp, dxp + H * W, 0.0f);
    const float* dyp = dy + plane * Ho * Wo;
    const std::int32_t* ap = argmax + plane * Ho * Wo;
    for (i64 i = 0; i < Ho * Wo; ++i) dxp[ap[i]] += dyp[i];
  }
}

}  // namespace cnnfast
