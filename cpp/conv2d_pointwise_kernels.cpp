// conv2d's pointwise path (a 1x1 convolution at stride 1, no padding), forward, compiled once per
// instruction set. Image by image it is one matrix product, y_n[K, P] = w[K, C] x_n[C, P] + b: x_n's
// rows are the product's B as they lie (NR pixels of each of the C rows, P apart), w is packed once
// into panels of MR output channels, and each MR x NR tile of y is written in place, its sums
// started from the bias; a unit of NR pixels across two images is staged (its B copied out, each tile
// copied into y once made). No im2col, no transposition into y: the panels' forward packed each
// 12-pixel panel from x and transposed its [pixels, K] result into y (the rule and what it measured:
// pointwise_product_fits, conv2d_common.cpp, and pointwise_accepts, conv2d.cpp). The same product gives a 1x1 layer's
// input gradient, dx_n = w^T dy_n. On AVX-512 its weight gradient too: inner products along the pixels (below).
//
// Every output is one tile_product's sums, or one unit's sums of the weight gradient, whatever the
// thread split: results do not depend on the thread count.
#include <algorithm>
#include <utility>

#include "conv2d_common.hpp"
#include "isa_target.hpp"
#include "parallel.hpp"

#if defined(CNNFAST_ISA_AVX512) || defined(CNNFAST_ISA_AVX2)
#include <immintrin.h>
#endif

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

#include "vec_impl.hpp"
#include "conv2d_loops_impl.hpp"  // for_each_over, copy_row
#include "tile_product_impl.hpp"  // VL, MR, NV, NR, tile_product

}  // namespace

// x: [N, C, P], w: [K, C] (w[k][c] at w[k*out_stride + c*in_stride]: [K, C] itself, or a [C, K]
// array read transposed, as the input gradient's w^T), b: [K] (may be null) -> y: [N, K, P], C at most
// kPointwiseChannels (the products' depth in one block: blocks of 128 channels on AVX-512, a B panel
// of 16 KB, took 1.37x the time on 192->64 on 16 x 16 at batch 32). Work goes over the threads in
// units of NR pixels of the batch (all K channels).
void pointwise_forward(float* y, const float* x, const float* w, i64 out_stride, i64 in_stride, const float* b, i64 N,
                       i64 C, i64 K, i64 P) {
  const i64 Kp = (K + MR - 1) / MR * MR;
  ScratchFloats packed(size_t(Kp) * C + size_t(Kp));  // [Kp / MR][C][MR], then the bias [Kp]
  float* wp = packed.get();
  float* bias = wp + Kp * C;
  for (i64 k0 = 0; k0 < Kp; k0 += MR)
    for (i64 c = 0; c < C; ++c)
      for (i64 i = 0; i < MR; ++i)
        wp[k0 * C + c * MR + i] = k0 + i < K ? w[(k0 + i) * out_stride + c * in_stride] : 0.0f;
  for (i64 k = 0; k < Kp; ++k) bias[k] = b && k < K ? b[k] : 0.0f;

  // units of NR consecutive pixels of the batch's N * P, the images' side by side: one within an image reads x and
  // writes y in place; one across images (or the batch's last, short) is staged. (A unit an image's NR pixels left
  // the last panel of each image part empty: 49 pixels took two panels of AVX-512's 32.)
  const i64 total = N * P, units = (total + NR - 1) / NR;
  const int nt = threads_over(double(N) * K * C * P, units);
  // a thread's staging: a staged unit's B ([C][NR], zero-padded) and a tile's sums ([MR][NR])
  const size_t stage = lines(size_t(C) * NR) + size_t(MR) * NR;
  ScratchFloats scratch(size_t(nt) * stage);
  for_each_over(units, nt, [&](i64 u) {
    const i64 q0 = u * NR, cols = std::min<i64>(NR, total - q0), n0 = q0 / P, p0 = q0 % P;
    float* own = scratch.get() + size_t(omp_get_thread_num()) * stage;
    float* sums = own + lines(size_t(C) * NR);  // [MR][width]: a tile not written in place
    // (a last unit of at most one vector of pixels: a tile one vector wide)
    const i64 width = cols <= VL ? VL : NR;
    const bool in_place = cols == width && p0 + cols <= P;
    // fn(n, p, j, len) for each image's run of the unit's pixels: pixels p.. of image n, the unit's j..
    auto runs = [&](auto&& fn) {
      for (i64 j = 0; j < cols;) {
        const i64 q = q0 + j, len = std::min(cols - j, P - q % P);
        fn(q / P, q % P, j, len);
        j += len;
      }
    };
    const float* bp = x + n0 * C * P + p0;
    if (!in_place) {
      runs([&](i64 n, i64 p, i64 j, i64 len) {
        for (i64 c = 0; c < C; ++c) copy_row(own + c * width + j, x + (n * C + c) * P + p, len);
      });
      for (i64 c = 0; c < C; ++c) std::fill(own + c * width + cols, own + (c + 1) * width, 0.0f);
      bp = own;
    }
    const i64 ldb = in_place ? P : width;
    float* yn = y + n0 * K * P + p0;
    auto whole = [&](i64 k0) { return in_place && k0 + MR <= K; };
    const auto product = width == VL ? tile_product<1> : tile_product<NV>;
    for (i64 k0 = 0; k0 < Kp; k0 += MR) {
      if (whole(k0)) {
        product(C, wp + k0 * C, bp, ldb, yn + k0 * P, P, false, bias + k0);
        continue;
      }
      // (a staged tile copied out while it is in L1: all of a 96->576 unit's sums staged first were 72 KB)
      product(C, wp + k0 * C, bp, ldb, sums, width, false, bias + k0);
      runs([&](i64 n, i64 p, i64 j, i64 len) {
        for (i64 k = k0; k < std::min(K, k0 + MR); ++k)
          copy_row(y + (n * K + k) * P + p, sums + (k - k0) * width + j, len);
      });
    }
  });
}

