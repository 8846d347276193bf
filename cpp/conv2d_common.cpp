// conv2d's shared pieces (conv2d_common.hpp): layout changes, sums, the bias gradient, the fused
// backward's d(conv). Portable C++, compiled once.
#include "conv2d_common.hpp"

#include <cstring>
#include <memory>
#include <vector>

#include "gemm.hpp"
#include "isa.hpp"
#include "parallel.hpp"

namespace cnnfast {

void im2col(float* col, const float* x, const ConvShape& s, i64 ld) {
  const i64 st = s.stride;
  for (i64 c = 0; c < s.C; ++c)
    for (i64 r = 0; r < s.R; ++r)
      for (i64 q = 0; q < s.S; ++q) {
        float* row = col + ((c * s.R + r) * s.S + q) * ld;
        // the output columns whose input column ow*stride + q - pad lies inside [0, W)
        const i64 ow_lo = std::clamp<i64>((s.pad - q + st - 1) / st, 0, s.Wo),
                  ow_hi = std::clamp<i64>((s.W + s.pad - q + st - 1) / st, ow_lo, s.Wo);
        for (i64 oh = 0; oh < s.Ho; ++oh) {
          float* out = row + oh * s.Wo;
          const i64 ih = oh * st + r - s.pad;
          if (ih < 0 || ih >= s.H) {
            std::fill(out, out + s.Wo, 0.0f);
            continue;
          }
          const float* in = x + (c * s.H + ih) * s.W + q - s.pad;
          std::fill(out, out + ow_lo, 0.0f);
          if (st == 1)
            std::copy(in + ow_lo, in + ow_hi, out + ow_lo);
          else if (st == 2)  // (a constant stride: the compiler vectorises the gather with shuffles)
            for (i64 ow = ow_lo; ow < ow_hi; ++ow) out[ow] = in[ow * 2];
          else
            for (i64 ow = ow_lo; ow < ow_hi; ++ow) out[ow] = in[ow * st];
          std::fill(out + ow_hi, out + s.Wo, 0.0f);
        }
      }
}

PhaseLayout::PhaseLayout(const ConvShape& s, i64 slack)
    : Hs((s.Hp + s.stride - 1) / s.stride),
      Ws((s.Wp + s.stride - 1) / s.stride),
      plane(Hs * Ws),
      floats(s.stride * s.stride * s.C * plane + slack),
      tap_offset(static_cast<size_t>(s.taps())) {
  // (the divisions once per (r, q), not per tap: with 288 taps they were 2.5% of a single-image
  // conv2's time on the calling thread, perf on AVX2)
  const i64 st = s.stride;
  for (i64 r = 0; r < s.R; ++r)
    for (i64 q = 0; q < s.S; ++q) {
      const i64 first = ((r % st) * st + q % st) * s.C * plane + r / st * Ws + q / st;  // (channel 0's)
      for (i64 c = 0; c < s.C; ++c) tap_offset[size_t((c * s.R + r) * s.S + q)] = first + c * plane;
    }
}

void PhaseLayout::copy(float* dst, const float* x, const ConvShape& s) const {
  const i64 st = s.stride;
  if (st == 1) {
    for (i64 c = 0; c < s.C; ++c)
      for (i64 h = 0; h < s.H; ++h)
        std::memcpy(dst + c * plane + (h + s.pad) * Ws + s.pad, x + (c * s.H + h) * s.W, sizeof(float) * size_t(s.W));
    return;
  }
  // stride 2 and both column phases read: in the ISA's vectors (split_phases2)
  if (st == 2 && s.S >= 2) return active_isa().split_phases2(dst, x, s, plane, Ws);
  // per column phase q < min(st, S) (the ones a tap reads): its first input column, how many, and
  // where they start in a phase row (no division per row: 64-bit divisions were most of the copy)
  const i64 phases = std::min(st, s.S);
  std::vector<i64> first(static_cast<size_t>(phases)), count(first), start(first);
  for (i64 q = 0; q < phases; ++q) {
    first[size_t(q)] = ((q - s.pad) % st + st) % st;
    count[size_t(q)] = first[size_t(q)] < s.W ? (s.W - first[size_t(q)] + st - 1) / st : 0;
    start[size_t(q)] = (first[size_t(q)] + s.pad) / st;
  }
  for (i64 c = 0; c < s.C; ++c) {
    i64 row_phase = s.pad % st, row = s.pad / st;  // padded row h + pad = row * st + row_phase
    for (i64 h = 0; h < s.H; ++h) {
      const float* in = x + (c * s.H + h) * s.W;
      for (i64 q = 0; row_phase < s.R && q < phases; ++q) {  // (a row phase no tap reads is skipped)
        float* d = dst + ((row_phase * st + q) * s.C + c) * plane + row * Ws + start[size_t(q)];
        const float* from = in + first[size_t(q)];
        const i64 n = count[size_t(q)];
        if (st == 2)  // (a constant stride: the compiler gathers with shuffles)
          for (i64 i = 0; i < n; ++i) d[i] = from[2 * i];
        else
          for (i64 i = 0; i < n; ++i) d[i] = from[i * st];
      }
      if (++row_phase == st) row_phase = 0, ++row;
    }
  }
}

// (blocks of the elements over the threads, each element's parts added in order: 8 chunks' dW of
// 128->256 3x3, 2.4M floats, were a twentieth of that layer's backward on one thread of two)
void sum_parts(float* out, const float* parts, i64 count, i64 n) {
  constexpr i64 kBlock = 4096;
  const i64 blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(threads_over(4.0 * count * n, blocks)) schedule(static)
  for (i64 blk = 0; blk < blocks; ++blk) {
    const i64 i0 = blk * kBlock, i1 = std::min(n, i0 + kBlock);
    std::fill(out + i0, out + i1, 0.0f);
    for (i64 p = 0; p < count; ++p)
      for (i64 i = i0; i < i1; ++i) out[i] += parts[p * n + i];
  }
}

// db[k] = sum over n, then j < row_length, of rows[(n*K + k)*row_length + j], in double: the channels in one range a
// thread, each thread's images read in order (its part of each image's rows contiguous), a sum per channel. (Blocks of
// 8 channels over the threads, each block's rows a strip of every image, were bound by memory's latency: 16% of a 1x1
// 224->672 layer's dW on 3 x 3 at batch 128, AVX-512; 9% after.)
static void sum_rows_by_channel(float* db, const float* rows, i64 N, i64 K, i64 row_length) {
  const int nt = threads_over(double(N) * K * row_length, (K + 7) / 8);
  const i64 channels_per_thread = (K + nt - 1) / nt;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int t = 0; t < nt; ++t) {
    const i64 k0 = t * channels_per_thread, k1 = std::min(K, k0 + channels_per_thread);
    std::vector<double> sums(size_t(std::max<i64>(0, k1 - k0)));
    for (i64 n = 0; n < N; ++n)
      for (i64 k = k0; k < k1; ++k) {
        const float* row = rows + (n * K + k) * row_length;
        double sum = sums[size_t(k - k0)];
        for (i64 j = 0; j < row_length; ++j) sum += row[j];
        sums[size_t(k - k0)] = sum;
      }
    for (i64 k = k0; k < k1; ++k) db[k] = float(sums[size_t(k - k0)]);
  }
}

