// conv2d (one input channel, 3x3) + ReLU + 2x2 max-pool in registers, in portable vector code
// compiled once per instruction set without its own version (baseline, AVX2, NEON; AVX-512 has
// conv3x3_pool2_avx512.cpp): the default model's first layer, conv1, whose convolution output is
// never stored. The same method as the AVX-512 file, VL windows at a time (VL = the ISA's vector
// width in floats: 8 on AVX2, whose 16 ymm registers hold the channel's 9 weights, the window's
// 4 sums and a plane).
//
// A window's four conv outputs (2i+a, 2j+b), a, b in {0, 1}, read x at (2i+a+r-pad, 2j+b+q-pad):
// only a+r and b+q (0..3 each) matter, so the image is first split into 16 subsampled planes
// D[u][v][i*Wq + j] = x[2i+u-pad][2j+v-pad] (zero outside x), 8 of them built (D[u+2][v] is D[u][v]
// one row of windows on; 6.5 KB for conv1, and 11 KB for the forward's copy of the 16 interleaved by
// blocks of VL windows: in L1). Then, VL windows at a time, a channel's four outputs per window
// are four accumulators of 9 multiply-adds, and the window's maximum and argmax are picked in
// registers with max_pool2d's rule (first maximum, a NaN wins;
// ReLU: a maximum not > 0 gives 0 and argmax -1; without a NaN among the four, the same winner as
// the maximum and the first of the four equal to it, in fewer instructions). Sums in the direct
// path's order (0 + bias, then taps r, q), so the same numbers as conv2d_forward +
// max_pool2d_forward. (AVX2, one thread, conv1 at batch 128 on an AMD EPYC Zen 4: 1.04 -> 0.91 ms
// from the interleaved planes and the shorter rule, 47% of the FMA peak.)
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "conv2d_common.hpp"
#include "isa.hpp"
#include "isa_target.hpp"
#include "parallel.hpp"

#if defined(CNNFAST_ISA_AVX512) || defined(CNNFAST_ISA_AVX2)
#include <immintrin.h>
#endif

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

constexpr int VL = CNNFAST_VEC_BYTES / 4;
#include "vec_impl.hpp"  // (vec, ivec, pool_takes)

inline ivec load(const std::int32_t* p) {
  ivec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
// the first n lanes of v to p (all of them in one store when n = VL)
template <typename V, typename T>
inline void store_lanes(T* p, V v, i64 n) {
  if (n == VL) return __builtin_memcpy(p, &v, sizeof v), void();
  T lanes[VL];
  __builtin_memcpy(lanes, &v, sizeof v);
  for (i64 i = 0; i < n; ++i) p[i] = lanes[i];
}

// any lane of a comparison's mask set
inline bool any_lane(ivec mask) {
#if defined(CNNFAST_ISA_AVX2)
  return !_mm256_testz_si256(reinterpret_cast<__m256i&>(mask), reinterpret_cast<__m256i&>(mask));
#else
  std::int32_t lanes[VL];
  __builtin_memcpy(lanes, &mask, sizeof lanes);
  std::int32_t any = 0;
  for (int i = 0; i < VL; ++i) any |= lanes[i];
  return any != 0;
#endif
}
// the larger of a and b, lane by lane, for operands without NaN (either one where they are equal)
inline vec max(vec a, vec b) {
#if defined(CNNFAST_ISA_AVX2)
  const __m256 m = _mm256_max_ps(reinterpret_cast<__m256&>(a), reinterpret_cast<__m256&>(b));
  return reinterpret_cast<const vec&>(m);
#else
  return a > b ? a : b;
#endif
}

struct Windows {
  i64 Hq, Wq, Q, Qp;                // windows down and across, their number, rounded up to 16
  i64 Pp;                           // the planes' stride: Qp and one more row of windows, rounded up
  std::vector<std::int32_t> first;  // first[i*Wq + j] = (2i)*Wo + 2j, the window's top-left pixel
  explicit Windows(const ConvShape& s)
      : Hq(s.Ho / 2),
        Wq(s.Wo / 2),
        Q(Hq * Wq),
        Qp((Q + 15) / 16 * 16),
        Pp((Qp + Wq + VL + 15) / 16 * 16),  // (+ VL: build_planes' last vector of the last row)
        first(static_cast<size_t>(Qp), 0) {
    for (i64 i = 0; i < Hq; ++i)
      for (i64 j = 0; j < Wq; ++j) first[size_t(i * Wq + j)] = std::int32_t(2 * i * s.Wo + 2 * j);
  }
  i64 scratch_floats() const { return 8 * Pp + 16 * Qp; }  // (the planes, and the forward's interleaved copy)
  // D[u][v] in the planes built by build_planes
  const float* plane(const float* D, int u, int v) const { return D + ((u & 1) * 4 + v) * Pp + (u >> 1) * Wq; }
};

// the even lanes of the 2 VL floats lo, hi: (lo[0], lo[2], ..., hi[0], hi[2], ...)
inline vec even_lanes(vec lo, vec hi) {
#if CNNFAST_VEC_BYTES == 32
  return __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14);
#elif CNNFAST_VEC_BYTES == 16
  return __builtin_shufflevector(lo, hi, 0, 2, 4, 6);
#else
  float both[2 * VL], even[VL];
  store(both, lo), store(both + VL, hi);
  for (int i = 0; i < VL; ++i) even[i] = both[2 * i];
  return load(even);
#endif
}