#if defined(CNNFAST_ISA_AVX512)
// ---- the weight gradient (AVX-512): inner products along the pixels ----
// dw[k][c] = sum over images n and pixels p of dy_n[k][p] x_n[c][p]. The rows of both operands lie
// along the pixels, so the sums run along them too, each in VL interleaved lanes (one vector),
// added across its lanes once at the end: nothing is transposed or packed. (The panels' GEMM lays x
// out channels-last and dy pixel-major first; measured against it: pointwise_weight_grad_takes,
// conv2d_common.cpp.) A unit is KB channels of dy by nb <= NB channels of x, its KB*nb sums in
// registers over a span of pixels, each vector of dy and of x loaded once: 24 multiply-adds per 10
// loads in 29 of the 32 registers. (AVX2's 16 registers hold a 2 x 5 tile, 10 per 7 loads: 1.1-2.3x
// the panels' time there, which serve instead.)
constexpr int KB = 4, NB = 6;

namespace {

// The sums acc[i][j] (from 0 on the first span, else from sums[i*nb + j]) += the lanes of d[i][..] *
// c[j][..] over `images` images (the rows of the next image dy_image and x_image floats further) of
// `length` pixels each (whole vectors: pointwise_weight_grad_takes); then stored back to sums, or
// after the last span added across their lanes into out[i*ldo + j] for the kb rows that count
template <int nb>
void lane_products(vec* sums, bool first, bool last, float* out, i64 ldo, i64 kb, const float* const* d,
                   const float* const* c, i64 dy_image, i64 x_image, i64 images, i64 length) {
  vec acc[KB][nb];
#pragma GCC unroll 8
  for (int i = 0; i < KB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < nb; ++j) acc[i][j] = first ? vec{} : sums[i * nb + j];
  for (i64 n = 0; n < images; ++n) {
    const float* dn[KB];
    const float* cn[nb];
#pragma GCC unroll 8
    for (int i = 0; i < KB; ++i) dn[i] = d[i] + n * dy_image;
#pragma GCC unroll 8
    for (int j = 0; j < nb; ++j) cn[j] = c[j] + n * x_image;
    for (i64 p = 0; p < length; p += VL) {
      vec dv[KB];
#pragma GCC unroll 8
      for (int i = 0; i < KB; ++i) dv[i] = load(dn[i] + p);
#pragma GCC unroll 8
      for (int j = 0; j < nb; ++j) {
        const vec cv = load(cn[j] + p);
#pragma GCC unroll 8
        for (int i = 0; i < KB; ++i) acc[i][j] += dv[i] * cv;
      }
    }
  }
  if (!last) {
#pragma GCC unroll 8
    for (int i = 0; i < KB; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < nb; ++j) sums[i * nb + j] = acc[i][j];
    return;
  }
#pragma GCC unroll 8
  for (int i = 0; i < KB; ++i)  // (every index a constant: acc stays in registers)
#pragma GCC unroll 8
    for (int j = 0; j < nb; ++j) {
      float total = 0.0f;
#pragma GCC unroll 16
      for (int l = 0; l < VL; ++l) total += acc[i][j][l];
      if (i < kb) out[i * ldo + j] = total;
    }
}

template <int... NBS>
void lane_products_n(int nb, vec* sums, bool first, bool last, float* out, i64 ldo, i64 kb, const float* const* d,
                     const float* const* c, i64 dy_image, i64 x_image, i64 images, i64 length,
                     std::integer_sequence<int, NBS...>) {
  // (the tile for nb = 1..NB channels of x, chosen at run time)
  ((nb == NBS + 1 ? lane_products<NBS + 1>(sums, first, last, out, ldo, kb, d, c, dy_image, x_image, images, length)
                  : void()),
   ...);
}

}  // namespace

