// augment: data augmentation for training, one bilinear sampling pass per image.
//
// Each output pixel (i, j) (row, column) of image n takes the value of its source image at
//   sx = a*j + b*i + c + dx[i, j],   sy = d*j + e*i + f + dy[i, j]
// with (a, b, c, d, e, f) the image's inverse affine map (output pixel -> source position, in
// pixels) and (dx, dy) its elastic displacement field (Simard et al. 2003: uniform noise in
// [-1, 1) smoothed by a Gaussian of sigma, scaled by alpha), read by bilinear interpolation
// with `fill` outside the image. Every channel of an image gets the same transform.
//
// The random draws are counter-based (dropout_rng.hpp's SplitMix64 finaliser): image n of the
// batch drawn with (seed, step) reads only mix(key, k), key = mix(mix(seed, step), n), for its
// draws k = 0, 1, ..., so the result depends on (seed, step, n) alone, never on the thread count
// or on the rest of the batch. One image is handled by one thread, start to end.
#include <algorithm>
#include <cmath>
#include <vector>

#include "dropout_rng.hpp"
#include "gemm.hpp"
#include "isa.hpp"
#include "kernels.hpp"
#include "parallel.hpp"

namespace cnnfast {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr int kFieldDraw = 3;  // the field's draws start after the affine ones (k = 0, 1, 2)

// Two uniforms in [0, 1) from one draw, each a multiple of 2^-24 (exact in float32)
inline void uniforms(std::uint64_t key, std::uint64_t k, float& hi, float& lo) {
  const std::uint64_t bits = dropout_mix(key, k);
  hi = float(bits >> 40) * 0x1p-24f;
  lo = float((bits >> 16) & 0xFFFFFFu) * 0x1p-24f;
}

inline std::uint64_t image_key(std::uint64_t seed, std::uint64_t step, i64 n) {
  return dropout_mix(dropout_mix(seed, step), std::uint64_t(n));
}

// The inverse affine map of one image, drawn from draws 0..2 of `key`: rotation, scale, shear
// and translation about the image centre. Forward: p' = A (p - centre) + centre + t, with
// A = R(theta) Shear(phi) s; stored is its inverse, p = A^-1 (p' - centre - t) + centre.
void draw_affine(float* m, std::uint64_t key, i64 H, i64 W, const AugmentRanges& r) {
  float u_rot, u_scale, u_shear, u_tx, u_ty, unused;
  uniforms(key, 0, u_rot, u_scale);
  uniforms(key, 1, u_shear, u_tx);
  uniforms(key, 2, u_ty, unused);
  const double theta = double(r.rotation) * (2.0 * u_rot - 1.0) * (kPi / 180.0);
  const double s = double(r.scale_min) + (double(r.scale_max) - double(r.scale_min)) * u_scale;
  const double shear = std::tan(double(r.shear) * (2.0 * u_shear - 1.0) * (kPi / 180.0));
  const double tx = double(r.translate) * double(W) * (2.0 * u_tx - 1.0);
  const double ty = double(r.translate) * double(H) * (2.0 * u_ty - 1.0);
  const double co = std::cos(theta), si = std::sin(theta);
  // A^-1 = Shear(-phi) R(-theta) / s, R(-theta) = [[co, si], [-si, co]], Shear(-phi) = [[1, -shear], [0, 1]]
  const double m00 = (co + shear * si) / s, m01 = (si - shear * co) / s;
  const double m10 = -si / s, m11 = co / s;
  const double cx = 0.5 * double(W - 1), cy = 0.5 * double(H - 1);
  m[0] = float(m00);
  m[1] = float(m01);
  m[2] = float(cx - (m00 * (cx + tx) + m01 * (cy + ty)));
  m[3] = float(m10);
  m[4] = float(m11);
  m[5] = float(cy - (m10 * (cx + tx) + m11 * (cy + ty)));
}

// The Gaussian's taps g[0..2*reach], g[reach + o] = exp(-o^2 / (2 sigma^2)) / sum, normalised over
// the whole kernel (radius int(4 sigma + 0.5), as scipy.ndimage.gaussian_filter), kept only as far
// as an image of `extent` pixels can reach (|o| < extent).
std::vector<float> gaussian_taps(float sigma, i64 extent, i64& reach) {
  const double sd = sigma;
  const i64 radius = i64(4.0 * sd + 0.5);
  reach = std::min(radius, std::max<i64>(extent - 1, 0));
  double sum = 0.0;
  for (i64 o = -radius; o <= radius; ++o) sum += std::exp(-double(o) * double(o) / (2.0 * sd * sd));
  std::vector<float> taps(std::size_t(2 * reach + 1));
  for (i64 o = -reach; o <= reach; ++o)
    taps[std::size_t(o + reach)] = float(std::exp(-double(o) * double(o) / (2.0 * sd * sd)) / sum);
  return taps;
}

// Images up to this side smooth their fields with two small matrix products by dense [side, side]
// Gaussian matrices (the ISA's augment_smooth on AVX-512, sgemm elsewhere); larger ones with
// loops over the Gaussian's band.
constexpr i64 kDenseSmoothing = 64;

// What every image's field shares: the taps, and for small images the dense matrices
// gw [W, W] (gw[k][j] = g[j - k]), the same with rows padded to Wp = W rounded up to 16 (for the
// ISA's augment_smooth), and alpha * gh [H, H].
struct Smoothing {
  i64 H = 0, W = 0, Wp = 0, reach = 0;
  float alpha = 0.0f;
  bool dense = false;
  std::vector<float> taps, gw, gw_padded, gh;
  Smoothing(i64 H_, i64 W_, float sigma, float alpha_) : H(H_), W(W_), alpha(alpha_) {
    taps = gaussian_taps(sigma, std::max(H, W), reach);
    dense = std::max(H, W) <= kDenseSmoothing;
    if (!dense) return;
    gw.assign(std::size_t(W * W), 0.0f);
    gh.assign(std::size_t(H * H), 0.0f);
    for (i64 k = 0; k < W; ++k)
      for (i64 j = std::max<i64>(0, k - reach); j <= std::min(W - 1, k + reach); ++j)
        gw[k * W + j] = taps[j - k + reach];
    for (i64 i = 0; i < H; ++i)
      for (i64 k = std::max<i64>(0, i - reach); k <= std::min(H - 1, i + reach); ++k)
        gh[i * H + k] = alpha * taps[i - k + reach];
    Wp = (W + 15) / 16 * 16;
    gw_padded.assign(std::size_t(W * Wp), 0.0f);
    for (i64 k = 0; k < W; ++k) std::copy(gw.begin() + k * W, gw.begin() + (k + 1) * W, gw_padded.begin() + k * Wp);
  }
  // scratch floats draw_field needs beside its [H, 2, W] output
  i64 scratch() const { return 2 * H * std::max(W, Wp); }
};

// One image's displacement field, laid out [H, 2, W] (row i: dx of row i, then dy of row i),
// from draws kFieldDraw... of `key`: noise u in [-1, 1), its element e (in that layout) from draw
// kFieldDraw + e/2 (the high half for even e), smoothed along rows then along columns by the
// Gaussian (zero outside the image), times alpha. scratch: sm.scratch() floats.
void draw_field(float* field, float* scratch, std::uint64_t key, const Smoothing& sm) {
  const i64 H = sm.H, W = sm.W, P2 = 2 * H * W;
  float* noise = field;                                       // [H, 2, W] noise first, then the result
  float* rows = scratch;                                      // [H, 2, W]: the noise smoothed along rows
  active_isa().augment_noise(noise, H * W, key, kFieldDraw);  // augment_rows.cpp, per ISA
  if (sm.dense && active_isa().augment_smooth) {              // augment_rows.cpp (AVX-512)
    active_isa().augment_smooth(field, rows, sm.gw_padded.data(), sm.gh.data(), H, W);
    return;
  }
  if (sm.dense) {
    sgemm(false, false, 2 * H, W, W, noise, W, sm.gw.data(), W, rows, W, false);          // [2H, W] gw
    sgemm(false, false, H, 2 * W, H, sm.gh.data(), H, rows, 2 * W, field, 2 * W, false);  // alpha gh [H, 2W]
    return;
  }
  const float* taps = sm.taps.data();
  const i64 reach = sm.reach;
  std::fill(rows, rows + P2, 0.0f);
  for (i64 r = 0; r < 2 * H; ++r) {  // rows[r, j] = sum_k noise[r, k] g[j - k]
    float* out = rows + r * W;
    for (i64 k = 0; k < W; ++k) {
      const float v = noise[r * W + k];
      const i64 j0 = std::max<i64>(0, k - reach), j1 = std::min<i64>(W - 1, k + reach);
      const float* g = taps + (j0 - k + reach);
      for (i64 j = j0; j <= j1; ++j) out[j] += v * g[j - j0];
    }
  }
  for (i64 i = 0; i < H; ++i) {  // field[i, :] = alpha * sum_k g[i - k] rows[k, :] (both components)
    float* out = field + i * 2 * W;
    std::fill(out, out + 2 * W, 0.0f);
    const i64 k0 = std::max<i64>(0, i - reach), k1 = std::min<i64>(H - 1, i + reach);
    for (i64 k = k0; k <= k1; ++k) {
      const float gk = sm.alpha * taps[i - k + reach];
      const float* in = rows + k * 2 * W;
      for (i64 j = 0; j < 2 * W; ++j) out[j] += gk * in[j];
    }
  }
}

// One image (C planes of H x W) through the map m and the field (dx at field[i * stride + j],
// dy at field[i * stride + W + j]; null: none), a row at a time (augment_rows.cpp, per ISA)
void warp_image(float* y, const float* x, const float* m, const float* field, i64 stride, i64 C, i64 H, i64 W,
                float fill) {
  const auto warp_row = active_isa().augment_warp_row;
  for (i64 i = 0; i < H; ++i)
    warp_row(y, x, m, field ? field + i * stride : nullptr, field ? field + i * stride + W : nullptr, i, C, H, W, fill);
}

// About how many operations one image costs (for threads_for)
double image_work(i64 C, i64 H, i64 W, bool elastic) {
  return double(H * W) * (10.0 * double(C) + (elastic ? 4.0 * double(std::min<i64>(std::max(H, W), 33)) + 10.0 : 0.0));
}

}  // namespace

