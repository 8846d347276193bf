// The direct path's inner loops (conv2d_direct.cpp drives them), in portable vector code compiled
// once per instruction set, with that ISA's vector width (CNNFAST_VEC_BYTES: 16 baseline/NEON,
// 32 AVX2, 64 AVX-512) and register tiles chosen for its register file. The forward reads each
// tap's input values where they lie in the image's zero-bordered layout, nothing packed; the
// weight gradient (few taps: <= 32) combines col[T, P] (im2col, the image's T shifted copies, in
// L1) row by row with dy.
// A forward sum runs in the same order on every ISA (b, then taps in order); a weight-gradient sum
// runs in VL interleaved lanes, VL the ISA's vector width.
#include <algorithm>
#include <utility>

#include "conv2d_common.hpp"
#include "isa.hpp"
#include "isa_target.hpp"
#if defined(CNNFAST_ISA_AVX512) || defined(CNNFAST_ISA_AVX2)
#include <immintrin.h>
#endif

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

constexpr int VL = CNNFAST_VEC_BYTES / 4;  // floats per vector of this ISA
#include "vec_impl.hpp"

// ---- the forward read in place: the taps' values where they lie in the image's layout ----
// y[k][oh*Wo + ow] = b[k] + sum_t w[k][t] src[tap_offset[t] + oh*Ws + ow]: src is the image's
// zero-bordered layout (PhaseLayout, conv2d_common.hpp), in which a tap of the consecutive output
// pixels of a row reads consecutive floats at any stride. A tile is MC output channels by NV
// segments (runs of <= VL pixels of one output row; a tile's segments may come from consecutive
// rows) in MC*NV accumulators for the whole tap loop: each tap loads NV vectors straight from src
// and broadcasts MC weights into MC*NV multiply-adds (AVX2: 4 x 3 ymm, 12 FMAs per 7 loads; AVX-512
// and NEON 6 x 4, 24 per 10; AVX-512's 4 x 4 tile ran at 57% of peak in a loop on L1-resident
// data, 6 x 4 at 73%). Before, im2col laid out T shifted copies of each image (2.4 MB for 7x7 taps
// on 3 x 64 x 64, past L2) and first layers of over 32 taps went through the panels' packed GEMM:
// read in place, 3->16 7x7 on 64 x 64 at batch 128 took 0.69-0.81x the time, 3->64 5x5 on 48 x 48
// 0.64-0.75x, a 3->32 3x3 layer 0.66-0.98x, LeNet's 1->6 5x5 0.29-0.64x (AVX-512 and AVX2, 1-2
// threads). Only the lanes past a row's last segment are computed for nothing (none when a row is
// a multiple of VL).

struct Segment {
  i64 in, out, len;  // its first pixel's offset in src (before the tap's) and in y's plane; <= VL pixels
};

// One tile: MC channels (wk: their rows of w [K, T], bk: their biases; y: the first one's plane) by
// the NV segments seg
template <int MC, int NV>
inline void rows_block(float* y, i64 P, const float* src, const i64* tap_offset, const Segment* seg, const float* wk,
                       const float* bk, i64 T) {
  vec acc[MC][NV];
  i64 in[NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) in[j] = seg[j].in;
#pragma GCC unroll 8
  for (int i = 0; i < MC; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[i][j] = vec{} + bk[i];
  for (i64 t = 0; t < T; ++t) {
    const float* at = src + tap_offset[t];
    vec c[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) c[j] = load(at + in[j]);
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) {
      const float wi = wk[i * T + t];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += wi * c[j];
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) {
    if (seg[j].len == VL) {
#pragma GCC unroll 8
      for (int i = 0; i < MC; ++i) store(y + i * P + seg[j].out, acc[i][j]);
      continue;
    }
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) store_first(y + i * P + seg[j].out, acc[i][j], seg[j].len);
  }
}

template <int NV, int... MCS>
inline void rows_block_n(int mc, float* y, i64 P, const float* src, const i64* tap_offset, const Segment* seg,
                         const float* wk, const float* bk, i64 T, std::integer_sequence<int, MCS...>) {
  ((mc == MCS + 1 ? rows_block<MCS + 1, NV>(y, P, src, tap_offset, seg, wk, bk, T) : void()), ...);
}

