// augment's inner loops, compiled once per instruction set (plain C++ written so that the
// compiler vectorises it: the noise's 64-bit hashes with AVX-512DQ, the sampling positions,
// neighbours and weights of a block of pixels, and the interpolation).
#include <algorithm>
#include <cmath>
#if defined(CNNFAST_ISA_AVX512) || defined(CNNFAST_ISA_AVX2)
#include <immintrin.h>
#endif

#include "dropout_rng.hpp"
#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

// noise[2g], noise[2g + 1] for g in [0, draws): the high and low 24 bits of draw first + g of
// `key`, each mapped to 2u - 1 in [-1, 1) (u a multiple of 2^-24 in [0, 1): exact in float32)
void augment_noise(float* noise, i64 draws, std::uint64_t key, std::uint64_t first) {
  for (i64 g = 0; g < draws; ++g) {
    const std::uint64_t bits = dropout_mix(key, first + std::uint64_t(g));
    noise[2 * g] = 2.0f * (float(std::int32_t(bits >> 40)) * 0x1p-24f) - 1.0f;
    noise[2 * g + 1] = 2.0f * (float(std::int32_t((bits >> 16) & 0xFFFFFFu)) * 0x1p-24f) - 1.0f;
  }
}

namespace {
constexpr int kBlock = 64;  // pixels of a row whose neighbours and weights are worked out at once
}  // namespace

// Row i of one image (C planes of H x W) through the map m (and the field's rows dx, dy, or null):
// see augment.cpp. Each neighbour outside the image reads `fill`; a sample at an integer position
// is the source pixel itself; a position outside (-1, W) x (-1, H), or not finite, gives `fill`.
template <bool kField>
void warp_row(float* y, const float* x, const float* m, const float* dx, const float* dy, i64 i, i64 C, i64 H, i64 W,
              float fill) {
  const i64 P = H * W;
  const float fw = float(W), fh = float(H);
  const float row_x = m[1] * float(i) + m[2], row_y = m[4] * float(i) + m[5];
  const float m0 = m[0], m3 = m[3];
  alignas(64) std::int32_t at00[kBlock], at01[kBlock], at10[kBlock], at11[kBlock];
  alignas(64) std::int32_t in00[kBlock], in01[kBlock], in10[kBlock], in11[kBlock], exact[kBlock];
  alignas(64) float wx[kBlock], wy[kBlock];
  const std::int32_t w32 = std::int32_t(W), h32 = std::int32_t(H);
  for (i64 j0 = 0; j0 < W; j0 += kBlock) {
    const int n = int(std::min<i64>(kBlock, W - j0));
    for (int b = 0; b < n; ++b) {
      const float j = float(std::int32_t(j0) + b);  // (int32: AVX2 converts no int64 to float)
      float sx = kField ? m0 * j + row_x + dx[j0 + b] : m0 * j + row_x;
      float sy = kField ? m3 * j + row_y + dy[j0 + b] : m3 * j + row_y;
      // (bitwise & rather than &&, so that the loop has no branches and vectorises)
      const bool valid = (sx > -1.0f) & (sx < fw) & (sy > -1.0f) & (sy < fh);
      sx = valid ? sx : -2.0f;  // -2: both neighbours outside
      sy = valid ? sy : -2.0f;
      const std::int32_t tx = std::int32_t(sx), ty = std::int32_t(sy);  // in (-2, 2^24): no overflow
      const std::int32_t x0 = tx - std::int32_t(float(tx) > sx), y0 = ty - std::int32_t(float(ty) > sy);
      const float fx = sx - float(x0), fy = sy - float(y0);
      const std::int32_t x1 = x0 + 1, y1 = y0 + 1;
      const std::int32_t ix0 = x0 >= 0, ix1 = (x1 >= 0) & (x1 < w32), iy0 = y0 >= 0, iy1 = (y1 >= 0) & (y1 < h32);
      const std::int32_t cx0 = std::min(std::max(x0, 0), w32 - 1), cx1 = std::min(std::max(x1, 0), w32 - 1);
      const std::int32_t cy0 = std::min(std::max(y0, 0), h32 - 1), cy1 = std::min(std::max(y1, 0), h32 - 1);
      at00[b] = cy0 * w32 + cx0;
      at01[b] = cy0 * w32 + cx1;
      at10[b] = cy1 * w32 + cx0;
      at11[b] = cy1 * w32 + cx1;
      in00[b] = iy0 & ix0;
      in01[b] = iy0 & ix1;
      in10[b] = iy1 & ix0;
      in11[b] = iy1 & ix1;
      exact[b] = (fx == 0.0f) & (fy == 0.0f);
      wx[b] = fx;
      wy[b] = fy;
    }
    for (i64 c = 0; c < C; ++c) {
      const float* plane = x + c * P;
      float* out = y + c * P + i * W + j0;
#if defined(CNNFAST_ISA_AVX512)  // gathers, 16 pixels at a time (GCC does not vectorise the loop below)
      const __m512 fills = _mm512_set1_ps(fill);
      for (int b = 0; b < n; b += 16) {
        const __mmask16 live = n - b >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - b)) - 1);
        const auto flag = [&](const std::int32_t* f) {
          const __m512i v = _mm512_maskz_load_epi32(live, f + b);
          return _mm512_test_epi32_mask(v, v);
        };
        const auto gather = [&](const std::int32_t* at, __mmask16 inside) {
          return _mm512_mask_i32gather_ps(fills, inside, _mm512_maskz_load_epi32(live, at + b), plane, 4);
        };
        const __m512 p00 = gather(at00, flag(in00)), p01 = gather(at01, flag(in01));
        const __m512 p10 = gather(at10, flag(in10)), p11 = gather(at11, flag(in11));
        const __m512 fx = _mm512_maskz_load_ps(live, wx + b), fy = _mm512_maskz_load_ps(live, wy + b);
        const __m512 top = _mm512_fmadd_ps(fx, _mm512_sub_ps(p01, p00), p00);
        const __m512 bottom = _mm512_fmadd_ps(fx, _mm512_sub_ps(p11, p10), p10);
        const __m512 r = _mm512_fmadd_ps(fy, _mm512_sub_ps(bottom, top), top);
        _mm512_mask_storeu_ps(out + b, live, _mm512_mask_blend_ps(flag(exact), r, p00));
      }
