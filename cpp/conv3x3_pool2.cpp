// conv2d (one input channel, 3x3) + ReLU + 2x2 max-pool in registers, in portable vector code
// compiled once per instruction set without its own version (baseline, AVX2, NEON; AVX-512 has
// conv3x3_pool2_avx512.cpp): the default model's first layer, conv1, whose convolution output is
// never stored. The same method as the AVX-512 file, VL windows at a time (VL = the ISA's vector
// width in floats: 8 on AVX2, whose 16 ymm registers hold the channel's 9 weights, the window's
// 4 sums and a plane).
//
// A window's four conv outputs (2i+a, 2j+b), a, b in {0, 1}, read x at (2i+a+r-pad, 2j+b+q-pad):
// only a+r and b+q (0..3 each) matter, so the image is first split into 16 subsampled planes
// D[u][v][i*Wq + j] = x[2i+u-pad][2j+v-pad] (zero outside x; 11 KB for conv1, and as much again
// for the forward's copy interleaved by blocks of VL windows: in L1). Then, VL windows at a time, a
// channel's four outputs per window are four accumulators of 9 multiply-adds, and the window's
// maximum and argmax are picked in registers with max_pool2d's rule (first maximum, a NaN wins;
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
  std::vector<std::int32_t> first;  // first[i*Wq + j] = (2i)*Wo + 2j, the window's top-left pixel
  explicit Windows(const ConvShape& s)
      : Hq(s.Ho / 2), Wq(s.Wo / 2), Q(Hq * Wq), Qp((Q + 15) / 16 * 16), first(static_cast<size_t>(Qp), 0) {
    for (i64 i = 0; i < Hq; ++i)
      for (i64 j = 0; j < Wq; ++j) first[size_t(i * Wq + j)] = std::int32_t(2 * i * s.Wo + 2 * j);
  }
  i64 scratch_floats() const { return 32 * Qp; }  // (the planes, and the forward's interleaved copy)
};

// D[u][v][q] = x[2i+u-pad][2j+v-pad] for window q = i*Wq + j (zero outside x and past Q)
void build_planes(float* D, const float* x, const ConvShape& s, const Windows& win) {
  for (i64 u = 0; u < 4; ++u)
    for (i64 v = 0; v < 4; ++v) {
      float* d = D + (u * 4 + v) * win.Qp;
      // the windows j whose column 2j+v-pad lies inside x: j0 <= j < j1
      const i64 j0 = std::min(win.Wq, std::max<i64>(0, (s.pad - v + 1) / 2));
      const i64 j1 = std::max(j0, std::min(win.Wq, (s.W + s.pad - v + 1) / 2));
      for (i64 i = 0; i < win.Hq; ++i) {
        float* row = d + i * win.Wq;
        const i64 h = 2 * i + u - s.pad;
        if (h < 0 || h >= s.H) {
          for (i64 j = 0; j < win.Wq; ++j) row[j] = 0.0f;
          continue;
        }
        const float* src = x + h * s.W + v - s.pad;  // src[2j] = x[h][2j+v-pad]
        for (i64 j = 0; j < j0; ++j) row[j] = 0.0f;
        for (i64 j = j0; j < j1; ++j) row[j] = src[2 * j];
        for (i64 j = j1; j < win.Wq; ++j) row[j] = 0.0f;
      }
      for (i64 q = win.Q; q < win.Qp; ++q) d[q] = 0.0f;
    }
}

// The forward's planes, a block of VL windows at a time: B[q / VL][u*4 + v][q % VL] = D[u][v][q],
// so that the kernel reaches a block's 16 vectors from one pointer at fixed offsets (with 16
// plane pointers, AVX2's forward kept them on the stack and reloaded one for every vector it
// read: 17% of its time; the backward, with fewer values in flight, reads D as it is)
void interleave_planes(float* B, const float* D, const Windows& win) {
  for (i64 q0 = 0; q0 < win.Qp; q0 += VL)
    for (i64 plane = 0; plane < 16; ++plane) store(B + q0 * 16 + plane * VL, load(D + plane * win.Qp + q0));
}

// One image's y and, with kArgmax, its argmax (without: windows without a NaN make no index;
// conv3x3_pool2_impl.hpp's image_forward)
template <bool kArgmax>
void forward_windows(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b, const ConvShape& s,
                     const Windows& win, float* scratch) {
  const i64 Q = win.Q;
  float* D = scratch + 16 * win.Qp;  // (interleaved)
  build_planes(scratch, x, s, win);
  interleave_planes(D, scratch, win);
  const std::int32_t step[4] = {0, 1, std::int32_t(s.Wo),
                                std::int32_t(s.Wo + 1)};  // (a, b) = (0,0), (0,1), (1,0), (1,1)
  for (i64 k = 0; k < s.K; ++k) {
    vec wk[9];
    for (int t = 0; t < 9; ++t) wk[t] = vec{} + w[k * 9 + t];
    const vec bias = vec{} + b[k];  // 0 + b, as the direct path
    for (i64 q0 = 0; q0 < Q; q0 += VL) {
      const float* block = D + q0 * 16;  // (these VL windows' 16 planes)
      vec out[4] = {bias, bias, bias, bias};
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
            out[ab] += wk[r * 3 + q] * d;
          }
        }
      // max_pool2d's rule over the four, in window order, then the ReLU
      const ivec first = load(win.first.data() + q0);
      const vec zero = {};
      vec best;
      ivec index;
      const vec sum = (out[0] + out[1]) + (out[2] + out[3]);
      if (any_lane(sum != sum)) {  // a NaN among the four (or inf - inf): the rule step by step
        best = out[0];
        index = first + step[0];
        for (int i = 1; i < 4; ++i) {
          const ivec take = pool_takes(out[i], best);
          best = take ? out[i] : best;
          index = take ? first + step[i] : index;
        }
      } else {  // no NaN: the maximum, then the first of the four equal to it (the rule's winner)
        best = max(max(out[0], out[1]), max(out[2], out[3]));
        if constexpr (kArgmax) {
          index = first + step[3];
          for (int i = 2; i >= 0; --i) index = out[i] == best ? first + step[i] : index;
        }
      }
      const i64 n = Q - q0 < VL ? Q - q0 : VL;
      if constexpr (kArgmax) store_lanes(argmax + k * Q + q0, best > zero ? index : ivec{} - 1, n);
      best = best <= zero ? zero : best;  // (a maximum not > 0 gives +0; NaN stays)
      store_lanes(y + k * Q + q0, best, n);
    }
  }
}

// The backward (dw and the bias-gradient lanes; conv1 needs no dx): a window's dy goes to the one
// of its four pixels (a, b) its argmax names, so for VL windows the four d(conv) vectors are dy
// where argmax == first + step[ab], and dw[k][r][q] gathers d(conv)_ab * D[a + r][b + q] over
// (a, b) and the windows in 9 accumulators. dw_k: [K, 9]; lanes: [K, 16]. False, computing
// nothing useful, if an argmax is neither -1 nor a pixel of its window.
bool image_backward(float* dw_k, float* lanes, const float* x, const float* dy, const std::int32_t* argmax,
                    const ConvShape& s, const Windows& win, float* D) {
  const i64 Q = win.Q, Qp = win.Qp;
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
          const vec plane = load(D + (u * 4 + v) * Qp + q0);
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