// The planes of D[u][v][i*Wq + j] = x[2i+u-pad][2j+v-pad] (zero outside x): D[u+2][v] is D[u][v]
// one row of windows on, so only u in 0..1 and v in 0..3 are built, Hq + 1 rows of windows each,
// Pp apart (zero past the last row); win.plane(D, u, v) reads D[u][v] for u in 0..3. A row's VL
// windows at a time are the even lanes of 2 VL floats of x.
void build_planes(float* D, const float* x, const ConvShape& s, const Windows& win) {
  const i64 rows = win.Hq + 1;
  for (i64 u = 0; u < 2; ++u)
    for (i64 v = 0; v < 4; ++v) {
      float* d = D + (u * 4 + v) * win.Pp;
      // the windows j whose column 2j+v-pad lies inside x: j0 <= j < j1
      const i64 j0 = std::min(win.Wq, std::max<i64>(0, (s.pad - v + 1) / 2));
      const i64 j1 = std::max(j0, std::min(win.Wq, (s.W + s.pad - v + 1) / 2));
      for (i64 i = 0; i < rows; ++i) {
        float* row = d + i * win.Wq;
        const i64 h = 2 * i + u - s.pad;
        if (h < 0 || h >= s.H) {
          for (i64 j = 0; j < win.Wq; ++j) row[j] = 0.0f;
          continue;
        }
        const float* src = x + h * s.W + v - s.pad;  // src[2j] = x[h][2j+v-pad], inside x for j0 <= j < j1
        for (i64 j = 0; j < j0; ++j) row[j] = 0.0f;
        for (i64 j = j0; j < j1; j += VL) {
          // the lanes past j1 land on what is written next (the row's zeros, the next row, the
          // zeros past the last row); masked loads only where 2 VL floats would run past x
          const i64 at = h * s.W + 2 * j + v - s.pad, left = s.H * s.W - at;  // (floats of x from src + 2j on)
          const vec lo = left >= VL ? load(src + 2 * j) : load_first(src + 2 * j, left);
          const vec hi =
              left >= 2 * VL ? load(src + 2 * j + VL) : load_first(src + 2 * j + VL, std::max<i64>(0, left - VL));
          store(row + j, even_lanes(lo, hi));
        }
        for (i64 j = j1; j < win.Wq; ++j) row[j] = 0.0f;
      }
      for (i64 q = rows * win.Wq; q < win.Pp; ++q) d[q] = 0.0f;
    }
}

