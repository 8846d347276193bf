// conv2d's panel path on AVX-512 (the drivers: conv2d_panels_impl.hpp): its helpers in AVX-512
// intrinsics. A panel's runs of pixels are packed with masked vector loads (one per run per tap;
// past 6 runs, one gather a tap), transposes go in 16 x 16 register blocks, and the 12 x 32
// micro-kernel reads dW's A in place.
// Compiled for AVX-512 only; reached through the ISA table (conv2d.cpp lists the paths).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "conv2d_common.hpp"
#include "gemm.hpp"
#include "isa_target.hpp"
#include "parallel.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

extern const MicroKernel gemm_microkernel;  // this ISA's (gemm_microkernel.cpp)

namespace {

#include "vec_impl.hpp"  // (for conv2d_panels_impl.hpp's pooling)

// ---- forward: the GEMM's packed A built straight from the image ----
// For a panel of mr output pixels (mr = 12: the micro-kernel's rows), packed A holds, for each
// tap t = (c, r, q) in PyTorch's weight order, the mr values x[c][oh+r][ow+q] of those pixels.
// The panel's pixels fall into a few runs of one output row each (two for conv2: 12 pixels,
// rows of 11), and a run's values for a tap are contiguous in x. So each tap is one masked
// vector load per run, offset so that the run lands in its own lanes, and one store: no patch
// rows are written and nothing is transposed element by element. The weights [K, T] are then
// the product's B, packed once per call; C = [pixels, K] is written per panel.
struct PanelRun {
  i64 offset;           // element offset of lane 0 for tap 0 (the run's first pixel minus its lane)
  std::uint32_t lanes;  // the lanes this run fills (a bit mask)
};

// (NRUNS runs, their offsets and masks held in registers for the whole loop)
template <int NRUNS>
__attribute__((always_inline)) inline void pack_runs(float* ap, const float* src, const PanelRun* runs,
                                                     const i64* tap_offset, i64 T, int mr) {
  const __mmask16 store_mask = __mmask16((1u << mr) - 1);
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(src);
  std::uintptr_t offset[NRUNS];
  __mmask16 lanes[NRUNS];
  for (int j = 0; j < NRUNS; ++j)
    offset[j] = base + std::uintptr_t(runs[j].offset * 4), lanes[j] = __mmask16(runs[j].lanes);
  for (i64 t = 0; t < T; ++t) {
    const std::uintptr_t at = std::uintptr_t(tap_offset[t] * 4);
    // (an address below src is never read: its lanes are masked off)
    __m512 v = _mm512_maskz_loadu_ps(lanes[0], reinterpret_cast<const float*>(offset[0] + at));
    for (int j = 1; j < NRUNS; ++j)
      v = _mm512_mask_loadu_ps(v, lanes[j], reinterpret_cast<const float*>(offset[j] + at));
    _mm512_mask_storeu_ps(ap + t * mr, store_mask, v);
  }
}

void pack_patch_panel(float* ap, const float* src, const PanelRun* runs, int nruns, const i64* tap_offset, i64 T,
                      int mr) {
  switch (nruns) {
    case 1:
      return pack_runs<1>(ap, src, runs, tap_offset, T, mr);
    case 2:
      return pack_runs<2>(ap, src, runs, tap_offset, T, mr);
    case 3:
      return pack_runs<3>(ap, src, runs, tap_offset, T, mr);
    case 4:  // (4-6: dW's 16-tap panels of a layer with 3 input channels)
      return pack_runs<4>(ap, src, runs, tap_offset, T, mr);
    case 5:
      return pack_runs<5>(ap, src, runs, tap_offset, T, mr);
    case 6:
      return pack_runs<6>(ap, src, runs, tap_offset, T, mr);
    default:
      break;
  }
  const __mmask16 store_mask = __mmask16((1u << mr) - 1);
  // More runs (pixels of several images, a few each: small padded images' panels): one gather a tap
  alignas(64) std::int32_t lane_offset[16] = {};
  std::uint32_t filled;
  if (gather_offsets(runs, nruns, 16, lane_offset, filled)) {
    const __m512i index = _mm512_load_si512(lane_offset);
    for (i64 t = 0; t < T; ++t)
      _mm512_mask_storeu_ps(
          ap + t * mr, store_mask,
          _mm512_mask_i32gather_ps(_mm512_setzero_ps(), __mmask16(filled), index, src + tap_offset[t], 4));
    return;
  }
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(src);
  for (i64 t = 0; t < T; ++t) {
    __m512 v = _mm512_setzero_ps();
    for (int j = 0; j < nruns; ++j)
      v = _mm512_mask_loadu_ps(v, runs[j].lanes,
                               reinterpret_cast<const float*>(base + (runs[j].offset + tap_offset[t]) * 4));
    _mm512_mask_storeu_ps(ap + t * mr, store_mask, v);
  }
}

// A 16 x 16 transpose in registers: row i from load(i), column j handed to put(j, column). Rows loaded in pairs and
// interleaved as pairs of floats, then of doubles, then 128-bit lanes, each column put as soon as it is made (so no
// more than ~20 vectors are live: the compiler keeps them all in registers).
template <class Load, class Put>
__attribute__((always_inline)) inline void transpose16(Load load, Put put) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane j: (r0[4j], r1[4j], r0[4j+1], r1[4j+1]) ...
    const __m512 a = load(2 * i), b = load(2 * i + 1);
    t[2 * i] = _mm512_unpacklo_ps(a, b);
    t[2 * i + 1] = _mm512_unpackhi_ps(a, b);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i + m], lane j: rows 4i..4i+3 of column 4j + m
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {  // column 4j + m: lane j of u[m], u[4 + m], u[8 + m], u[12 + m]
    const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44), v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44),
                 v3 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
    put(m, _mm512_shuffle_f32x4(v0, v2, 0x88));
    put(4 + m, _mm512_shuffle_f32x4(v0, v2, 0xDD));
    put(8 + m, _mm512_shuffle_f32x4(v1, v3, 0x88));
    put(12 + m, _mm512_shuffle_f32x4(v1, v3, 0xDD));
  }
}