void sum_bias_lanes(float* db, const float* lanes, i64 N, i64 K) { sum_rows_by_channel(db, lanes, N, K, 16); }

void bias_grad(float* db, const float* dy, i64 N, i64 K, i64 P) {
  if (bias_from_dy(P)) return sum_rows_by_channel(db, dy, N, K, P);
  std::vector<float> lanes(size_t(N) * K * 16);
#pragma omp parallel for num_threads(threads_for(double(N) * K * P)) schedule(static)
  for (i64 row = 0; row < N * K; ++row) row_lanes(lanes.data() + row * 16, dy + row * P, P);
  sum_bias_lanes(db, lanes.data(), N, K);
}

bool pooled_dconv_chunk(float* kl, float* lk, i64 width, float* lanes, const float* dy, const std::int32_t* argmax,
                        const ConvShape& s, i64 pool_k, i64 n0, i64 n1, const std::int32_t* index, i64 Pr) {
  const i64 K = s.K, P = s.P(), Hq = s.Ho / pool_k, Wq = s.Wo / pool_k, pooled = K * Hq * Wq;
  const i64 L = (n1 - n0) * Pr, Kp = (K + width - 1) / width * width;
  if (lk) std::fill(lk, lk + L * Kp, 0.0f);
  std::fill(kl, kl + K * L, 0.0f);
  bool missed = false;
  for (i64 n = n0; n < n1; ++n)
    for (i64 kk = 0; kk < K; ++kk) {
      const i64 plane = n * pooled + kk * Hq * Wq;
      float* row = kl + kk * L + (n - n0) * Pr;
      float* column = lk ? lk + (kk / width) * L * width + (n - n0) * Pr * width + kk % width : nullptr;
      for (i64 q = 0; q < Hq * Wq; ++q) {  // branch-free and bounded, as max_pool2d_backward_planes
        const std::int32_t a = argmax[plane + q], u = a >= 0 && a < P ? index[a] : -1;
        missed |= a >= 0 && u < 0;
        const bool open = u >= 0;
        row[open ? u : 0] += open ? dy[plane + q] : 0.0f;
        if (column) column[(open ? u : 0) * width] += open ? dy[plane + q] : 0.0f;
      }
      row_lanes(lanes + (n * K + kk) * 16, row, Pr);
    }
  return !missed;
}

