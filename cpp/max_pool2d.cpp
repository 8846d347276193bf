// max_pool2d: window k x k, stride k (non-overlapping), rows/columns past the last whole
// window are dropped (floor), as in PyTorch's MaxPool2d(k).
#include <algorithm>

#include "isa.hpp"
#include "parallel.hpp"

namespace cnnfast {
namespace {

typedef float f32x4 __attribute__((vector_size(16)));
typedef std::int32_t i32x4 __attribute__((vector_size(16)));

inline f32x4 load4(const float* p) {
  f32x4 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// Four adjacent 2x2 windows: rows r0 and r1 hold 8 floats each (a b a b ...); even lanes are each
// window's left column, odd lanes its right. The rule is the scalar one, as vector selects:
// a later value wins when it is larger, or when it is NaN and the best so far is not.
inline void pool2_four(float* y, std::int32_t* argmax, const float* r0, const float* r1, std::int32_t first_index,
                       std::int32_t W, bool relu) {
  const f32x4 top0 = load4(r0), top1 = load4(r0 + 4), bottom0 = load4(r1), bottom1 = load4(r1 + 4);
  const f32x4 candidates[3] = {__builtin_shufflevector(top0, top1, 1, 3, 5, 7),
                               __builtin_shufflevector(bottom0, bottom1, 0, 2, 4, 6),
                               __builtin_shufflevector(bottom0, bottom1, 1, 3, 5, 7)};
  f32x4 best = __builtin_shufflevector(top0, top1, 0, 2, 4, 6);
  i32x4 which = {0, 0, 0, 0};
  for (int i = 0; i < 3; ++i) {
    const f32x4 v = candidates[i];
    const i32x4 take = (v > best) | ((v != v) & (best == best));
    best = take ? v : best;
    which = take ? i32x4{i + 1, i + 1, i + 1, i + 1} : which;
  }
  i32x4 index = first_index + i32x4{0, 2, 4, 6} + (which & 1) + (which >> 1) * W;
  if (relu) {  // a maximum <= 0 outputs 0; only a maximum > 0 passes gradient (as relu_backward)
    best = best <= f32x4{0, 0, 0, 0} ? f32x4{0, 0, 0, 0} : best;
    index = best > f32x4{0, 0, 0, 0} ? index : i32x4{-1, -1, -1, -1};
  }
  __builtin_memcpy(y, &best, sizeof best);
  __builtin_memcpy(argmax, &index, sizeof index);
}

}  // namespace

// x: [N, C, H, W] -> y: [N, C, H/k, W/k], argmax: [N, C, H/k, W/k]
// argmax holds the winner's index h*W + w inside its (n, c) plane; the first maximum wins
// ties, and a NaN in the window wins (so NaN propagates, as in PyTorch).
// With relu, y = relu(pool(x)) = pool(relu(x)) (max and ReLU commute), and a window whose
// maximum is not > 0 (<= 0, or NaN) gets argmax -1: relu(x) then pooling would route its
// gradient to such an x, where relu_backward passes none. One pass over x instead of three (relu, pool, relu's
// backward).
void max_pool2d_planes(float* y, std::int32_t* argmax, const float* x, i64 planes, i64 H, i64 W, i64 k, bool relu) {
  const i64 Ho = H / k, Wo = W / k;
  // 2x2 windows through the instruction set's own rows where it has them (max_pool2d_avx512.cpp)
  // and indices fit the vector arithmetic
  const auto pool2_plane = active_isa().pool2_plane;
  const bool wide = k == 2 && pool2_plane && H * W < (i64(1) << 30);
  for (i64 plane = 0; plane < planes; ++plane) {
    const float* xp = x + plane * H * W;
    float* yp = y + plane * Ho * Wo;
    std::int32_t* ap = argmax + plane * Ho * Wo;
    if (wide) {
      pool2_plane(yp, ap, xp, Ho, Wo, std::int32_t(W), relu);
      continue;
    }
    if (k == 2) {  // the common case, unrolled and branch-free: the same rule (first max, NaN wins)
      for (i64 oh = 0; oh < Ho; ++oh) {
        const float* r0 = xp + 2 * oh * W;
        const float* r1 = r0 + W;
        const std::int32_t row_start = std::int32_t(2 * oh * W);
        i64 ow = 0;
        for (; ow + 4 <= Wo; ow += 4)  // four windows at a time in 16-byte vectors
          pool2_four(yp + oh * Wo + ow, ap + oh * Wo + ow, r0 + 2 * ow, r1 + 2 * ow, row_start + std::int32_t(2 * ow),
                     std::int32_t(W), relu);
        for (; ow < Wo; ++ow) {
          const float v[4] = {r0[2 * ow], r0[2 * ow + 1], r1[2 * ow], r1[2 * ow + 1]};
          int which = 0;
          for (int i = 1; i < 4; ++i)
            if (v[i] > v[which] || (v[i] != v[i] && v[which] == v[which])) which = i;
          yp[oh * Wo + ow] = relu && v[which] <= 0.0f ? 0.0f : v[which];
          ap[oh * Wo + ow] = relu && !(v[which] > 0.0f)
                                 ? -1
                                 : row_start + std::int32_t(2 * ow) + (which & 1) + (which >> 1) * std::int32_t(W);
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
            if (v > best_value || (v != v && best_value == best_value)) {
              best_value = v;
              best = i;
            }
          }
        yp[oh * Wo + ow] = relu && best_value <= 0.0f ? 0.0f : best_value;
        ap[oh * Wo + ow] = relu && !(best_value > 0.0f) ? -1 : std::int32_t(best);
      }
  }
}

void max_pool2d_forward(float* y, std::int32_t* argmax, const float* x, i64 N, i64 C, i64 H, i64 W, i64 k, bool relu) {
  const i64 planes = N * C, out_plane = (H / k) * (W / k);
  const int nt = std::max(1, std::min<int>(threads_for(double(planes) * H * W / 8.0), int(std::max<i64>(planes, 1))));
#pragma omp parallel num_threads(nt)
  {  // each thread one contiguous range of planes (as schedule(static) would give)
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const i64 first = planes * t / n, last = planes * (t + 1) / n;
    max_pool2d_planes(y + first * out_plane, argmax + first * out_plane, x + first * H * W, last - first, H, W, k,
                      relu);
  }
}

// dy, argmax: [N, C, Ho, Wo] -> dx: [N, C, H, W]; dx is zero except at each window's argmax
// (argmax -1: a window closed by the fused ReLU, which passes nothing)
void max_pool2d_backward_planes(float* dx, const std::int32_t* argmax, const float* dy, i64 planes, i64 H, i64 W,
                                i64 Ho, i64 Wo) {
  // 2x2 windows (as far as the shapes tell; the plane function checks every argmax) through the
  // instruction set's dense rows where it has them (AVX-512), in rows of at least 8 windows (pool1's
  // 13: 0.34 -> 0.23 ms at batch 128); on shorter rows (pool2's 5) the fill and scatter of a small
  // plane are faster (0.06 vs 0.20 ms)
  const auto pool2_backward_plane = active_isa().pool2_backward_plane;
  const bool wide = Ho == H / 2 && Wo == W / 2 && Wo >= 8 && pool2_backward_plane && H * W < (i64(1) << 30);
  for (i64 plane = 0; plane < planes; ++plane) {
    float* dxp = dx + plane * H * W;
    if (wide && pool2_backward_plane(dxp, argmax + plane * Ho * Wo, dy + plane * Ho * Wo, H, W, Ho, Wo)) continue;
    std::fill(dxp, dxp + H * W, 0.0f);
    const float* dyp = dy + plane * Ho * Wo;
    const std::int32_t* ap = argmax + plane * Ho * Wo;
    // Branch-free: a closed window (-1, about half of them after a ReLU, in no predictable
    // pattern) adds 0 to element 0 instead of taking a mispredicted branch.
    // (argmax is read once and bounded here too: the bindings checked it, but another Python
    // thread could change it while the kernel runs without the GIL; never a write out of bounds)
    for (i64 i = 0; i < Ho * Wo; ++i) {
      const std::int32_t a = ap[i];
      const bool open = a >= 0 && a < H * W;
      dxp[open ? a : 0] += open ? dyp[i] : 0.0f;
    }
  }
}

void max_pool2d_backward(float* dx, const std::int32_t* argmax, const float* dy, i64 N, i64 C, i64 H, i64 W, i64 Ho,
                         i64 Wo) {
  const i64 planes = N * C;
  const int nt = std::max(1, std::min<int>(threads_for(double(planes) * H * W / 8.0), int(std::max<i64>(planes, 1))));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const i64 first = planes * t / n, last = planes * (t + 1) / n;
    max_pool2d_backward_planes(dx + first * H * W, argmax + first * Ho * Wo, dy + first * Ho * Wo, last - first, H, W,
                               Ho, Wo);
  }
}

// The smallest and largest of a[0:n] (-1 and -1 for n = 0): the bindings' check of argmax
// values, in blocks of 64K values over the threads (conv1's 2.8 MB argmax took 0.1 ms on one
// thread, which the other thread of a training step spent waiting)
void int32_range(const std::int32_t* a, i64 n, std::int32_t* lo, std::int32_t* hi) {
  const i64 block = i64(1) << 16, blocks = (n + block - 1) / block;
  const int nt = std::max(1, std::min<int>(threads_for(double(n) / 4.0), int(std::max<i64>(blocks, 1))));
  std::int32_t low = -1, high = -1;
  const auto int32_range_block = active_isa().int32_range_block;  // int32_range.cpp, per ISA
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : low) reduction(max : high)
  for (i64 b = 0; b < blocks; ++b) int32_range_block(a + b * block, std::min(block, n - b * block), &low, &high);
  *lo = low;
  *hi = high;
}

}  // namespace cnnfast
