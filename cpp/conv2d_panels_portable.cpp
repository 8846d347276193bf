// conv2d's panel path (the drivers: conv2d_panels_impl.hpp) with portable helpers, compiled once
// per instruction set that has no panel helpers of its own (baseline, AVX2, NEON; AVX-512:
// conv2d_panels_avx512.cpp): a panel's runs of pixels are packed by plain copies (AVX2: past 2 runs,
// one gather a tap), transposes go in 8 x 8 blocks, and dW's A is read in place by the ISA's
// micro-kernel tile in vector code.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "conv2d_common.hpp"
#include "gemm.hpp"
#include "isa_target.hpp"
#include "parallel.hpp"

#if defined(CNNFAST_ISA_AVX512) || defined(CNNFAST_ISA_AVX2)
#include <immintrin.h>
#endif

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

extern const MicroKernel gemm_microkernel;  // this ISA's (gemm_microkernel*.cpp)

namespace {

constexpr int VL = CNNFAST_VEC_BYTES / 4;
#if defined(CNNFAST_ISA_NEON)
constexpr int NV = 3;  // gemm_microkernel_neon.cpp's 8 x 12
#else
constexpr int NV = 2;  // gemm_microkernel.cpp's MR x 2 vectors
#endif
#include "vec_impl.hpp"

struct PanelRun {
  i64 offset;           // element offset of lane 0 for tap 0 (the run's first pixel minus its lane)
  std::uint32_t lanes;  // the lanes this run fills (a bit mask of consecutive lanes)
};

// A panel of CNNFAST_MR lanes filled by two runs, the first of A lanes: two copies of fixed sizes
// per tap (a panel crossing from one output row into the next)
template <int A>
void pack_two_runs(float* ap, const float* first, const float* second, const i64* tap_offset, i64 T) {
  for (i64 t = 0; t < T; ++t) {
    __builtin_memcpy(ap + t * CNNFAST_MR, first + tap_offset[t], A * sizeof(float));
    __builtin_memcpy(ap + t * CNNFAST_MR + A, second + tap_offset[t], (CNNFAST_MR - A) * sizeof(float));
  }
}

template <int... AS>
void pack_two_runs_n(int a, float* ap, const float* first, const float* second, const i64* tap_offset, i64 T,
                     std::integer_sequence<int, AS...>) {
  ((a == AS + 1 ? pack_two_runs<AS + 1>(ap, first, second, tap_offset, T) : void()), ...);
}

void pack_patch_panel(float* ap, const float* src, const PanelRun* runs, int nruns, const i64* tap_offset, i64 T,
                      int mr) {
  constexpr std::uint32_t full = (1u << CNNFAST_MR) - 1;
  if (nruns == 1 && mr == CNNFAST_MR && runs[0].lanes == full) {
    // the common case, one run filling the panel: a copy of a fixed CNNFAST_MR floats per tap
    const float* from = src + runs[0].offset;
    for (i64 t = 0; t < T; ++t) __builtin_memcpy(ap + t * CNNFAST_MR, from + tap_offset[t], CNNFAST_MR * sizeof(float));
    return;
  }
  if (nruns == 2 && mr == CNNFAST_MR && (runs[0].lanes | runs[1].lanes) == full && (runs[0].lanes & 1u)) {
    const int a = __builtin_popcount(runs[0].lanes);  // (runs[1] fills lanes a..MR)
    return pack_two_runs_n(a, ap, src + runs[0].offset, src + runs[1].offset + a, tap_offset, T,
                           std::make_integer_sequence<int, CNNFAST_MR - 1>{});
  }
#if defined(CNNFAST_ISA_AVX2)
  alignas(32) std::int32_t lane_offset[VL] = {};
  std::uint32_t filled;
  // (pixels of several images, one or a few each: one gather a tap, as on AVX-512)
  if (nruns > 2 && mr <= VL && gather_offsets(runs, nruns, mr, lane_offset, filled)) {
    const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(lane_offset));
    const __m256 on = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_and_si256(_mm256_set1_epi32(int(filled)), _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128)),
        _mm256_setzero_si256()));
    for (i64 t = 0; t < T; ++t) {
      const __m256 v = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), src + tap_offset[t], index, on, 4);
      store_first(ap + t * mr, reinterpret_cast<const vec&>(v), mr);
    }
    return;
  }
#endif
  int first[32], len[32];
  std::uint32_t covered = 0;
  for (int j = 0; j < nruns; ++j) {
    first[j] = __builtin_ctz(runs[j].lanes), len[j] = __builtin_popcount(runs[j].lanes);
    covered |= runs[j].lanes;
  }
  const bool gaps = covered != (mr >= 32 ? ~0u : (1u << mr) - 1);
  for (i64 t = 0; t < T; ++t) {
    float* dst = ap + t * mr;
    if (gaps)
      for (int l = 0; l < mr; ++l) dst[l] = 0.0f;
    for (int j = 0; j < nruns; ++j) {
      const float* from = src + runs[j].offset + first[j] + tap_offset[t];
      for (int l = 0; l < len[j]; ++l) dst[first[j] + l] = from[l];
    }
  }
}