std::pair<i64, i64> taps_inside(const ConvShape& s, i64 o, i64 in, i64 k) {
  const i64 start = o * s.stride - s.pad, first = std::max<i64>(0, -start);
  return {first, std::max(first, std::min(k, in - start))};
}

double fraction_inside(const ConvShape& s) {
  auto inside = [&](i64 out, i64 in, i64 k) {  // taps inside the image, over a row or column of outputs
    i64 n = 0;
    for (i64 o = 0; o < out; ++o) {
      const auto taps = taps_inside(s, o, in, k);
      n += taps.second - taps.first;
    }
    return n;
  };
  return double(inside(s.Ho, s.H, s.R)) * double(inside(s.Wo, s.W, s.S)) / (double(s.P()) * double(s.R * s.S));
}

bool skips_padding(const ConvShape& s) { return s.pad > 0 && fraction_inside(s) <= 0.7; }

// x read in place as the product's B and y written in place, where the panels packed 12-pixel
// panels and transposed their result into y. An image's pixels go in whole panels of the products'
// NR (tile_columns: 32 on AVX-512, 16 AVX2), or in one vector where that holds them (tile_product's
// narrow tile), which may hold at most kPointwisePanelPixels percent of its P pixels; and at most
// kPointwiseChannels channels in (the forward's input channels, dx's output ones). Forward, measured against the panels
// on a 2-core AMD EPYC whose AVX-512 runs at AVX2's rate (AVX-512 / AVX2, one thread): 48->64 on 13 x 13 at batch 128
// 0.67-0.77x / 0.59x the time, 256->64 on 8 x 8 0.80-0.89x / 0.86x, 64->128 on 16 x 16 at batch 32 0.91-0.94x /
// 0.82-0.96x, 40->40 on 28 x 28 at batch 8 0.63x; but 256->512 on 4 x 4 (panels of 32 for 16 pixels on AVX-512, before
// the narrow tile) 1.83-1.90x, and 512 channels in 1.16-1.33x (on 7 x 7 and 14 x 14; packing B too was no faster). With
// the narrow tile, 256->256 on 4 x 4 at batch 128 (AVX-512) 0.89x the panels' time, its backward (dx by this product)
// 0.93x; but a last panel of one vector holding 4 pixels (256->64 on 6 x 6, batch 1-8) took 1.3-1.5x, so this rule
// counts the narrow tile only for images of at most one vector.
constexpr i64 kPointwisePanelPixels = 135;  // percent
bool pointwise_product_fits(i64 C, i64 P) {
  const i64 NR = active_isa().tile_columns, VL = active_isa().vector_floats;
  const i64 columns = P <= VL ? VL : (P + NR - 1) / NR * NR;  // (an image of one vector: the narrow tile)
  return C <= kPointwiseChannels && 100 * columns <= kPointwisePanelPixels * P;
}