// The same for exactly NT taps (conv1's 9): the NT taps' vectors of NV segments stay in NT*NV
// registers (27 of AVX-512's 32) while all K output channels go by, each taking NT multiply-adds a
// segment with the weights broadcast from memory: one load per NV FMAs. The same sums in the same
// order as rows_block.
template <int NT, int NV>
inline void rows_taps(float* y, i64 P, const float* src, const i64* tap_offset, const Segment* seg, const float* w,
                      const float* b, i64 K) {
  vec c[NT][NV];
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) c[t][j] = load(src + tap_offset[t] + seg[j].in);
  for (i64 k = 0; k < K; ++k) {
    vec acc[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[j] = vec{} + b[k];
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      const float wkt = w[k * NT + t];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[j] += wkt * c[t][j];
    }
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      if (seg[j].len == VL)
        store(y + k * P + seg[j].out, acc[j]);
      else
        store_first(y + k * P + seg[j].out, acc[j], seg[j].len);
    }
  }
}

// The segments s0.. of rows oh0.. (NV of them; past the last, repeats of it that store nothing)
template <int NV>
inline void segments_from(Segment* seg, i64 s0, i64 total, i64 per_row, i64 oh0, i64 Ws, i64 Wo) {
  for (int j = 0; j < NV; ++j) {
    const i64 i = s0 + j < total ? s0 + j : total - 1, oh = oh0 + i / per_row, ow = i % per_row * VL;
    seg[j] = {oh * Ws + ow, oh * Wo + ow, s0 + j < total ? std::min<i64>(VL, Wo - ow) : 0};
  }
}

template <int MC, int NV>
void rows_forward(float* y, const float* src, i64 Ws, const i64* tap_offset, const float* w, const float* b, i64 K,
                  i64 T, i64 Wo, i64 P, i64 oh0, i64 oh1) {
  const i64 per_row = (Wo + VL - 1) / VL, total = (oh1 - oh0) * per_row, blocks = (K + MC - 1) / MC;
#if CNNFAST_VEC_BYTES == 64
  if (T == 9) {  // (AVX-512: conv1's 9 taps of 3 segments held in registers, all channels passing by)
    for (i64 s0 = 0; s0 < total; s0 += 3) {
      Segment seg[3];
      segments_from<3>(seg, s0, total, per_row, oh0, Ws, Wo);
      rows_taps<9, 3>(y, P, src, tap_offset, seg, w, b, K);
    }
    return;
  }
#endif
  // The segments in chunks of kGroups groups of NV, each chunk's groups by every block of MC channels in turn: each
  // block's stores then run along MC planes, not across all K of them a group (where y was past L2 a tile's stores
  // waited on memory: a stride-2 3->28 3x3 layer on 62 x 62 at batch 128 ran 2.2x the time per image of batch 16).
  // A first layer's chunk of input rows stays in L1 while its blocks go by. Against one group a chunk (AVX2, Zen 3,
  // batch 32-128, the same bits): that layer 1.21-1.58x faster on one and two threads, conv1 alone (1->32 3x3 on
  // 28 x 28) 1.96x, 3->40 7x7 at stride 2 on 44 x 44 1.15x, 1->48 3x3 on 60 x 60 1.08x, LeNet's 1->6 5x5 1.13x, 3->64
  // 5x5 on 48 x 48 1.05x; deeper layers, whose chunk's rows are past L1, even (64->64 5x5 on 32 x 32 and 16 x 16,
  // 32->64, 16->32 and 24->40 5x5: 0.98-1.05x, one thread); chunks of 3 groups ran at 0.72-1.01x the speed of 8, 24 at
  // 0.97-1.12x. (AVX-512's 8 groups of 4 x 16 pixels and NEON's of 4 x 4 unmeasured; AVX-512's 9 taps above keep the
  // order of before)
  constexpr i64 kGroups = 8;
  for (i64 c0 = 0; c0 < total; c0 += kGroups * NV) {
    const i64 groups = std::min(kGroups, (total - c0 + NV - 1) / NV);
    Segment seg[kGroups][NV];
    for (i64 g = 0; g < groups; ++g) segments_from<NV>(seg[g], c0 + g * NV, total, per_row, oh0, Ws, Wo);
    for (i64 blk = 0; blk < blocks; ++blk) {
      const i64 k0 = K * blk / blocks, mc = K * (blk + 1) / blocks - k0;
      for (i64 g = 0; g < groups; ++g)
        rows_block_n<NV>(int(mc), y + k0 * P, P, src, tap_offset, seg[g], w + k0 * T, b + k0, T,
                         std::make_integer_sequence<int, MC>{});
    }
  }
}