#else
      int b0 = 0;
#if defined(CNNFAST_ISA_AVX2)  // gathers, 8 pixels at a time, then the last few one by one
      const __m256 fills = _mm256_set1_ps(fill);
      const __m256i zero = _mm256_setzero_si256();
      for (; b0 + 8 <= n; b0 += 8) {
        const auto flag = [&](const std::int32_t* f) {
          return _mm256_castsi256_ps(
              _mm256_cmpgt_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(f + b0)), zero));
        };
        const auto gather = [&](const std::int32_t* at, __m256 inside) {
          return _mm256_mask_i32gather_ps(fills, plane, _mm256_load_si256(reinterpret_cast<const __m256i*>(at + b0)),
                                          inside, 4);
        };
        const __m256 p00 = gather(at00, flag(in00)), p01 = gather(at01, flag(in01));
        const __m256 p10 = gather(at10, flag(in10)), p11 = gather(at11, flag(in11));
        const __m256 fx = _mm256_load_ps(wx + b0), fy = _mm256_load_ps(wy + b0);
        const __m256 top = _mm256_fmadd_ps(fx, _mm256_sub_ps(p01, p00), p00);
        const __m256 bottom = _mm256_fmadd_ps(fx, _mm256_sub_ps(p11, p10), p10);
        const __m256 r = _mm256_fmadd_ps(fy, _mm256_sub_ps(bottom, top), top);
        _mm256_storeu_ps(out + b0, _mm256_blendv_ps(r, p00, flag(exact)));
      }
