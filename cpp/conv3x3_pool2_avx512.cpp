// conv2d (one input channel, 3x3) + ReLU + 2x2 max-pool in registers on AVX-512: the default
// model's first layer, conv1, whose convolution output is never stored. Compiled for AVX-512 only;
// reached through the ISA table (conv2d.cpp lists the paths).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "conv2d_common.hpp"
#include "isa.hpp"
#include "isa_target.hpp"
#include "parallel.hpp"
#include "pool_rule_avx512.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

// A window's four conv outputs (2i+a, 2j+b), a, b in {0, 1}, read x at (2i+a+r-pad, 2j+b+q-pad):
// only a+r and b+q (0..3 each) matter, so the image is first split into 16 subsampled planes
// D[u][v][i*Wq + j] = x[2i+u-pad][2j+v-pad] (zero outside x). D[u+2][v] is D[u][v] one row of
// windows on, so 8 planes of Hq + 1 rows hold all 16 (6 KB for conv1, in L1), each row a
// permute of two masked vector loads from x. Then, 16 windows and two channels at a time, a
// channel's four outputs per window are four accumulators of 9 multiply-adds (the channel's
// weights in registers), and the window's maximum and argmax are picked in registers with
// max_pool2d's rule: the convolution's output is never stored. Sums in the direct path's order
// (0 + bias, then taps r, q), so the same numbers as conv2d_forward + max_pool2d_forward.
struct Windows {
  i64 Hq, Wq, Q, Qp;                // windows down and across, their number, rounded up to 16
  i64 Pp;                           // the planes' stride: Qp and one more row of windows, rounded up
  std::vector<std::int32_t> first;  // first[i*Wq + j] = (2i)*Wo + 2j, the window's top-left pixel
  explicit Windows(const ConvShape& s)
      : Hq(s.Ho / 2),
        Wq(s.Wo / 2),
        Q(Hq * Wq),
        Qp((Q + 15) / 16 * 16),
        Pp((Qp + Wq + 15) / 16 * 16),
        first(static_cast<size_t>(Qp), 0) {
    for (i64 i = 0; i < Hq; ++i)
      for (i64 j = 0; j < Wq; ++j) first[size_t(i * Wq + j)] = std::int32_t(2 * i * s.Wo + 2 * j);
  }
  i64 scratch_floats() const { return 8 * Pp; }
  // D[u][v] in the planes built by build_pool2_planes
  const float* plane(const float* D, int u, int v) const { return D + ((u & 1) * 4 + v) * Pp + (u >> 1) * Wq; }
};

// 16 windows' ReLU + max-pool from their four candidates out[0..3] (window order (0,0), (0,1),
// (1,0), (1,1); pixel indices first + step[i]) -> y, argmax (the first n lanes stored; without
// kArgmax, inference, y alone: windows without a NaN then make no index)
template <bool kArgmax>
__attribute__((always_inline)) inline void pool2_relu_16(float* y, std::int32_t* argmax, const __m512* out,
                                                         __m512i first, const __m512i* step, i64 n) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 best;
  __m512i index;
  if (_mm512_cmp_ps_mask(out[0], out[1], _CMP_UNORD_Q) | _mm512_cmp_ps_mask(out[2], out[3], _CMP_UNORD_Q)) {
    pool_first_max_avx512(&best, &index, out, 4, first, step);  // a NaN somewhere: the rule step by step
    best = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(best, zero, _CMP_LE_OQ), best, zero);
  } else {  // no NaN: the maximum, then the first of the four equal to it
    best = _mm512_max_ps(_mm512_max_ps(out[0], out[1]), _mm512_max_ps(out[2], out[3]));
    if constexpr (kArgmax) {
      index = _mm512_add_epi32(first, step[3]);
      for (int i = 2; i >= 0; --i)
        index = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(out[i], best, _CMP_EQ_OQ), index,
                                        _mm512_add_epi32(first, step[i]));
    }
    best = _mm512_max_ps(best, zero);  // (a maximum not > 0 gives +0)
  }
  const __mmask16 lanes = __mmask16(n >= 16 ? 0xFFFF : (1u << n) - 1);
  _mm512_mask_storeu_ps(y, lanes, best);
  if constexpr (kArgmax) {
    index = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(best, zero, _CMP_GT_OQ), _mm512_set1_epi32(-1), index);
    _mm512_mask_storeu_epi32(argmax, lanes, index);
  }
}