// dw[k][t] = sum_p dy[k][p] col[t][p], each sum in VL interleaved lanes (one vector), added up
// lane by lane at the end. Blocking: KB output channels by NB taps in KB*NB vector accumulators
// while one pass over the rows loads each vector of dy and of col once: KB*NB multiply-adds per
// KB+NB loads (AVX-512, NEON: 4 x 6 in 24 registers; 16 registers: 2 x 5). d[i]: channel i's row
// of dy (spare channels repeat one, and are not stored: i < kb).
#if CNNFAST_VEC_BYTES == 64 || defined(CNNFAST_ISA_NEON)
constexpr int KB = 4, NB_MAX = 6;
#else
constexpr int KB = 2, NB_MAX = 5;
#endif

template <int NB>
inline void weight_grad_tile(float* dw, i64 T, const float* const* d, int kb, const float* col, i64 P) {
  const i64 PV = P / VL * VL;
  vec acc[KB][NB];
  for (int i = 0; i < KB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = vec{};
  for (i64 p = 0; p < PV; p += VL) {
    vec dv[KB];
    for (int i = 0; i < KB; ++i) dv[i] = load(d[i] + p);
    for (int j = 0; j < NB; ++j) {
      const vec cv = load(col + j * P + p);
      for (int i = 0; i < KB; ++i) acc[i][j] += dv[i] * cv;
    }
  }
  for (int i = 0; i < kb; ++i)
    for (int j = 0; j < NB; ++j) {
      float lanes[VL];
      store(lanes, acc[i][j]);
      for (i64 p = PV; p < P; ++p) lanes[p % VL] += d[i][p] * col[j * P + p];
      float sum = 0.0f;
      for (int l = 0; l < VL; ++l) sum += lanes[l];
      dw[i * T + j] = sum;
    }
}

template <int... NBS>
inline void weight_grad_tile_n(int nb, float* dw, i64 T, const float* const* d, int kb, const float* col, i64 P,
                               std::integer_sequence<int, NBS...>) {
  // (the tile for nb = 1..NB_MAX taps, chosen at run time)
  ((nb == NBS + 1 ? weight_grad_tile<NBS + 1>(dw, T, d, kb, col, P) : void()), ...);
}

// ---- a stride-2 image's phase split (PhaseLayout::copy) ----
// even[i..i+L) = src[2i], odd[i..i+L) = src[2i + 1]: 2L floats in, two vectors of L out
template <class Lanes, size_t... Is>
inline void split_lanes(float* even, float* odd, const float* src, std::index_sequence<Is...>) {
  Lanes a, b;
  __builtin_memcpy(&a, src, sizeof a);
  __builtin_memcpy(&b, src + sizeof(Lanes) / sizeof(float), sizeof b);
  const Lanes e = __builtin_shufflevector(a, b, (2 * Is)...), o = __builtin_shufflevector(a, b, (2 * Is + 1)...);
  __builtin_memcpy(even, &e, sizeof e);
  __builtin_memcpy(odd, &o, sizeof o);
}
typedef float f32x4 __attribute__((vector_size(16)));
#if CNNFAST_VEC_BYTES >= 32
typedef float f32x8 __attribute__((vector_size(32)));
#endif
#if CNNFAST_VEC_BYTES >= 64
typedef float f32x16 __attribute__((vector_size(64)));
#endif
// the outputs i.. in steps of L lanes while 2L floats of src remain
template <class Lanes>
inline i64 split_steps(float* even, float* odd, const float* src, i64 i, i64 n_odd) {
  constexpr i64 L = sizeof(Lanes) / sizeof(float);
  for (; i + L <= n_odd; i += L) split_lanes<Lanes>(even + i, odd + i, src + 2 * i, std::make_index_sequence<L>{});
  return i;
}

}  // namespace