#if CNNFAST_VEC_BYTES == 32
// out[j*ldd + i] = in[i*lds + j] (+ plus[j], if given) for an 8 x 8 block in registers: rows interleaved in pairs of
// floats, then of float pairs, then of halves (AVX2's unpack, shuffle and permute2f128)
inline void transpose8(float* out, i64 ldd, const float* in, i64 lds, const float* plus) {
  auto put = [&](int j, vec v) { store(out + j * ldd, plus ? v + plus[j] : v); };
  vec r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = load(in + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int h = 0; h < 2; ++h) {  // u[i + 2h]: columns 2h, 2h+4 of rows i..i+3; u[i + 2h + 1]: columns 2h+1, 2h+5
      u[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * h + 1] = __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int c = 0; c < 4; ++c) {
    put(c, __builtin_shufflevector(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11));
    put(c + 4, __builtin_shufflevector(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15));
  }
}
#endif

void transpose_blocks(float* dst, i64 ldd, const float* src, i64 lds, i64 rows, i64 cols, i64 rows_out,
                      const float* plus = nullptr) {
  for (i64 i0 = 0; i0 < rows_out; i0 += 8)
    for (i64 j0 = 0; j0 < cols; j0 += 8) {
      const i64 i1 = i0 + 8 < rows_out ? i0 + 8 : rows_out, j1 = j0 + 8 < cols ? j0 + 8 : cols;
#if CNNFAST_VEC_BYTES == 32
      if (i1 - i0 == 8 && j1 - j0 == 8 && i0 + 8 <= rows) {  // a whole block
        transpose8(dst + j0 * ldd + i0, ldd, src + i0 * lds + j0, lds, plus ? plus + j0 : nullptr);
        continue;
      }
#endif
      for (i64 j = j0; j < j1; ++j)
        for (i64 i = i0; i < i1; ++i)
          dst[j * ldd + i] = i >= rows ? 0.0f : plus ? src[i * lds + j] + plus[j] : src[i * lds + j];
    }
}

void add_bias_rows(float* y, const float* b, i64 K, i64 P) {
  for (i64 k = 0; k < K; ++k)
    for (i64 p = 0; p < P; ++p) y[k * P + p] += b[k];
}

void add_patch_rows(float* xp, const float* rows, i64 ld, const i64* offsets, i64 m, const ConvShape& s) {
  const i64 span = s.S * s.C;
  for (i64 i = 0; i < m; ++i)
    for (i64 r = 0; r < s.R; ++r) {
      float* dst = xp + offsets[i] + r * s.Wp * s.C;
      const float* src = rows + i * ld + r * span;
      for (i64 e = 0; e < span; ++e) dst[e] += src[e];
    }
}

// Consecutive output rows lying end to end in the image stay separate runs of a panel (merged, a
// 1x1 layer's panels took 1.05x the time on AVX2: its plain copies gain nothing from fewer runs)
constexpr bool kMergeRowRuns = false;
// (no masked loads: a channel-major panel of 16 pixels is packed by pack_pixel_panel's plain copies,
// pack_patch_panel's runs of any length measured 1.04x the time for 1x1 64->128 at batch 32 on AVX2)
constexpr int kMaskedPackLanes = 0;

// The ISA's micro-kernel tile (the same sums in the same order as gemm_microkernel*.cpp) with A
// read in place: step k's MR values are a[offsets[k] + 0..MR). Whole tiles only.
constexpr int kInPlaceMR = CNNFAST_MR, kInPlaceNR = NV * VL;

void microkernel_in_place(i64 kc, const float* a, const i64* offsets, const float* b, float* c, i64 ldc,
                          bool accumulate) {
  vec acc[kInPlaceMR][NV];
  for (int i = 0; i < kInPlaceMR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = vec{};
  for (i64 k = 0; k < kc; ++k) {
    const float* ak = a + offsets[k];
    vec bk[NV];
    for (int j = 0; j < NV; ++j) bk[j] = load(b + k * kInPlaceNR + j * VL);
#pragma GCC unroll 16
    for (int i = 0; i < kInPlaceMR; ++i) {
      const float ai = ak[i];
      for (int j = 0; j < NV; ++j) acc[i][j] += ai * bk[j];
    }
  }
  for (int i = 0; i < kInPlaceMR; ++i)
    for (int j = 0; j < NV; ++j) {
      float* cij = c + i * ldc + j * VL;
      store(cij, accumulate ? load(cij) + acc[i][j] : acc[i][j]);
    }
}

// The forward's tile: the ISA's one for every K
const MicroKernel& forward_microkernel(i64) { return gemm_microkernel; }

// dW's tile: the ISA's for every K too (16 channels wide at most on AVX2 and NEON: nothing to narrow)
constexpr int kNarrowDwTaps = 0;
void narrow_dw_product(i64, const float*, const float*, i64, float*, i64, i64, i64, bool) {}

}  // namespace

#include "conv2d_panels_impl.hpp"
#include "conv2d_tap_rows_impl.hpp"

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