// The planes of D[u][v][i*Wq + j] = x[2i+u-pad][2j+v-pad] (zero outside x): for u in 0..1 and
// v in 0..3, Hq + 1 rows of windows each, Pp apart (zero past the last row), so that
// win.plane(D, u, v) reads D[u][v] for u in 0..3. Each row of 16 windows is the even lanes of 32
// floats of x, loaded with a mask that leaves out (and reads no memory for) the columns outside x.
void build_pool2_planes(float* D, const float* x, const ConvShape& s, const Windows& win) {
  const i64 Wq = win.Wq, Pp = win.Pp, rows = win.Hq + 1;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (i64 u = 0; u < 2; ++u)
    for (i64 v = 0; v < 4; ++v) {
      float* d = D + (u * 4 + v) * Pp;
      for (i64 i = 0; i < rows; ++i) {
        const i64 h = 2 * i + u - s.pad;
        if (h < 0 || h >= s.H) {
          std::fill(d + i * Wq, d + (i + 1) * Wq, 0.0f);
          continue;
        }
        for (i64 j0 = 0; j0 < Wq; j0 += 16) {
          // window j0 + j reads column c0 + 2j; the loads start at column c = max(c0, 0)
          const i64 c0 = 2 * j0 + v - s.pad, c = std::max<i64>(c0, 0);
          const i64 n = std::max<i64>(0, std::min<i64>(32, s.W - c));  // columns of x from c on
          const std::uint64_t in = (1ull << n) - 1;
          const float* src = n > 0 ? x + h * s.W + c : x;  // (nothing read where n = 0)
          const __m512 lo = _mm512_maskz_loadu_ps(__mmask16(in), src);
          const __m512 hi = _mm512_maskz_loadu_ps(__mmask16(in >> 16), src + 16);
          const __m512i pick = _mm512_add_epi32(even, _mm512_set1_epi32(std::int32_t(c0 - c)));  // (<0: left of x)
          const __m512 picked =
              _mm512_maskz_permutex2var_ps(_mm512_cmpge_epi32_mask(pick, _mm512_setzero_si512()), lo, pick, hi);
          const __mmask16 lanes = __mmask16(Wq - j0 >= 16 ? 0xFFFF : (1u << (Wq - j0)) - 1);
          _mm512_mask_storeu_ps(d + i * Wq + j0, lanes, picked);
        }
      }
      std::fill(d + rows * Wq, d + Pp, 0.0f);
    }
}

// Channels k..k+KB-1 of one image's y (and argmax), from its planes D, 16 windows at a time: a
// channel's four outputs per window are four accumulators of 9 multiply-adds (its weights in
// registers), and the window's maximum and argmax are picked in registers with max_pool2d's rule.
// Two channels at a time (KB = 2) make 8 independent sums: where AVX-512 runs two 512-bit FMAs a
// cycle (4 cycles each), 4 sums left half the FMA slots idle, and the planes are loaded once for both.
template <bool kArgmax, int KB>
inline void forward_channels(float* y, std::int32_t* argmax, const float* D, const float* w, const float* b, i64 k,
                             const ConvShape& s, const Windows& win) {
  const i64 Q = win.Q;
  const __m512 zero = _mm512_setzero_ps();
  const __m512i step[4] = {_mm512_setzero_si512(), _mm512_set1_epi32(1), _mm512_set1_epi32(std::int32_t(s.Wo)),
                           _mm512_set1_epi32(std::int32_t(s.Wo + 1))};  // (a, b) = (0,0), (0,1), (1,0), (1,1)
  __m512 wk[KB][9], bias[KB];
  for (int c = 0; c < KB; ++c) {
    for (int t = 0; t < 9; ++t) wk[c][t] = _mm512_set1_ps(w[(k + c) * 9 + t]);
    bias[c] = _mm512_add_ps(zero, _mm512_set1_ps(b[k + c]));  // 0 + b, as the direct path
  }
  for (i64 q0 = 0; q0 < Q; q0 += 16) {
    __m512 out[KB][4];
    for (int c = 0; c < KB; ++c)
      for (int ab = 0; ab < 4; ++ab) out[c][ab] = bias[c];
    // each plane (u, v) loaded once and used by every window pixel (a, b) with tap
    // (r, q) = (u - a, v - b) inside 3x3; for a fixed (a, b) the taps come in (r, q) order
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const __m512 d = _mm512_loadu_ps(win.plane(D, u, v) + q0);
#pragma GCC unroll 4
        for (int ab = 0; ab < 4; ++ab) {
          const int r = u - (ab >> 1), q = v - (ab & 1);
          if (r < 0 || r > 2 || q < 0 || q > 2) continue;
#pragma GCC unroll 2
          for (int c = 0; c < KB; ++c) out[c][ab] = _mm512_fmadd_ps(wk[c][r * 3 + q], d, out[c][ab]);
        }
      }
    const __m512i first = _mm512_loadu_si512(win.first.data() + q0);
    for (int c = 0; c < KB; ++c)
      pool2_relu_16<kArgmax>(y + (k + c) * Q + q0, kArgmax ? argmax + (k + c) * Q + q0 : nullptr, out[c], first, step,
                             Q - q0);
  }
}