// dst[j*ldd + i] = src[i*lds + j] (+ plus[j], if given) for i < rows, j < cols, and 0 for rows <= i < rows_out: a
// transpose in 16 x 16 blocks in registers, an edge block's rows loaded and its columns stored masked. (Edge blocks
// went through a zero-padded copy in memory and back: in registers, the backward of 1x1 layers on 2 x 2 and 3 x 3
// images, whose blocks are all edge ones, took 0.93-0.99x the time, AVX-512, batch 128.)
void transpose_blocks(float* dst, i64 ldd, const float* src, i64 lds, i64 rows, i64 cols, i64 rows_out,
                      const float* plus = nullptr) {
  auto mask = [](i64 n) { return __mmask16(n >= 16 ? 0xFFFF : (1u << n) - 1); };
  for (i64 i0 = 0; i0 < rows_out; i0 += 16)
    for (i64 j0 = 0; j0 < cols; j0 += 16) {
      const i64 ni = std::clamp<i64>(rows - i0, 0, 16), nj = std::min<i64>(16, cols - j0),
                no = std::min<i64>(16, rows_out - i0);
      const float* in = src + i0 * lds + j0;
      float* out = dst + j0 * ldd + i0;
      const __mmask16 loaded = mask(ni);  // (plus goes to the rows read, not to the zeros past them)
      auto plus_bias = [&](__m512 v, int j) {
        return plus ? _mm512_mask_add_ps(v, loaded, v, _mm512_set1_ps(plus[j0 + j])) : v;
      };
      if (ni == 16 && nj == 16 && no == 16) {
        transpose16([&](int i) { return _mm512_loadu_ps(in + i * lds); },
                    [&](int j, __m512 v) { _mm512_storeu_ps(out + j * ldd, plus_bias(v, j)); });
        continue;
      }
      const __mmask16 columns = mask(nj), rows_stored = mask(no);
      transpose16([&](int i) { return i < ni ? _mm512_maskz_loadu_ps(columns, in + i * lds) : _mm512_setzero_ps(); },
                  [&](int j, __m512 v) {
                    if (j < nj) _mm512_mask_storeu_ps(out + j * ldd, rows_stored, plus_bias(v, j));
                  });
    }
}

// y[k][p] += b[k] for k < K, p < P
void add_bias_rows(float* y, const float* b, i64 K, i64 P) {
  const __mmask16 tail = __mmask16((1u << (P % 16)) - 1);
  for (i64 k = 0; k < K; ++k) {
    float* row = y + k * P;
    const __m512 bias = _mm512_set1_ps(b[k]);
    i64 p = 0;
    for (; p + 16 <= P; p += 16) _mm512_storeu_ps(row + p, _mm512_add_ps(_mm512_loadu_ps(row + p), bias));
    if (p < P) _mm512_mask_storeu_ps(row + p, tail, _mm512_add_ps(_mm512_maskz_loadu_ps(tail, row + p), bias));
  }
}