#endif
      for (int b = b0; b < n; ++b) {
        const float g00 = plane[at00[b]], g01 = plane[at01[b]], g10 = plane[at10[b]], g11 = plane[at11[b]];
        const float p00 = in00[b] ? g00 : fill, p01 = in01[b] ? g01 : fill;
        const float p10 = in10[b] ? g10 : fill, p11 = in11[b] ? g11 : fill;
        const float top = p00 + wx[b] * (p01 - p00), bottom = p10 + wx[b] * (p11 - p10);
        const float r = top + wy[b] * (bottom - top);
        out[b] = exact[b] ? p00 : r;
      }
#endif
    }
  }
}

#if defined(CNNFAST_ISA_AVX512)
namespace {

// augment_smooth for images NV vectors of 16 wide (W <= 16 NV): each output row in registers
template <int NV>
void smooth(float* field, float* rows, const float* gw_padded, const float* gh, i64 H, i64 W) {
  constexpr i64 Wp = 16 * NV;
  for (i64 r = 0; r < 2 * H; ++r) {  // rows[r, :] = noise[r, :] gw: the noise (in field) smoothed along rows
    __m512 acc[NV];
    for (int q = 0; q < NV; ++q) acc[q] = _mm512_setzero_ps();
    const float* u = field + r * W;
    for (i64 k = 0; k < W; ++k) {
      const __m512 v = _mm512_set1_ps(u[k]);
      for (int q = 0; q < NV; ++q) acc[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(gw_padded + k * Wp + 16 * q), acc[q]);
    }
    for (int q = 0; q < NV; ++q) _mm512_storeu_ps(rows + r * Wp + 16 * q, acc[q]);
  }
  const __mmask16 last = W % 16 ? __mmask16((1u << (W % 16)) - 1) : __mmask16(0xFFFF);
  for (i64 i = 0; i < H; ++i) {  // field[i, c, :] = sum_k (alpha gh)[i, k] rows[2k + c, :]
    __m512 acc[2 * NV];
    for (int q = 0; q < 2 * NV; ++q) acc[q] = _mm512_setzero_ps();
    for (i64 k = 0; k < H; ++k) {
      const float g = gh[i * H + k];
      if (g == 0.0f) continue;  // outside the Gaussian's band
      const __m512 gv = _mm512_set1_ps(g);
      for (int q = 0; q < 2 * NV; ++q)
        acc[q] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(rows + 2 * k * Wp + 16 * q), acc[q]);
    }
    for (int c = 0; c < 2; ++c)
      for (int q = 0; q < NV; ++q)
        _mm512_mask_storeu_ps(field + (2 * i + c) * W + 16 * q, q == NV - 1 ? last : __mmask16(0xFFFF),
                              acc[c * NV + q]);
  }
}

}  // namespace

// field: [H, 2, W], the noise in, its smoothed field out (see augment.cpp's draw_field); rows:
// [2H, Wp] scratch, Wp = W rounded up to 16; gw_padded: [W, Wp]; gh: [H, H]. W <= 64.
void augment_smooth(float* field, float* rows, const float* gw_padded, const float* gh, i64 H, i64 W) {
  switch ((W + 15) / 16) {
    case 1:
      return smooth<1>(field, rows, gw_padded, gh, H, W);
    case 2:
      return smooth<2>(field, rows, gw_padded, gh, H, W);
    case 3:
      return smooth<3>(field, rows, gw_padded, gh, H, W);
    default:
      return smooth<4>(field, rows, gw_padded, gh, H, W);
  }
}
#endif

void augment_warp_row(float* y, const float* x, const float* m, const float* dx, const float* dy, i64 i, i64 C, i64 H,
                      i64 W, float fill) {
  if (dx)
    warp_row<true>(y, x, m, dx, dy, i, C, H, W, fill);
  else
    warp_row<false>(y, x, m, dx, dy, i, C, H, W, fill);
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