// affine: [N, 6], field: [N, 2, H, W] (written only when ranges.alpha > 0)
void augment_draw(float* affine, float* field, i64 N, i64 H, i64 W, std::uint64_t seed, std::uint64_t step,
                  const AugmentRanges& ranges) {
  const bool elastic = ranges.alpha > 0.0f;
  const Smoothing sm = elastic ? Smoothing(H, W, ranges.sigma, ranges.alpha) : Smoothing(0, 0, 1.0f, 0.0f);
  const int nt = std::max(1, threads_for(double(N) * image_work(0, H, W, elastic)));
  const std::size_t per_thread = elastic ? std::size_t(2 * H * W + sm.scratch()) : 0;
  std::vector<float> scratch(std::size_t(nt) * per_thread);
  const i64 P = H * W;
#pragma omp parallel num_threads(nt)
  {
    float* mine = scratch.data() + std::size_t(omp_get_thread_num()) * per_thread;
#pragma omp for schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const std::uint64_t key = image_key(seed, step, n);
      draw_affine(affine + 6 * n, key, H, W, ranges);
      if (!elastic) continue;
      draw_field(mine, mine + 2 * P, key, sm);  // [H, 2, W] -> field[n]: [2, H, W]
      for (i64 i = 0; i < H; ++i)
        for (int comp = 0; comp < 2; ++comp)
          std::copy(mine + (2 * i + comp) * W, mine + (2 * i + comp + 1) * W, field + n * 2 * P + comp * P + i * W);
    }
  }
}