// The forward's planes, a block of VL windows at a time: B[q / VL][u*4 + v][q % VL] = D[u][v][q],
// so that the kernel reaches a block's 16 vectors from one pointer at fixed offsets (with 16
// plane pointers, AVX2's forward kept them on the stack and reloaded one for every vector it
// read: 17% of its time; the backward, with fewer values in flight, reads D as it is)
void interleave_planes(float* B, const float* D, const Windows& win) {
  for (i64 q0 = 0; q0 < win.Qp; q0 += VL)
    for (int u = 0; u < 4; ++u)
      for (int v = 0; v < 4; ++v) store(B + q0 * 16 + (u * 4 + v) * VL, load(win.plane(D, u, v) + q0));
}

// Channels k..k+KB-1 of one image's y (and, with kArgmax, argmax) from its interleaved planes B,
// VL windows at a time. With 32 vector registers (NEON) two channels at a time: 8 independent
// sums instead of 4 for FMA units of 4-cycle latency, and each plane loaded once for both. With 16
// (AVX2, SSE) one: two spill the weights and sums to the stack (AVX2 on a Zen 5, conv1 at batch
// 128: 0.58 ms a call against 0.51 for one at a time).
#if defined(CNNFAST_ISA_NEON)
constexpr int kChannelsAtOnce = 2;
#else
constexpr int kChannelsAtOnce = 1;
#endif
template <bool kArgmax, int KB>
inline void forward_channels(float* y, std::int32_t* argmax, const float* B, const float* w, const float* b, i64 k,
                             const ConvShape& s, const Windows& win) {
  const i64 Q = win.Q;
  const std::int32_t step[4] = {0, 1, std::int32_t(s.Wo),
                                std::int32_t(s.Wo + 1)};  // (a, b) = (0,0), (0,1), (1,0), (1,1)
  vec wk[KB][9], bias[KB];
  for (int c = 0; c < KB; ++c) {
    for (int t = 0; t < 9; ++t) wk[c][t] = vec{} + w[(k + c) * 9 + t];
    bias[c] = vec{} + b[k + c];  // 0 + b, as the direct path
  }
  for (i64 q0 = 0; q0 < Q; q0 += VL) {
    const float* block = B + q0 * 16;  // (these VL windows' 16 planes)
    vec out[KB][4];
    for (int c = 0; c < KB; ++c)
      for (int ab = 0; ab < 4; ++ab) out[c][ab] = bias[c];
    // each plane (u, v) loaded once and used by every window pixel (a, b) with tap
    // (r, q) = (u - a, v - b) inside 3x3; for a fixed (a, b) the taps come in (r, q) order
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const vec d = load(block + (u * 4 + v) * VL);
#pragma GCC unroll 4
        for (int ab = 0; ab < 4; ++ab) {
          const int r = u - (ab >> 1), q = v - (ab & 1);
          if (r < 0 || r > 2 || q < 0 || q > 2) continue;
#pragma GCC unroll 2
          for (int c = 0; c < KB; ++c) out[c][ab] += wk[c][r * 3 + q] * d;
        }
      }
    // max_pool2d's rule over the four, in window order, then the ReLU
    const ivec first = load(win.first.data() + q0);
    const i64 n = Q - q0 < VL ? Q - q0 : VL;
    for (int c = 0; c < KB; ++c) {
      const vec* o = out[c];
      const vec zero = {};
      vec best;
      ivec index;
      const vec sum = (o[0] + o[1]) + (o[2] + o[3]);
      if (any_lane(sum != sum)) {  // a NaN among the four (or inf - inf): the rule step by step
        best = o[0];
        index = first + step[0];
        for (int i = 1; i < 4; ++i) {
          const ivec take = pool_takes(o[i], best);
          best = take ? o[i] : best;
          index = take ? first + step[i] : index;
        }
      } else {  // no NaN: the maximum, then the first of the four equal to it (the rule's winner)
        best = max(max(o[0], o[1]), max(o[2], o[3]));
        if constexpr (kArgmax) {
          index = first + step[3];
          for (int i = 2; i >= 0; --i) index = o[i] == best ? first + step[i] : index;
        }
      }
      if constexpr (kArgmax) store_lanes(argmax + (k + c) * Q + q0, best > zero ? index : ivec{} - 1, n);
      best = best <= zero ? zero : best;  // (a maximum not > 0 gives +0; NaN stays)
      store_lanes(y + (k + c) * Q + q0, best, n);
    }
  }
}

