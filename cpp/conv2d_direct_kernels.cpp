// The direct path's inner loops (conv2d_direct.cpp drives them), in portable vector code compiled
// once per instruction set, with that ISA's vector width (CNNFAST_VEC_BYTES: 16 baseline/NEON,
// 32 AVX2, 64 AVX-512) and register tiles chosen for its register file: with so few taps per
// output (<= 32) each element of y or dy meets too few weights to pay for packing GEMM operands,
// so col[T, P] (im2col, an image's T shifted copies, in L1) is combined row by row.
// A forward sum runs in the same order on every ISA (b, then taps in order); a weight-gradient sum
// runs in VL interleaved lanes, VL the ISA's vector width.
#include <utility>

#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

typedef float v16 __attribute__((vector_size(64)));
constexpr int VL = CNNFAST_VEC_BYTES / 4;  // floats per vector of this ISA
#include "vec_impl.hpp"

// The forward for exactly NT taps (conv1's 9): the NT shifted copies of three 16-pixel blocks
// stay in 3*NT registers (27 of AVX-512's 32) while all K output channels go by, each block
// taking NT multiply-adds with the weights broadcast from memory: about one load per three FMAs
// instead of one per FMA (0.40 -> 0.19 ms for conv1 at batch 128, 2 threads). The same sums in
// the same order as the general loop.
template <int NT>
inline void direct_forward_taps(float* y, const float* col, const float* w, const float* b, i64 K, i64 P, i64 ld) {
  constexpr int PB = 3;  // 16-pixel blocks at a time
  for (i64 p0 = 0; p0 < P; p0 += 16 * PB) {
    v16 c[NT][PB];
    for (int t = 0; t < NT; ++t)
      for (int j = 0; j < PB; ++j) __builtin_memcpy(&c[t][j], col + t * ld + p0 + 16 * j, sizeof(v16));
    const i64 n = P - p0 < 16 * PB ? P - p0 : 16 * PB;
    for (i64 k = 0; k < K; ++k) {
      v16 acc[PB];
      for (int j = 0; j < PB; ++j) acc[j] = v16{} + b[k];
      for (int t = 0; t < NT; ++t) {
        const float wkt = w[k * NT + t];
        for (int j = 0; j < PB; ++j) acc[j] += wkt * c[t][j];
      }
      float* yk = y + k * P + p0;
      if (n == 16 * PB) {
        __builtin_memcpy(yk, acc, sizeof acc);
      } else {
        float tail[16 * PB];
        __builtin_memcpy(tail, acc, sizeof acc);
        for (i64 p = 0; p < n; ++p) yk[p] = tail[p];
      }
    }
  }
}

// y[k][p] = b[k] + sum_t w[k][t] col[t][p]     (w: [K, T] in PyTorch's (c, r, s) order; col's rows
// ld apart, ld a multiple of 192 >= P, zero past P, so whole blocks of up to 192 pixels never read
// past a row)
// Blocking: a small GEMM tile, MC output channels by NV vectors of pixels in MC*NV accumulators
// for the whole tap loop; each tap loads NV vectors of col and broadcasts MC weights for MC*NV
// multiply-adds (AVX2: 4 x 3 ymm, 12 FMAs per 7 loads; AVX-512 and NEON 6 x 4, 24 per 10; the
// plain loop, one channel at a time, took 5 loads per 4; AVX-512's earlier 4 x 4 tile ran at 57%
// of peak in a loop on L1-resident data, 6 x 4 at 73%).
// Edge blocks of pixels are computed whole (col is zero there) and stored through a buffer.
template <int MC, int NV>
inline void direct_forward_block(float* y, const float* col, const float* wk, const float* bk, i64 T, i64 P, i64 ld,
                                 i64 p0, i64 n) {
  // (every loop over the tile unrolled, so that the accumulators stay in registers: with so few
  // taps a spill of the tile around the tap loop costs a quarter of the block)
  constexpr int PX = NV * VL;  // pixels per block
  vec acc[MC][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MC; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[i][j] = vec{} + bk[i];
  for (i64 t = 0; t < T; ++t) {
    vec c[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) c[j] = load(col + t * ld + p0 + j * VL);
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) {
      const float wi = wk[i * T + t];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += wi * c[j];
    }
  }
  if (n == PX) {
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) store(y + i * P + p0 + j * VL, acc[i][j]);
    return;
  }
#pragma GCC unroll 8
  for (int i = 0; i < MC; ++i) {
    float tail[PX];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) store(tail + j * VL, acc[i][j]);
    for (i64 p = 0; p < n; ++p) y[i * P + p0 + p] = tail[p];
  }
}

template <int NV, int... MCS>
inline void direct_forward_block_n(int mc, float* y, const float* col, const float* wk, const float* bk, i64 T, i64 P,
                                   i64 ld, i64 p0, i64 n, std::integer_sequence<int, MCS...>) {
  // (a tile of mc = 1..MC channels, chosen at run time)
  ((mc == MCS + 1 ? direct_forward_block<MCS + 1, NV>(y, col, wk, bk, T, P, ld, p0, n) : void()), ...);
}

// K output channels in blocks of near-equal size <= MC (K = 20 on a 6-channel tile: 5 + 5 + 5 + 5,
// not 6 + 6 + 6 + 2, whose 2-channel tile loads 4 vectors of col per 8 multiply-adds)
template <int MC, int NV>
void direct_forward_tile(float* y, const float* col, const float* w, const float* b, i64 K, i64 T, i64 P, i64 ld) {
  constexpr int PX = NV * VL;
  const i64 blocks = (K + MC - 1) / MC;
  for (i64 p0 = 0; p0 < P; p0 += PX) {
    const i64 n = P - p0 < PX ? P - p0 : PX;
    for (i64 blk = 0; blk < blocks; ++blk) {
      const i64 k0 = K * blk / blocks, mc = K * (blk + 1) / blocks - k0;
      direct_forward_block_n<NV>(int(mc), y + k0 * P, col, w + k0 * T, b + k0, T, P, ld, p0, n,
                                 std::make_integer_sequence<int, MC>{});
    }
  }
}

void direct_forward(float* y, const float* col, const float* w, const float* b, i64 K, i64 T, i64 P, i64 ld) {
#if CNNFAST_VEC_BYTES == 64
  // AVX-512 (32 zmm): conv1's 9 taps held in registers, all channels passing by
  if (T == 9) return direct_forward_taps<9>(y, col, w, b, K, P, ld);
  direct_forward_tile<6, 4>(y, col, w, b, K, T, P, ld);  // 24 accumulators of 6 channels x 64 pixels
#elif defined(CNNFAST_ISA_NEON)
  direct_forward_tile<6, 4>(y, col, w, b, K, T, P, ld);  // 32 q registers: 24 accumulators, 4 of col
#else
  direct_forward_tile<4, 3>(y, col, w, b, K, T, P, ld);  // 16 registers: 12 accumulators, 3 of col
#endif
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

}  // namespace

void direct_forward_kernel(float* y, const float* col, const float* w, const float* b, i64 K, i64 T, i64 P, i64 ld) {
  direct_forward(y, col, w, b, K, T, P, ld);
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