// x: [N, C, P], dy: [N, K, P] -> dw: [K, C] (a 1x1 layer's weights) and db: [K] (may be null). The
// pixels go in spans, whole images or one image's consecutive pixels, holding about kSpanBytes of dy
// and x, which every unit passes over in turn (spans of 64 KB took 1.5x the time of 1 MB: more units'
// sums stored and loaded between spans; 2 MB and 8 MB no better). Each unit's sums run span by span,
// in order, and the units go over the threads: the same results on any number of threads. The bias
// gradient as everywhere (row_lanes, sum_bias_lanes), each row's lanes taken by the thread that has
// just read it.
void pointwise_weight_grad(float* dw, float* db, const float* x, const float* dy, i64 N, i64 C, i64 K, i64 P) {
  constexpr i64 kSpanBytes = 1024 << 10;
  const i64 image_bytes = (K + C) * P * i64(sizeof(float));
  const i64 images = std::max<i64>(1, kSpanBytes / image_bytes);
  const i64 pixels = image_bytes <= kSpanBytes ? P : std::max<i64>(VL, kSpanBytes / ((K + C) * 4) / VL * VL);
  const i64 pieces = (P + pixels - 1) / pixels;  // an image's spans
  const i64 spans = pixels == P ? (N + images - 1) / images : N * pieces;
  const i64 blocks_k = (K + KB - 1) / KB, blocks_c = (C + NB - 1) / NB, units = blocks_k * blocks_c;
  const int nt = threads_over(double(N) * K * C * P, units);
  // (a unit's sums between spans: none with a single span)
  ScratchFloats sums(spans > 1 ? size_t(units) * KB * NB * VL : 0), lanes(db ? size_t(N) * K * 16 : 0);
  auto unit_of = [&](i64 u, i64 span) {
    const i64 k0 = u / blocks_c * KB, kb = std::min<i64>(KB, K - k0), j = u % blocks_c;
    const i64 c0 = C * j / blocks_c, nb = C * (j + 1) / blocks_c - c0;  // (blocks of near-equal size <= NB)
    const i64 n0 = pixels == P ? span * images : span / pieces, n1 = pixels == P ? std::min(N, n0 + images) : n0 + 1;
    const i64 p0 = pixels == P ? 0 : span % pieces * pixels, p1 = std::min(P, p0 + pixels);
    const float* d[KB];
    const float* c[NB];
    for (i64 i = 0; i < KB; ++i) d[i] = dy + (n0 * K + k0 + std::min(i, kb - 1)) * P + p0;  // (spare rows repeat one)
    for (i64 q = 0; q < nb; ++q) c[q] = x + (n0 * C + c0 + q) * P + p0;
    vec* between = spans > 1 ? reinterpret_cast<vec*>(sums.get()) + u * KB * NB : nullptr;
    lane_products_n(int(nb), between, span == 0, span == spans - 1, dw + k0 * C + c0, C, kb, d, c, K * P, C * P,
                    n1 - n0, p1 - p0, std::make_integer_sequence<int, NB>{});
    if (db && j == 0 && p0 == 0)  // (each row's lanes once, whole, on its first span)
      for (i64 n = n0; n < n1; ++n)
        for (i64 k = k0; k < k0 + kb; ++k) row_lanes(lanes.get() + (n * K + k) * 16, dy + (n * K + k) * P, P);
  };
#pragma omp parallel num_threads(nt)
  {
    const i64 t = omp_get_thread_num(), team = omp_get_num_threads();
    const i64 u0 = units * t / team, u1 = units * (t + 1) / team;
    for (i64 span = 0; span < spans; ++span)
      for (i64 u = u0; u < u1; ++u) unit_of(u, span);
  }
  if (db) sum_bias_lanes(db, lanes.get(), N, K);
}
#endif  // CNNFAST_ISA_AVX512

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
