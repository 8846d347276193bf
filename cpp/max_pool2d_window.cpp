// max_pool2d with any window: kh x kw, stride sh x sw, padding ph x pw (padded with -inf, so a
// padded pixel never wins), floor (PyTorch's MaxPool2d(kernel_size, stride, padding)). The
// stride == window, unpadded case keeps its own faster kernels (max_pool2d.cpp): this is the
// general one, plain C++, over the planes in parallel.
#include <algorithm>

#include "kernels.hpp"
#include "parallel.hpp"

namespace cnnfast {

// x: [N, C, H, W] -> y, argmax: [N, C, Ho, Wo], Ho = (H + 2 ph - kh) / sh + 1 (Wo likewise)
// argmax holds the winner's index h*W + w in its plane (a real pixel: padding <= window / 2
// leaves every window one); the first maximum wins ties and a NaN wins its window, as in
// max_pool2d.
void max_pool2d_window_forward(float* y, std::int32_t* argmax, const float* x, i64 N, i64 C, i64 H, i64 W,
                               const PoolWindow& p) {
  const i64 planes = N * C, Ho = p.out_height(H), Wo = p.out_width(W);
#pragma omp parallel for num_threads(threads_for(double(planes) * Ho * Wo * p.kh * p.kw / 4.0)) schedule(static)
  for (i64 plane = 0; plane < planes; ++plane) {
    const float* xp = x + plane * H * W;
    float* yp = y + plane * Ho * Wo;
    std::int32_t* ap = argmax + plane * Ho * Wo;
    for (i64 oh = 0; oh < Ho; ++oh) {
      const i64 h0 = std::max<i64>(oh * p.sh - p.ph, 0), h1 = std::min(oh * p.sh - p.ph + p.kh, H);
      for (i64 ow = 0; ow < Wo; ++ow) {
        const i64 w0 = std::max<i64>(ow * p.sw - p.pw, 0), w1 = std::min(ow * p.sw - p.pw + p.kw, W);
        i64 best = h0 * W + w0;
        float best_value = xp[best];
        for (i64 h = h0; h < h1; ++h)
          for (i64 w = w0; w < w1; ++w) {
            const float v = xp[h * W + w];
            if (v > best_value || (v != v && best_value == best_value)) {
              best_value = v;
              best = h * W + w;
            }
          }
        yp[oh * Wo + ow] = best_value;
        ap[oh * Wo + ow] = std::int32_t(best);
      }
    }
  }
}

// dy, argmax: [N, C, Ho, Wo] -> dx: [N, C, H, W]: each dy added at its argmax (overlapping
// windows add up), zero elsewhere; an argmax outside the plane (or -1) routes nothing
void max_pool2d_window_backward(float* dx, const std::int32_t* argmax, const float* dy, i64 N, i64 C, i64 H, i64 W,
                                i64 Ho, i64 Wo) {
  const i64 planes = N * C;
#pragma omp parallel for num_threads(threads_for(double(planes) * H * W / 8.0)) schedule(static)
  for (i64 plane = 0; plane < planes; ++plane) {
    float* dxp = dx + plane * H * W;
    const std::int32_t* ap = argmax + plane * Ho * Wo;
    const float* dyp = dy + plane * Ho * Wo;
    std::fill(dxp, dxp + H * W, 0.0f);
    for (i64 i = 0; i < Ho * Wo; ++i) {
      const std::int32_t a = ap[i];  // read once (another thread could change it: never a stray write)
      if (a >= 0 && a < H * W) dxp[a] += dyp[i];
    }
  }
}

}  // namespace cnnfast