// x: [N, C, H, W], affine: [N, 6], field: [N, 2, H, W] or null -> y: [N, C, H, W]
void warp_bilinear(float* y, const float* x, const float* affine, const float* field, i64 N, i64 C, i64 H, i64 W,
                   float fill) {
  const i64 image = C * H * W, P = H * W;
  std::vector<float> rows(field ? std::size_t(N) * std::size_t(2 * P) : 0);  // each field as [H, 2, W]
  for (i64 n = 0; field && n < N; ++n)
    for (i64 i = 0; i < H; ++i)
      for (int comp = 0; comp < 2; ++comp)
        std::copy(field + n * 2 * P + comp * P + i * W, field + n * 2 * P + comp * P + (i + 1) * W,
                  rows.data() + n * 2 * P + (2 * i + comp) * W);
#pragma omp parallel for num_threads(std::max(1, threads_for(double(N) * image_work(C, H, W, false)))) schedule(static)
  for (i64 n = 0; n < N; ++n)
    warp_image(y + n * image, x + n * image, affine + 6 * n, field ? rows.data() + n * 2 * P : nullptr, 2 * W, C, H, W,
               fill);
}

// x: [N, C, H, W] -> y: [N, C, H, W]: warp_bilinear of augment_draw's maps and fields, without
// writing them to memory (each thread keeps one image's field in its scratch)
void augment_forward(float* y, const float* x, i64 N, i64 C, i64 H, i64 W, float fill, std::uint64_t seed,
                     std::uint64_t step, const AugmentRanges& ranges) {
  const bool elastic = ranges.alpha > 0.0f;
  const Smoothing sm = elastic ? Smoothing(H, W, ranges.sigma, ranges.alpha) : Smoothing(0, 0, 1.0f, 0.0f);
  const int nt = std::max(1, threads_for(double(N) * image_work(C, H, W, elastic)));
  const std::size_t per_thread = elastic ? std::size_t(2 * H * W + sm.scratch()) : 0;
  std::vector<float> scratch(std::size_t(nt) * per_thread);
  const i64 image = C * H * W;
#pragma omp parallel num_threads(nt)
  {
    float* field = elastic ? scratch.data() + std::size_t(omp_get_thread_num()) * per_thread : nullptr;
#pragma omp for schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const std::uint64_t key = image_key(seed, step, n);
      float m[6];
      draw_affine(m, key, H, W, ranges);
      if (elastic) draw_field(field, field + 2 * H * W, key, sm);
      warp_image(y + n * image, x + n * image, m, field, 2 * W, C, H, W, fill);
    }
  }
}

}  // namespace cnnfast
