// max_pool2d's 2x2 planes on AVX-512 (max_pool2d.cpp uses them through the ISA table): the
// forward 16 windows per step, the backward written densely. Compiled for AVX-512 only.
#include <immintrin.h>

#include <cstdint>

#include "isa.hpp"
#include "isa_target.hpp"
#include "pool_rule_avx512.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

// One plane of 2x2 windows, 16 windows per step with AVX-512 (a row's tail by masks, so a
// 13-window row is one step): rows r0 and r1 are deinterleaved into each window's four
// candidates (even and odd columns), and the same rule as pool2_four, as mask registers.
void pool2_plane(float* yp, std::int32_t* ap, const float* xp, i64 Ho, i64 Wo, std::int32_t W, bool relu) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i offsets[4] = {_mm512_setzero_si512(), _mm512_set1_epi32(1), _mm512_set1_epi32(W),
                              _mm512_set1_epi32(W + 1)};
  for (i64 oh = 0; oh < Ho; ++oh) {
    const float* r0 = xp + 2 * oh * W;
    const float* r1 = r0 + W;
    const std::int32_t row_start = std::int32_t(2 * oh * W);
    float* y = yp + oh * Wo;
    std::int32_t* argmax = ap + oh * Wo;
    for (i64 ow = 0; ow < Wo; ow += 16) {
      const i64 n = Wo - ow < 16 ? Wo - ow : 16;  // windows in this step
      const __mmask16 out_mask = __mmask16((1u << n) - 1);
      // 2n input columns: the first 16 in lo, the rest in hi
      const __mmask16 lo_mask = __mmask16(n >= 8 ? 0xFFFF : (1u << (2 * n)) - 1);
      const __mmask16 hi_mask = __mmask16(n > 8 ? (1u << (2 * n - 16)) - 1 : 0);
      const float *a = r0 + 2 * ow, *b = r1 + 2 * ow;
      const __m512 top_lo = _mm512_maskz_loadu_ps(lo_mask, a), top_hi = _mm512_maskz_loadu_ps(hi_mask, a + 16);
      const __m512 bot_lo = _mm512_maskz_loadu_ps(lo_mask, b), bot_hi = _mm512_maskz_loadu_ps(hi_mask, b + 16);
      const __m512 candidates[4] = {
          _mm512_permutex2var_ps(top_lo, even, top_hi), _mm512_permutex2var_ps(top_lo, odd, top_hi),
          _mm512_permutex2var_ps(bot_lo, even, bot_hi), _mm512_permutex2var_ps(bot_lo, odd, bot_hi)};
      const __m512i first = _mm512_add_epi32(_mm512_set1_epi32(row_start + std::int32_t(2 * ow)), even);
      __m512 best;
      __m512i index;
      pool_first_max_avx512(&best, &index, candidates, 4, first, offsets);
      if (relu) pool_relu_avx512(&best, &index);
      _mm512_mask_storeu_ps(y + ow, out_mask, best);
      _mm512_mask_storeu_epi32(argmax + ow, out_mask, index);
    }
  }
}

// One plane of max_pool2d's backward for 2x2 windows, written densely (no zero fill, no
// scatter): each output row's elements are dy of their window where they are its argmax, else
// 0, 32 elements per step (16 windows' dy and argmax, each repeated for its two columns, against
// the elements' own indices). Rows and columns past the last window are zeroed. Returns false if
// some open window's argmax is not inside its window (argmax made by hand): the caller then
// scatters instead, which routes it wherever it points.
bool pool2_backward_plane(float* dxp, const std::int32_t* ap, const float* dyp, i64 H, i64 W, i64 Ho, i64 Wo) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i repeat = _mm512_srli_epi32(lane, 1);  // element j of a half is window j / 2 of it
  const __m512i minus_one = _mm512_set1_epi32(-1);
  i64 matched = 0, open = 0;
  for (i64 oh = 0; oh < Ho; ++oh)
    for (i64 r = 0; r < 2; ++r) {
      float* row = dxp + (2 * oh + r) * W;
      for (i64 ow = 0; ow < Wo; ow += 16) {
        const i64 n = Wo - ow < 16 ? Wo - ow : 16;
        const __mmask16 windows = __mmask16((1u << n) - 1);
        const __m512i a = _mm512_mask_loadu_epi32(minus_one, windows, ap + oh * Wo + ow);
        const __m512 d = _mm512_maskz_loadu_ps(windows, dyp + oh * Wo + ow);
        if (r == 0) open += __builtin_popcount(unsigned(_mm512_cmpge_epi32_mask(a, _mm512_setzero_si512())));
        for (i64 half = 0; half < 2 && 16 * half < 2 * n; ++half) {
          const i64 count = 2 * n - 16 * half < 16 ? 2 * n - 16 * half : 16;  // elements in this half
          const __mmask16 valid = __mmask16((1u << count) - 1);
          const __m512i which = _mm512_add_epi32(repeat, _mm512_set1_epi32(std::int32_t(8 * half)));
          const __m512i index =
              _mm512_add_epi32(lane, _mm512_set1_epi32(std::int32_t((2 * oh + r) * W + 2 * ow + 16 * half)));
          const __mmask16 hit = _mm512_mask_cmpeq_epi32_mask(valid, _mm512_permutexvar_epi32(which, a), index);
          matched += __builtin_popcount(unsigned(hit));
          _mm512_mask_storeu_ps(row + 2 * ow + 16 * half, valid,
                                _mm512_maskz_mov_ps(hit, _mm512_permutexvar_ps(which, d)));
        }
      }
      for (i64 w = 2 * Wo; w < W; ++w) row[w] = 0.0f;
    }
  for (i64 i = 2 * Ho * W; i < H * W; ++i) dxp[i] = 0.0f;
  return matched == open;
}
}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
