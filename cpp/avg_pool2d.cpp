// avg_pool2d: the mean over kh x kw windows, stride sh x sw, zero padding ph x pw, floor
// (PyTorch's AvgPool2d, ceil_mode False); and global average pooling (one mean per plane,
// PyTorch's AdaptiveAvgPool2d(1)). Plain C++ over the planes in parallel: memory-bound.
#include <algorithm>

#include "kernels.hpp"
#include "parallel.hpp"

namespace cnnfast {
namespace {

// The window of output pixel (oh, ow), clipped to the image, and what its sum is divided by:
// the whole window (padding included: count_include_pad) or only its pixels inside the image
struct Window {
  i64 h0, h1, w0, w1;
  float scale;
};

inline Window window_at(const PoolWindow& p, i64 H, i64 W, i64 oh, i64 ow, bool count_include_pad) {
  const i64 top = oh * p.sh - p.ph, left = ow * p.sw - p.pw;
  Window win{std::max<i64>(top, 0), std::min(top + p.kh, H), std::max<i64>(left, 0), std::min(left + p.kw, W), 0.0f};
  const i64 count = count_include_pad ? p.kh * p.kw : (win.h1 - win.h0) * (win.w1 - win.w0);
  win.scale = count > 0 ? 1.0f / float(count) : 0.0f;
  return win;
}

}  // namespace

// x: [N, C, H, W] -> y: [N, C, Ho, Wo], Ho = (H + 2 ph - kh) / sh + 1 (Wo likewise)
void avg_pool2d_forward(float* y, const float* x, i64 N, i64 C, i64 H, i64 W, const PoolWindow& p,
                        bool count_include_pad) {
  const i64 planes = N * C, Ho = p.out_height(H), Wo = p.out_width(W);
#pragma omp parallel for num_threads(threads_for(double(planes) * Ho * Wo * p.kh * p.kw / 4.0)) schedule(static)
  for (i64 plane = 0; plane < planes; ++plane) {
    const float* xp = x + plane * H * W;
    float* yp = y + plane * Ho * Wo;
    for (i64 oh = 0; oh < Ho; ++oh)
      for (i64 ow = 0; ow < Wo; ++ow) {
        const Window win = window_at(p, H, W, oh, ow, count_include_pad);
        float sum = 0.0f;
        for (i64 h = win.h0; h < win.h1; ++h)
          for (i64 w = win.w0; w < win.w1; ++w) sum += xp[h * W + w];
        yp[oh * Wo + ow] = sum * win.scale;
      }
  }
}

// dy: [N, C, Ho, Wo] -> dx: [N, C, H, W]: each dy spread evenly (by the forward's divisor) over
// its window's pixels in the image; overlapping windows add up
void avg_pool2d_backward(float* dx, const float* dy, i64 N, i64 C, i64 H, i64 W, i64 Ho, i64 Wo, const PoolWindow& p,
                         bool count_include_pad) {
  const i64 planes = N * C;
#pragma omp parallel for num_threads(threads_for(double(planes) * Ho * Wo * p.kh * p.kw / 4.0)) schedule(static)
  for (i64 plane = 0; plane < planes; ++plane) {
    float* dxp = dx + plane * H * W;
    const float* dyp = dy + plane * Ho * Wo;
    std::fill(dxp, dxp + H * W, 0.0f);
    for (i64 oh = 0; oh < Ho; ++oh)
      for (i64 ow = 0; ow < Wo; ++ow) {
        const Window win = window_at(p, H, W, oh, ow, count_include_pad);
        const float g = dyp[oh * Wo + ow] * win.scale;
        for (i64 h = win.h0; h < win.h1; ++h)
          for (i64 w = win.w0; w < win.w1; ++w) dxp[h * W + w] += g;
      }
  }
}

// x: [planes, HW] -> y: [planes], the mean of each plane: 16 float running sums (element i in
// sum i % 16: a loop the compiler vectorises without reordering any sum) over blocks of kBlock
// values, each block's sums then added into 16 double sums: a float sum holds only kBlock / 16
// values, so a 4096x4096 plane's mean is as exact as a float32 holds it (float sums over the
// whole plane lost 2.3e-6 of it, 1e-2 with a large common part); a plane is one thread's, so no
// result depends on the number of threads
void global_avg_pool2d_forward(float* y, const float* x, i64 planes, i64 HW) {
  const double scale = HW > 0 ? 1.0 / double(HW) : 0.0;
  constexpr i64 kLanes = 16, kBlock = 512;
#pragma omp parallel for num_threads(threads_for(double(planes) * HW / 4.0)) schedule(static)
  for (i64 plane = 0; plane < planes; ++plane) {
    const float* xp = x + plane * HW;
    double totals[kLanes] = {};
    float lanes[kLanes] = {};
    i64 i = 0;
    for (; i + kBlock <= HW; i += kBlock) {
      for (i64 k = i; k < i + kBlock; k += kLanes)
        for (i64 j = 0; j < kLanes; ++j) lanes[j] += xp[k + j];
      for (i64 j = 0; j < kLanes; ++j) {
        totals[j] += lanes[j];
        lanes[j] = 0.0f;
      }
    }
    for (; i + kLanes <= HW; i += kLanes)
      for (i64 j = 0; j < kLanes; ++j) lanes[j] += xp[i + j];
    double sum = 0.0;
    for (; i < HW; ++i) sum += xp[i];
    for (i64 j = 0; j < kLanes; ++j) sum += totals[j] + lanes[j];
    y[plane] = float(sum * scale);
  }
}

// dy: [planes] -> dx: [planes, HW] = dy / HW, repeated over each plane
void global_avg_pool2d_backward(float* dx, const float* dy, i64 planes, i64 HW) {
  const float scale = HW > 0 ? 1.0f / float(HW) : 0.0f;
#pragma omp parallel for num_threads(threads_for(double(planes) * HW / 8.0)) schedule(static)
  for (i64 plane = 0; plane < planes; ++plane) std::fill(dx + plane * HW, dx + (plane + 1) * HW, dy[plane] * scale);
}

}  // namespace cnnfast