// row2im of m pixels: xp[pixel i + (r*Wp + q)*C + c] += rows[i*ld + (r*S + q)*C + c], pixel i
// at offsets[i] in xp (for a fixed r, the S*C values are contiguous in both)
void add_patch_rows(float* xp, const float* rows, i64 ld, const i64* offsets, i64 m, const ConvShape& s) {
  const i64 span = s.S * s.C;
  const __mmask16 tail = __mmask16((1u << (span % 16)) - 1);
  for (i64 i = 0; i < m; ++i)
    for (i64 r = 0; r < s.R; ++r) {
      float* dst = xp + offsets[i] + r * s.Wp * s.C;
      const float* src = rows + i * ld + r * span;
      i64 e = 0;
      for (; e + 16 <= span; e += 16)
        _mm512_storeu_ps(dst + e, _mm512_add_ps(_mm512_loadu_ps(dst + e), _mm512_loadu_ps(src + e)));
      if (e < span)
        _mm512_mask_storeu_ps(
            dst + e, tail, _mm512_add_ps(_mm512_maskz_loadu_ps(tail, dst + e), _mm512_maskz_loadu_ps(tail, src + e)));
    }
}

// The 12x32 micro-kernel (gemm_microkernel.cpp's, the same sums in the same order) with A read
// in place: depth step k's 12 values are a[offsets[k] + 0..11], 12 consecutive taps of pixel k
// in the channels-last image (for a fixed r, the S*C taps (q, c) of a pixel are contiguous
// there), instead of a packed panel. For dW this spares packing every (pixel, tap) pair; a tile
// must be whole (m = 12, n = 32).
void microkernel_in_place(i64 kc, const float* a, const i64* offsets, const float* b, float* c, i64 ldc,
                          bool accumulate) {
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_setzero_ps();
  for (i64 k = 0; k < kc; ++k) {
    const float* ak = a + offsets[k];
    const __m512 b0 = _mm512_loadu_ps(b + 32 * k), b1 = _mm512_loadu_ps(b + 32 * k + 16);
    for (int i = 0; i < 12; ++i) {
      const __m512 ai = _mm512_set1_ps(ak[i]);
      acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
      acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
    }
  }
  for (int i = 0; i < 12; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      _mm512_storeu_ps(ci, _mm512_add_ps(_mm512_loadu_ps(ci), acc[2 * i]));
      _mm512_storeu_ps(ci + 16, _mm512_add_ps(_mm512_loadu_ps(ci + 16), acc[2 * i + 1]));
    } else {
      _mm512_storeu_ps(ci, acc[2 * i]);
      _mm512_storeu_ps(ci + 16, acc[2 * i + 1]);
    }
  }
}

// The tile for layers of at most 16 output channels (a first layer 3->16, LeNet's 6->16), forward
// and dW: 16 rows (pixels, or dW's taps) x 16 channels in 16 zmm registers, where the 12 x 32 tile
// would leave half its lanes empty. Each depth step: one vector of B, 16 broadcasts and 16 FMAs.
// c[0:m, 0:n] (+)= a (packed [kc][16]) b ([kc] rows ldb apart, n <= 16 channels used).
void product_16x16(i64 kc, const float* a, const float* b, i64 ldb, float* c, i64 ldc, i64 m, i64 n, bool accumulate) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (i64 k = 0; k < kc; ++k) {
    const __m512 bk = _mm512_loadu_ps(b + ldb * k);
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[16 * k + i]), bk, acc[i]);
  }
  const __mmask16 columns = __mmask16((1u << n) - 1);
  for (i64 i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    const __m512 sum = accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(columns, ci), acc[i]) : acc[i];
    _mm512_mask_storeu_ps(ci, columns, sum);
  }
}

// The forward's: the MicroKernel contract of gemm_microkernel.cpp, B packed [kc][16]
void run_16x16(long kc, const float* a, const float* b, float* c, long ldc, long m, long n, int accumulate) {
  product_16x16(kc, a, b, 16, c, ldc, m, n, accumulate != 0);
}
const MicroKernel narrow_microkernel = {16, 16, &run_16x16};

// The forward's tile for K output channels
const MicroKernel& forward_microkernel(i64 K) { return K <= 16 ? narrow_microkernel : gemm_microkernel; }

// dW's tile for K <= 16: product_16x16, 16 taps a panel, B read from dy's 32-wide channel panels
constexpr int kNarrowDwTaps = 16;
void narrow_dw_product(i64 kc, const float* a, const float* b, i64 ldb, float* c, i64 ldc, i64 m, i64 n,
                       bool accumulate) {
  product_16x16(kc, a, b, ldb, c, ldc, m, n, accumulate);
}

}  // namespace

constexpr int kInPlaceMR = 12, kInPlaceNR = 32;  // microkernel_in_place's tile
// One masked load per run and tap: a 1x1 layer's 12-pixel panel on 8 x 8 images in one run, not 2-3
// (256->64 at batch 128, one thread: 0.95x the time; 256->128 on 14 x 14 0.94x)
constexpr bool kMergeRowRuns = true;
constexpr int kMaskedPackLanes = 16;  // (pack_patch_panel's loads: one zmm of lanes)

#include "conv2d_panels_impl.hpp"
#include "conv2d_tap_rows_impl.hpp"

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