// The inner products' sums are added across their lanes once per unit (24 sums of KB x NB
// channels), so they pay where a unit's run along the pixels is long: whole vectors of pixels (a
// row not a multiple of the vector misaligns every load after it), at least 4 an image, 64 in the
// batch. Measured against the panels' dw (transposes, then a GEMM) on a 2-core AMD EPYC (Zen 4),
// AVX-512, ms at one / two threads: 64->128 on 16 x 16 at batch 32 1.49-1.62 against 1.83-2.01
// (0.8x), 0.73 against 0.88; at batch 128 8.1 against 9.5 / 4.3 against 5.0; 256->64 on 8 x 8 at
// batch 128 3.6 against 4.3 / 2.0 against 2.0; 64->64 on 32 x 32 at batch 8 0.77 against 1.02 /
// 0.49 against 0.53. Not taken: one image of 256 pixels (0.092 against 0.062 on one thread), 7 x 7
// (1.5x the time), 14 x 14 (196 pixels: 1.03-1.06x), 4 x 4 (one vector an image: 1.5-1.9x). And at most
// 16,384 weights (128 x 128): between its spans of images each unit stores its sums, 64 bytes a
// weight, 1 MB for 16,384 (L2's size), and wider layers went the other way, one thread / two, batch
// 32: 128->256 on 8 x 8 1.06x / 1.16x the panels' time, 256->256 on 16 x 16 1.05x / 1.06x, 512->128
// on 28 x 28 1.13x / 0.99x, 1024->256 on 16 x 16 (batch 16) 1.9x / 2.9x; at 16,384, 128->128 on
// 16 x 16 0.95x / 0.93x, 64->256 0.86x / 0.86x, 256->64 on 8 x 8 0.92x / 1.0x, 128->128 on 32 x 32
// 0.92x / 1.14x. On AVX2 its 2 x 5 tile (16 registers) took 1.1-2.3x the panels' time: none there.
constexpr i64 kPointwiseWeightGradWeights = 16384;
bool pointwise_weight_grad_takes(const ConvShape& s, i64 N) {
  const i64 VL = active_isa().vector_floats, P = s.P();
  return active_isa().pointwise_weight_grad && P % VL == 0 && P >= 4 * VL && N * P >= 64 * VL &&
         s.K * s.C <= kPointwiseWeightGradWeights;
}

