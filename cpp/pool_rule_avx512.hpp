// max_pool2d's rule for 16 windows at once on AVX-512, shared by max_pool2d_avx512.cpp and
// conv3x3_pool2_avx512.cpp: over a window's candidates in window order (row by row), the first
// maximum wins and a NaN wins (so NaN propagates, as in PyTorch); with the fused ReLU a window
// whose maximum is not > 0 gives 0 and argmax -1. Only AVX-512 files include it; the functions
// carry their own target attribute.
#pragma once
#include <immintrin.h>

namespace cnnfast {

// best, index <- the winner among candidate[0..count) (lane by lane), candidate i sitting at
// pixel first + offset[i] (offset[0] = 0)
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"), always_inline)) inline void pool_first_max_avx512(
    __m512* best, __m512i* index, const __m512* candidate, int count, __m512i first, const __m512i* offset) {
  *best = candidate[0];
  *index = first;
  for (int i = 1; i < count; ++i) {
    const __m512 v = candidate[i];
    const __mmask16 take = _mm512_cmp_ps_mask(v, *best, _CMP_GT_OQ) |
                           (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(*best, *best, _CMP_ORD_Q));
    *best = _mm512_mask_blend_ps(take, *best, v);
    *index = _mm512_mask_blend_epi32(take, *index, _mm512_add_epi32(first, offset[i]));
  }
}

// The fused ReLU: a maximum <= 0 (or NaN, for the index) gives y = 0 and argmax -1
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"), always_inline)) inline void pool_relu_avx512(
    __m512* best, __m512i* index) {
  const __m512 zero = _mm512_setzero_ps();
  *best = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(*best, zero, _CMP_LE_OQ), *best, zero);
  *index = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(*best, zero, _CMP_GT_OQ), _mm512_set1_epi32(-1), *index);
}

}  // namespace cnnfast