// One image's y and, with kArgmax, its argmax (conv3x3_pool2_impl.hpp's image_forward)
template <bool kArgmax>
void forward_windows(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b, const ConvShape& s,
                     const Windows& win, float* scratch) {
  float* D = scratch;
  build_pool2_planes(D, x, s, win);
  i64 k = 0;
  for (; k + 2 <= s.K; k += 2) forward_channels<kArgmax, 2>(y, argmax, D, w, b, k, s, win);
  if (k < s.K) forward_channels<kArgmax, 1>(y, argmax, D, w, b, k, s, win);
}

// The backward of image_forward (dw and the bias-gradient lanes; conv1 needs no dx):
// a window's dy goes to the one of its four pixels (a, b) its argmax names, so for 16 windows
// the four d(conv) vectors are dy masked by argmax == first + step[ab], and dw[k][r][q] gathers
// d(conv)_ab * D[a + r][b + q] over (a, b) and the windows in 9 accumulators (one per tap),
// each plane loaded once per block. dw_k: [K, 9]; lanes: [K, 16], the bias gradient's partial
// sums. Returns false, computing nothing useful, if an argmax is neither -1 nor a pixel of its
// window (argmax made by hand): the caller then takes the general path.
bool image_backward(float* dw_k, float* lanes, const float* x, const float* dy, const std::int32_t* argmax,
                    const ConvShape& s, const Windows& win, float* scratch) {
  const i64 Q = win.Q;
  float* D = scratch;
  build_pool2_planes(D, x, s, win);
  const __m512i step[4] = {_mm512_setzero_si512(), _mm512_set1_epi32(1), _mm512_set1_epi32(std::int32_t(s.Wo)),
                           _mm512_set1_epi32(std::int32_t(s.Wo + 1))};
  const __m512i minus_one = _mm512_set1_epi32(-1);
  __mmask16 stray = 0;  // open windows whose argmax is none of their pixels
  for (i64 k = 0; k < s.K; ++k) {
    __m512 acc[9], bias = _mm512_setzero_ps();
    for (int t = 0; t < 9; ++t) acc[t] = _mm512_setzero_ps();
    for (i64 q0 = 0; q0 < Q; q0 += 16) {
      const __mmask16 valid = __mmask16(Q - q0 >= 16 ? 0xFFFF : (1u << (Q - q0)) - 1);
      const __m512i a = _mm512_mask_loadu_epi32(minus_one, valid, argmax + k * Q + q0);
      const __m512 g = _mm512_maskz_loadu_ps(valid, dy + k * Q + q0);
      const __m512i first = _mm512_loadu_si512(win.first.data() + q0);
      __m512 d[4];
      __mmask16 hit = 0;
      for (int ab = 0; ab < 4; ++ab) {
        const __mmask16 m = _mm512_cmpeq_epi32_mask(a, _mm512_add_epi32(first, step[ab]));
        d[ab] = _mm512_maskz_mov_ps(m, g);
        hit |= m;
      }
      stray |= __mmask16(_mm512_cmpge_epi32_mask(a, _mm512_setzero_si512()) & ~hit);
      bias = _mm512_add_ps(bias, _mm512_add_ps(_mm512_add_ps(d[0], d[1]), _mm512_add_ps(d[2], d[3])));
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          // (0 past Q, as d: win.plane(D, u < 2, v) holds a row of x there, and 0 * x is NaN where x
          // is not finite)
          const __m512 plane = _mm512_maskz_loadu_ps(valid, win.plane(D, u, v) + q0);
#pragma GCC unroll 4
          for (int ab = 0; ab < 4; ++ab) {
            const int r = u - (ab >> 1), q = v - (ab & 1);
            if (r < 0 || r > 2 || q < 0 || q > 2) continue;
            acc[r * 3 + q] = _mm512_fmadd_ps(d[ab], plane, acc[r * 3 + q]);
          }
        }
    }
    for (int t = 0; t < 9; ++t) dw_k[k * 9 + t] = _mm512_reduce_add_ps(acc[t]);
    _mm512_storeu_ps(lanes + k * 16, bias);
  }
  return stray == 0;
}

}  // namespace

#include "conv3x3_pool2_impl.hpp"

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