// One image's y and, with kArgmax, its argmax (without: windows without a NaN make no index;
// conv3x3_pool2_impl.hpp's image_forward)
template <bool kArgmax>
void forward_windows(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b, const ConvShape& s,
                     const Windows& win, float* scratch) {
  float* B = scratch + 8 * win.Pp;  // (interleaved)
  build_planes(scratch, x, s, win);
  interleave_planes(B, scratch, win);
  i64 k = 0;
  for (; k + kChannelsAtOnce <= s.K; k += kChannelsAtOnce)
    forward_channels<kArgmax, kChannelsAtOnce>(y, argmax, B, w, b, k, s, win);
  for (; k < s.K; ++k) forward_channels<kArgmax, 1>(y, argmax, B, w, b, k, s, win);
}

// The backward (dw and the bias-gradient lanes; conv1 needs no dx): a window's dy goes to the one
// of its four pixels (a, b) its argmax names, so for VL windows the four d(conv) vectors are dy
// where argmax == first + step[ab], and dw[k][r][q] gathers d(conv)_ab * D[a + r][b + q] over
// (a, b) and the windows in 9 accumulators. dw_k: [K, 9]; lanes: [K, 16]. False, computing
// nothing useful, if an argmax is neither -1 nor a pixel of its window.
bool image_backward(float* dw_k, float* lanes, const float* x, const float* dy, const std::int32_t* argmax,
                    const ConvShape& s, const Windows& win, float* D) {
  const i64 Q = win.Q;
  build_planes(D, x, s, win);
  const std::int32_t step[4] = {0, 1, std::int32_t(s.Wo), std::int32_t(s.Wo + 1)};
  ivec stray = {};  // open windows whose argmax is none of their pixels
  for (i64 k = 0; k < s.K; ++k) {
    vec acc[9] = {}, bias = {};
    for (i64 q0 = 0; q0 < Q; q0 += VL) {
      ivec a;
      vec g;
      if (Q - q0 >= VL) {
        a = load(argmax + k * Q + q0), g = load(dy + k * Q + q0);
      } else {  // (past Q: closed windows)
        std::int32_t av[VL];
        float gv[VL];
        for (i64 i = 0; i < VL; ++i)
          av[i] = q0 + i < Q ? argmax[k * Q + q0 + i] : -1, gv[i] = q0 + i < Q ? dy[k * Q + q0 + i] : 0.0f;
        a = load(av), g = load(gv);
      }
      const ivec first = load(win.first.data() + q0);
      const vec zero = {};
      vec d[4];
      ivec hit = {};
      for (int ab = 0; ab < 4; ++ab) {
        const ivec m = a == first + step[ab];
        d[ab] = m ? g : zero;
        hit |= m;
      }
      stray |= (a >= 0) & ~hit;
      bias += (d[0] + d[1]) + (d[2] + d[3]);
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          // (0 past Q, as d: win.plane(D, u < 2, v) holds a row of x there, and 0 * x is NaN
          // where x is not finite)
          const vec plane = Q - q0 >= VL ? load(win.plane(D, u, v) + q0) : load_first(win.plane(D, u, v) + q0, Q - q0);
#pragma GCC unroll 4
          for (int ab = 0; ab < 4; ++ab) {
            const int r = u - (ab >> 1), q = v - (ab & 1);
            if (r < 0 || r > 2 || q < 0 || q > 2) continue;
            acc[r * 3 + q] += d[ab] * plane;
          }
        }
    }
    for (int t = 0; t < 9; ++t) {
      float l[VL];
      __builtin_memcpy(l, &acc[t], sizeof l);
      float sum = 0.0f;
      for (int j = 0; j < VL; ++j) sum += l[j];
      dw_k[k * 9 + t] = sum;
    }
    float l[VL];
    __builtin_memcpy(l, &bias, sizeof l);
    for (int j = 0; j < 16; ++j) lanes[k * 16 + j] = j < VL ? l[j] : 0.0f;
  }
  return !any_lane(stray);
}

}  // namespace

#include "conv3x3_pool2_impl.hpp"

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