void input_grad(float* dx, const float* x, const float* w, const float* dy, const ConvShape& s, i64 N) {
  if (!pointwise(s)) return active_isa().panels_backward_plain(dx, nullptr, nullptr, x, w, dy, s, N);
  const i64 C = s.C, K = s.K, P = s.P(), image = C * s.H * s.W, st = s.stride;
  if (st == 1 && pointwise_product_fits(K, P))  // dx_n = w^T dy_n, w read transposed
    return active_isa().pointwise_forward(dx, dy, w, 1, C, nullptr, N, K, C, P);
  if (N == 1 && st == 1)  // one image: its GEMM over the threads (each element's sum the same)
    return sgemm_parallel(true, false, C, P, K, w, C, dy, P, dx, P, false);
  // Images of few pixels, unstrided: in groups whose pixels side by side make about kGroupColumns
  // columns, one product a group (dy's rows copied side by side, dx's copied back; each element's
  // sum the same). One product an image of 16 pixels filled half of AVX-512's 32 columns and packed
  // all the weights for it. Backward (dw through the panels) against one product an image, AVX-512,
  // batch 32, 1 / 2 threads: 128->512 on 4 x 4 0.67x / 0.65x the time (batch 128 0.69x / 0.72x),
  // 256->64 on 6 x 6 0.76x / 0.87x, 64->300 on 7 x 7 0.89x / 1.02x. (256->256 on 4 x 4, 0.63x before
  // the pointwise product took images of one vector, now goes there.)
  constexpr i64 kGroupColumns = 256;
  const i64 group = st == 1 ? std::min(std::max<i64>(1, kGroupColumns / P), (N + 1) / 2) : 1;
  if (group > 1) {
    const int nt = threads_over(double(N) * C * K * P, (N + group - 1) / group);
    // (the groups in whole rounds over the threads, near-equal: 5 groups of 28 images on 2 threads, 1x1 224->672 on
    // 3 x 3 at batch 128, left one thread idle for a fifth of the product's time)
    const i64 groups = std::min(N, round_up((N + group - 1) / group, nt)), most = (N + groups - 1) / groups;
    ScratchFloats scratch(size_t(nt) * (K + C) * most * P);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 g = 0; g < groups; ++g) {
      const i64 n0 = g * N / groups, n1 = (g + 1) * N / groups, cols = (n1 - n0) * P;
      float* dys = scratch.get() + size_t(omp_get_thread_num()) * (K + C) * most * P;  // [K][cols]
      float* dxs = dys + K * cols;                                                     // [C][cols]
      for (i64 n = n0; n < n1; ++n)
        for (i64 k = 0; k < K; ++k) std::memcpy(dys + k * cols + (n - n0) * P, dy + (n * K + k) * P, P * sizeof(float));
      sgemm(true, false, C, cols, K, w, C, dys, cols, dxs, cols, false);
      for (i64 n = n0; n < n1; ++n)
        for (i64 c = 0; c < C; ++c) std::memcpy(dx + (n * C + c) * P, dxs + c * cols + (n - n0) * P, P * sizeof(float));
    }
    return;
  }
  const int nt = threads_over(double(N) * C * K * P, N);
  ScratchFloats scratch(st > 1 ? size_t(nt) * C * P : 0);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* dxn = dx + n * image;
    float* out = st > 1 ? scratch.get() + size_t(omp_get_thread_num()) * C * P : dxn;  // [C, P]
    sgemm(true, false, C, P, K, w, C, dy + n * K * P, P, out, P, false);               // w: [K, C]
    if (st == 1) continue;
    std::fill(dxn, dxn + image, 0.0f);
    for (i64 c = 0; c < C; ++c)
      for (i64 oh = 0; oh < s.Ho; ++oh)
        for (i64 ow = 0; ow < s.Wo; ++ow) dxn[(c * s.H + oh * st) * s.W + ow * st] = out[c * P + oh * s.Wo + ow];
  }
}

void pool_whole(float* y, std::int32_t* argmax, const float* conv, const ConvShape& s, i64 N, i64 pool_k) {
  const i64 pooled = s.K * (s.Ho / pool_k) * (s.Wo / pool_k);
  std::unique_ptr<std::int32_t[]> unwanted(argmax ? nullptr : new std::int32_t[size_t(N) * pooled]);
  max_pool2d_forward(y, argmax ? argmax : unwanted.get(), conv, N, s.K, s.Ho, s.Wo, pool_k, true);
}

const float* whole_dconv(std::unique_ptr<float[]>& keep, const float* dy, const std::int32_t* argmax,
                         const ConvShape& s, i64 N, i64 pool_k) {
  keep.reset(new float[size_t(N) * s.K * s.P()]);
  max_pool2d_backward(keep.get(), argmax, dy, N, s.K, s.Ho, s.Wo, s.Ho / pool_k, s.Wo / pool_k);
  return keep.get();
}

bool tap_rows_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                           const ConvShape& s, i64 N, i64 pool_k) {
  const IsaKernels& isa = active_isa();
  if (s.stride == 1 && s.R * s.S == 1) return false;
  if (pool_k == 0) return isa.tap_rows_forward(y, x, w, b, s, N);
  std::unique_ptr<float[]> conv(new float[size_t(N) * s.K * s.P()]);
  if (!isa.tap_rows_forward(conv.get(), x, w, b, s, N)) return false;
  pool_whole(y, argmax, conv.get(), s, N, pool_k);
  return true;
}

bool tap_rows_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                       const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  const IsaKernels& isa = active_isa();
  if (s.C > kTapRowsChannels) return false;
  std::unique_ptr<float[]> dconv;
  if (pool_k > 0) dy = whole_dconv(dconv, dy, argmax, s, N, pool_k);
  if (!isa.tap_rows_weight_grad(dw, db, x, dy, s, N)) return false;
  if (dx) input_grad(dx, x, w, dy, s, N);
  return true;
}

}  // namespace cnnfast