// x_n: [C, H, W] -> its stride-2 PhaseLayout (isa.hpp), each row split by column parity in the
// ISA's widest vectors, then narrower ones, then one by one: the even columns to one column phase,
// the odd ones to the other, the rows in order (a row phase's rows first, then the other's, took
// 1.06-1.1x as long for 16->32 on 64 x 64; scalar copies, or a table of each pixel's place, were
// a tenth of a strided 64->128 layer's forward on 16 x 16; a call a row, 1.05-1.08x the table's
// time on 8 x 8)
void split_phases2(float* dst, const float* x, const ConvShape& s, i64 plane, i64 Ws) {
  const i64 C = s.C, H = s.H, W = s.W, n_even = (W + 1) / 2, n_odd = W / 2;
  const i64 even_phase = s.pad % 2;  // (padded column w + pad: its phase (w + pad) % 2, its place (w + pad) / 2)
  const i64 even_at = even_phase * C * plane + s.pad / 2, odd_at = (1 - even_phase) * C * plane + (s.pad + 1) / 2;
  for (i64 c = 0; c < C; ++c)
    for (i64 h = 0; h < H; ++h) {
      const i64 row_phase = (h + s.pad) % 2;  // padded row h + pad = 2 row + row_phase
      if (row_phase >= s.R) continue;         // (a row phase no tap reads)
      float* at = dst + (row_phase * 2 * C + c) * plane + (h + s.pad) / 2 * Ws;
      float *even = at + even_at, *odd = at + odd_at;
      const float* src = x + (c * H + h) * W;
      i64 i = 0;
#if CNNFAST_VEC_BYTES >= 64
      i = split_steps<f32x16>(even, odd, src, i, n_odd);
#endif
#if CNNFAST_VEC_BYTES >= 32
      i = split_steps<f32x8>(even, odd, src, i, n_odd);
#endif
      i = split_steps<f32x4>(even, odd, src, i, n_odd);
      for (i64 j = i; j < n_odd; ++j) odd[j] = src[2 * j + 1];
      for (; i < n_even; ++i) even[i] = src[2 * i];
    }
}

void direct_rows_forward_kernel(float* y, const float* src, i64 Ws, const i64* tap_offset, const float* w,
                                const float* b, i64 K, i64 T, i64 Wo, i64 P, i64 oh0, i64 oh1) {
#if CNNFAST_VEC_BYTES == 64 || defined(CNNFAST_ISA_NEON)
  rows_forward<6, 4>(y, src, Ws, tap_offset, w, b, K, T, Wo, P, oh0, oh1);
#else
  rows_forward<4, 3>(y, src, Ws, tap_offset, w, b, K, T, Wo, P, oh0, oh1);
#endif
}

void direct_weight_grad_kernel(float* dw, const float* dy, const float* col, i64 K, i64 T, i64 P) {
  const i64 blocks = (T + NB_MAX - 1) / NB_MAX;
  for (i64 k0 = 0; k0 < K; k0 += KB) {
    const int kb = int(K - k0 < KB ? K - k0 : KB);
    const float* d[KB];
    for (int i = 0; i < KB; ++i) d[i] = dy + (k0 + (i < kb ? i : 0)) * P;
    for (i64 b = 0; b < blocks; ++b) {
      const i64 t0 = T * b / blocks, nb = T * (b + 1) / blocks - t0;  // blocks of near-equal size <= NB_MAX
      weight_grad_tile_n(int(nb), dw + k0 * T + t0, T, d, kb, col + t0 * P, P,
                         std::make_integer_sequence<int, NB_MAX>{});
    }
  }
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
