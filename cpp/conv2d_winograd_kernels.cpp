// conv2d's Winograd path, the kernels (conv2d_winograd.cpp chooses when and composes the
// backward), in portable vector code compiled once per instruction set.
//
// Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016): a 2x2 block of outputs of a
// 3x3 convolution from a 4x4 block of input, with 16 multiplications instead of 36:
//   Y = A^T [ sum_c (G g_kc G^T) .* (B^T d_c B) ] A
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// The sum over channels is, for each of the 16 positions xi of the 4x4 transform, a matrix
// product M_xi[K, tiles] = U_xi[K, C] V_xi[C, tiles]: 2.25x fewer multiply-adds than the direct
// convolution, the products through the ISA's register tile (MR output channels x NV vectors
// of tiles). Tiles are the vector lanes of both transforms: VL tiles of one row of tiles at a
// time, their 4x4 inputs read as even and odd columns of four input rows.
//
// Chunks of rows of tiles (an image's or several images'), each in L2: V [16][C][LS] and
// M [16][Kp][LS] for the chunk's L tiles (LS >= L + VL: a row's last vector may run past it and
// is overwritten by the next row or ignored). The chunking depends on the shapes only, and each
// output is one fixed sequence of operations: the results do not depend on the thread count.
#include <algorithm>
#include <cstring>
#include <vector>

#include "conv2d_common.hpp"
#include "isa_target.hpp"
#include "parallel.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

#include "conv2d_loops_impl.hpp"

constexpr int VL = CNNFAST_VEC_BYTES / 4;
constexpr int MR = CNNFAST_MR;
#if defined(CNNFAST_ISA_NEON)
constexpr int NV = 3;  // 8 x 12 in 24 of the 32 q registers, as gemm_microkernel_neon.cpp
#else
constexpr int NV = 2;  // MR x 2 vectors, as gemm_microkernel.cpp
#endif
constexpr int NR = NV * VL;
#include "vec_impl.hpp"

// The transforms' vectors: tiles are their lanes, so a row of Tw tiles goes in the narrowest of
// the ISA's vectors that holds it (AVX-512 on a 4 x 4 output: 4 lanes, not 16 of which 14 wasted)
typedef float v4 __attribute__((vector_size(16)));
#if CNNFAST_VEC_BYTES >= 32
typedef float v8 __attribute__((vector_size(32)));
#endif
#if CNNFAST_VEC_BYTES >= 64
typedef float v16 __attribute__((vector_size(64)));
#endif
template <class T>
inline T load_v(const float* p) {
  T v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline void store_v(float* p, T v) {
  __builtin_memcpy(p, &v, sizeof v);
}

// Lanes 0, 2, 4, .. and 1, 3, 5, .. of the floats (lo, hi); and (a0 b0 a1 b1 ..) as two vectors
inline v4 even(v4 lo, v4 hi) { return __builtin_shufflevector(lo, hi, 0, 2, 4, 6); }
inline v4 odd(v4 lo, v4 hi) { return __builtin_shufflevector(lo, hi, 1, 3, 5, 7); }
inline v4 zip_lo(v4 a, v4 b) { return __builtin_shufflevector(a, b, 0, 4, 1, 5); }
inline v4 zip_hi(v4 a, v4 b) { return __builtin_shufflevector(a, b, 2, 6, 3, 7); }
#if CNNFAST_VEC_BYTES >= 32
inline v8 even(v8 lo, v8 hi) { return __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14); }
inline v8 odd(v8 lo, v8 hi) { return __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15); }
inline v8 zip_lo(v8 a, v8 b) { return __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11); }
inline v8 zip_hi(v8 a, v8 b) { return __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15); }
#endif
#if CNNFAST_VEC_BYTES >= 64
inline v16 even(v16 lo, v16 hi) {
  return __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
}
inline v16 odd(v16 lo, v16 hi) {
  return __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
inline v16 zip_lo(v16 a, v16 b) {
  return __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}
inline v16 zip_hi(v16 a, v16 b) {
  return __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
}
#endif

// fn(T{}) with T the narrowest vector that holds Tw lanes (the widest if none does)
template <class Fn>
void by_width(i64 Tw, Fn&& fn) {
  (void)Tw;  // (16-byte vectors only: one width)
#if CNNFAST_VEC_BYTES >= 64
  if (Tw > 8) return fn(v16{});
#endif
#if CNNFAST_VEC_BYTES >= 32
  if (Tw > 4) return fn(v8{});
#endif
  fn(v4{});
}

// n floats rounded up to an odd number of 64-byte lines: rows (and planes) that far apart fall in
// different cache sets (a power-of-two stride would put the 16 planes' rows, or a tile's rows,
// in one set of L1 and evict each other)
i64 odd_lines(i64 n) {
  const i64 l = (n + 15) / 16;
  return (l % 2 ? l : l + 1) * 16;
}

// c[i*ldc + j] (+)= sum_k a[k*MR + i] * b[k*ldb + j] for an MR x NR tile (b's rows ldb apart)
void tile_product(i64 kc, const float* a, const float* b, i64 ldb, float* c, i64 ldc, bool accumulate) {
  vec acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = vec{};
  for (i64 k = 0; k < kc; ++k) {
    vec bk[NV];
    for (int j = 0; j < NV; ++j) bk[j] = load(b + k * ldb + j * VL);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const float ai = a[k * MR + i];
      for (int j = 0; j < NV; ++j) acc[i][j] += ai * bk[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) {
      float* cij = c + i * ldc + j * VL;
      store(cij, accumulate ? load(cij) + acc[i][j] : acc[i][j]);
    }
}

// w: [K, C, 3, 3] -> u: [16][Kp / MR][C][MR], planes us apart (u_kc = G g_kc G^T, position
// xi = 4*i + j; zeros for k >= K); a panel's MR values at a time
void transform_weights(float* u, i64 us, const float* w, i64 K, i64 C, i64 Kp) {
  const i64 panels = Kp / MR;
#pragma omp parallel for num_threads(threads_over(double(Kp) * C * 64, panels)) schedule(static)
  for (i64 kp = 0; kp < panels; ++kp)
    for (i64 c = 0; c < C; ++c) {
      float g[16][MR] = {};
      for (i64 i = 0; i < MR && kp * MR + i < K; ++i) {
        const float* f = w + ((kp * MR + i) * C + c) * 9;
        float t[4][3];
        for (int q = 0; q < 3; ++q) {  // G g: rows of the 4x3
          t[0][q] = f[q];
          t[1][q] = 0.5f * (f[q] + f[3 + q] + f[6 + q]);
          t[2][q] = 0.5f * (f[q] - f[3 + q] + f[6 + q]);
          t[3][q] = f[6 + q];
        }
        for (int r = 0; r < 4; ++r) {  // (G g) G^T
          g[4 * r + 0][i] = t[r][0];
          g[4 * r + 1][i] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
          g[4 * r + 2][i] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
          g[4 * r + 3][i] = t[r][2];
        }
      }
      for (int xi = 0; xi < 16; ++xi) std::memcpy(u + xi * us + (kp * C + c) * MR, g[xi], sizeof g[xi]);
    }
}

// One row of tiles from its four input rows (rows: [4][Wr], zero-padded) -> v[xi*vs + tw]
template <class T>
void transform_input_row(float* v, i64 vs, const float* rows, i64 Wr, i64 Tw) {
  constexpr int W = sizeof(T) / 4;
  for (i64 tw0 = 0; tw0 < Tw; tw0 += W) {
    T t[4][4];  // t[i][j] = (d B)[i][j]: along the columns first
    for (int i = 0; i < 4; ++i) {
      const float* r = rows + i * Wr + 2 * tw0;
      const T lo = load_v<T>(r), hi = load_v<T>(r + W), lo2 = load_v<T>(r + 2), hi2 = load_v<T>(r + 2 + W);
      const T d0 = even(lo, hi), d1 = odd(lo, hi), d2 = even(lo2, hi2), d3 = odd(lo2, hi2);
      t[i][0] = d0 - d2;
      t[i][1] = d1 + d2;
      t[i][2] = d2 - d1;
      t[i][3] = d1 - d3;
    }
    float* out = v + tw0;
    for (int j = 0; j < 4; ++j) {  // then B^T (d B) along the rows
      store_v(out + (0 * 4 + j) * vs, t[0][j] - t[2][j]);
      store_v(out + (1 * 4 + j) * vs, t[1][j] + t[2][j]);
      store_v(out + (2 * 4 + j) * vs, t[2][j] - t[1][j]);
      store_v(out + (3 * 4 + j) * vs, t[1][j] - t[3][j]);
    }
  }
}

// Rows of tiles th0..th1 of one input plane (x: [H, W]) -> v[xi*vs + (th - th0)*Tw + tw] for tw < Tw
// (and up to the next multiple of VL: garbage, which the next row overwrites or the caller
// ignores), through the zero-padded input rows they read, copied once into rows: [2*(th1-th0)+2][Wr]
void transform_input_rows(float* v, i64 vs, const float* x, i64 H, i64 W, i64 pad, i64 th0, i64 th1, i64 Tw,
                          float* rows, i64 Wr) {
  for (i64 i = 0; i < 2 * (th1 - th0) + 2; ++i) {
    float* r = rows + i * Wr;
    const i64 h = 2 * th0 + i - pad;
    if (h < 0 || h >= H) {
      std::fill(r, r + Wr, 0.0f);
      continue;
    }
    std::fill(r, r + pad, 0.0f);
    std::memcpy(r + pad, x + h * W, sizeof(float) * size_t(W));
    std::fill(r + pad + W, r + Wr, 0.0f);
  }
  by_width(Tw, [&](auto lanes) {
    for (i64 th = th0; th < th1; ++th)
      transform_input_row<decltype(lanes)>(v + (th - th0) * Tw, vs, rows + 2 * (th - th0) * Wr, Wr, Tw);
  });
}

// m[xi*ms + tw] for a row of tiles th of channel k -> y rows 2th, 2th+1 of that plane (y: [Ho, Wo]),
// + bias
template <class T>
void transform_output_row_w(float* y, i64 Ho, i64 Wo, const float* m, i64 ms, i64 th, i64 Tw, float bias) {
  constexpr int W = sizeof(T) / 4;
  for (i64 tw0 = 0; tw0 < Tw; tw0 += W) {
    T s[2][4];  // (A^T M) rows
    for (int j = 0; j < 4; ++j) {
      const T m0 = load_v<T>(m + (0 * 4 + j) * ms + tw0), m1 = load_v<T>(m + (1 * 4 + j) * ms + tw0);
      const T m2 = load_v<T>(m + (2 * 4 + j) * ms + tw0), m3 = load_v<T>(m + (3 * 4 + j) * ms + tw0);
      s[0][j] = m0 + m1 + m2;
      s[1][j] = m1 - m2 - m3;
    }
    const i64 w0 = 2 * tw0, width = std::min<i64>(2 * W, Wo - w0);
    for (int i = 0; i < 2 && 2 * th + i < Ho; ++i) {
      const T y0 = s[i][0] + s[i][1] + s[i][2] + bias, y1 = s[i][1] - s[i][2] - s[i][3] + bias;
      float* out = y + (2 * th + i) * Wo + w0;
      if (width == 2 * W) {
        store_v(out, zip_lo(y0, y1));
        store_v(out + W, zip_hi(y0, y1));
      } else {
        float pairs[2 * W];
        store_v(pairs, zip_lo(y0, y1));
        store_v(pairs + W, zip_hi(y0, y1));
        std::memcpy(out, pairs, sizeof(float) * size_t(width));
      }
    }
  }
}

void transform_output_row(float* y, i64 Ho, i64 Wo, const float* m, i64 ms, i64 th, i64 Tw, float bias) {
  by_width(Tw, [&](auto lanes) { transform_output_row_w<decltype(lanes)>(y, Ho, Wo, m, ms, th, Tw, bias); });
}

// The weight gradient's side, F(3x3, 2x2) (the same algorithm transposed):
//   dW_kc = G^T [ sum over tiles (A e_k A^T) .* (B^T d_c B) ] G,
// e_k a 2x2 block of dy, d_c the 4x4 block of input it met, A = (A^T)^T = [1 0; 1 1; 1 -1; 0 -1].
// Rows of tiles th0..th1 of one dy plane (dy: [Ho, Wo], Ho and Wo even) -> e[xi*es + (th - th0)*Tw + tw]
// (A e A^T; lanes past Tw up to the next multiple of VL are garbage, overwritten by the next row),
// through rows: [2][Wr] (a row with zeros after it: the last vector may read past Wo)
template <class T>
void transform_dy_rows_w(float* e, i64 es, const float* dy, i64 Wo, i64 th0, i64 th1, i64 Tw, float* rows, i64 Wr) {
  constexpr int W = sizeof(T) / 4;
  for (i64 th = th0; th < th1; ++th) {
    for (int i = 0; i < 2; ++i) {
      std::memcpy(rows + i * Wr, dy + (2 * th + i) * Wo, sizeof(float) * size_t(Wo));
      std::fill(rows + i * Wr + Wo, rows + (i + 1) * Wr, 0.0f);
    }
    float* out = e + (th - th0) * Tw;
    for (i64 tw0 = 0; tw0 < Tw; tw0 += W) {
      T a[2][4];  // (e A^T)[i][j]: along the columns first
      for (int i = 0; i < 2; ++i) {
        const T lo = load_v<T>(rows + i * Wr + 2 * tw0), hi = load_v<T>(rows + i * Wr + 2 * tw0 + W);
        const T e0 = even(lo, hi), e1 = odd(lo, hi);
        a[i][0] = e0;
        a[i][1] = e0 + e1;
        a[i][2] = e0 - e1;
        a[i][3] = -e1;
      }
      for (int j = 0; j < 4; ++j) {  // then A (e A^T) along the rows
        store_v(out + (0 * 4 + j) * es + tw0, a[0][j]);
        store_v(out + (1 * 4 + j) * es + tw0, a[0][j] + a[1][j]);
        store_v(out + (2 * 4 + j) * es + tw0, a[0][j] - a[1][j]);
        store_v(out + (3 * 4 + j) * es + tw0, -a[1][j]);
      }
    }
  }
}

void transform_dy_rows(float* e, i64 es, const float* dy, i64 Wo, i64 th0, i64 th1, i64 Tw, float* rows, i64 Wr) {
  by_width(Tw, [&](auto lanes) { transform_dy_rows_w<decltype(lanes)>(e, es, dy, Wo, th0, th1, Tw, rows, Wr); });
}

// rows: [n][ld] (n rows of `len` values) -> packed: [len][width] (row i's values down column i;
// columns n..width zero), the layout tile_product reads its operands in
void pack_columns(float* packed, i64 width, const float* rows, i64 ld, i64 n, i64 len) {
  for (i64 l = 0; l < len; ++l) {
    float* out = packed + l * width;
    for (i64 i = 0; i < n; ++i) out[i] = rows[i * ld + l];
    for (i64 i = n; i < width; ++i) out[i] = 0.0f;
  }
}

// Chunks of rows of tiles, for N images of Th x Tw tiles whose V and M (or E) hold `channels`
// planes of 16 positions: about 48 KB a position (768 KB for the 16), at least one row of tiles;
// over images when an image has fewer tiles. Depends on the shapes only, never on the threads.
struct TileChunks {
  i64 rows_total, rows_per_chunk, chunks;
  i64 L_max;  // tiles in a chunk
  i64 Hr;     // input rows a chunk's rows of tiles read, per image
  TileChunks(i64 N, i64 Th, i64 Tw, i64 channels)
      : rows_total(N * Th),
        rows_per_chunk(
            std::max<i64>(1, std::min<i64>(rows_total, (i64(768) << 10) / std::max<i64>(16 * channels * Tw * 4, 1)))),
        chunks((rows_total + rows_per_chunk - 1) / rows_per_chunk),
        L_max(rows_per_chunk * Tw),
        Hr(2 * std::min(Th, rows_per_chunk) + 2) {}
};

// fn(n, th0, th1, l0) for each image n of the chunk's rows of tiles r0..r1: its rows th0..th1,
// whose tiles start at lane l0 of the chunk
template <class Fn>
void by_image(i64 r0, i64 r1, i64 Th, i64 Tw, Fn&& fn) {
  for (i64 r = r0; r < r1;) {
    const i64 n = r / Th, th0 = r % Th, th1 = std::min(Th, th0 + (r1 - r));
    fn(n, th0, th1, (r - r0) * Tw);
    r += th1 - th0;
  }
}

}  // namespace

extern const int winograd_panel_tiles = NR;  // (the ISA table's: conv2d.cpp's choice of path)

// x: [N, C, H, W], w: [K, C, 3, 3], b: [K] (may be null: no bias) -> y: [N, K, Ho, Wo]
void winograd_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N) {
  const i64 C = s.C, K = s.K, H = s.H, W = s.W, Ho = s.Ho, Wo = s.Wo;
  const i64 Th = (Ho + 1) / 2, Tw = (Wo + 1) / 2, Twv = (Tw + VL - 1) / VL * VL;
  const i64 Kp = (K + MR - 1) / MR * MR, Wr = 2 * Twv + 2;
  const i64 us = odd_lines(Kp * C);
  ScratchFloats u(size_t(16) * us);
  transform_weights(u.get(), us, w, K, C, Kp);

  const TileChunks ch(N, Th, Tw, C + Kp);
  const i64 LS = odd_lines((ch.L_max + VL + NR - 1) / NR * NR);
  const i64 vs = odd_lines(C * LS), ms = odd_lines(Kp * LS);  // V's and M's planes this far apart
  const i64 kc = C <= 320 ? C : 256;
  const size_t per_thread = size_t(16 * (vs + ms)) + lines(size_t(ch.Hr) * Wr);
  // a single chunk (one image): its input transforms (by channel), 16 products and output
  // transforms (by channel) over the threads instead; one thread's transforms left the other idle.
  // So too every chunk in turn when the transformed weights outgrow half of L2 (16 x 256 x 128
  // floats, 2 MB, for 128->256) and the chunks are few: chunks side by side each streamed all of
  // them for a few tiles, where split by product each thread keeps its half (128->256 on 4 x 4 at
  // batch 32, two threads: 1.19 -> 1.07 ms on AVX-512, 1.53 -> 1.10 on AVX2; at batch 128, 16
  // chunks, side by side was faster on AVX-512: 3.47 against 3.75 ms)
  const int threads = threads_over(double(N) * K * C * 16 * Th * Tw, 16);
  const bool heavy = 16.0 * Kp * C * sizeof(float) > double(1 << 20) && ch.chunks < 4 * threads;
  const int inner = (ch.chunks == 1 || heavy) && double(N) * K * C * 9 * Ho * Wo >= kSplitChunkWork ? threads : 1;
  const int nt = inner > 1 ? 1 : threads_over(double(N) * K * C * 16 * Th * Tw, ch.chunks);
  ScratchFloats scratch(size_t(nt) * per_thread), inner_rows(inner > 1 ? size_t(inner) * lines(size_t(ch.Hr) * Wr) : 0);
  for_each_chunk(ch.chunks, nt, [&](i64 chunk) __attribute__((always_inline)) {
    float* v = scratch.get() + size_t(omp_get_thread_num()) * per_thread;  // [16][C][LS], planes vs apart
    float* m = v + 16 * vs;                                                // [16][Kp][LS], planes ms apart
    float* rows = m + 16 * ms;                                             // [Hr][Wr]
    const i64 r0 = chunk * ch.rows_per_chunk, r1 = std::min(ch.rows_total, r0 + ch.rows_per_chunk);
    for_each_over(C, inner, [&](i64 c) __attribute__((always_inline)) {
      float* rows_c = inner > 1 ? inner_rows.get() + size_t(omp_get_thread_num()) * lines(size_t(ch.Hr) * Wr) : rows;
      by_image(r0, r1, Th, Tw, [&](i64 n, i64 th0, i64 th1, i64 l0) {
        transform_input_rows(v + c * LS + l0, vs, x + (n * C + c) * H * W, H, W, s.pad, th0, th1, Tw, rows_c, Wr);
      });
    });
    const i64 L = (r1 - r0) * Tw, panels = (L + NR - 1) / NR;
    for_each_over(16, inner, [&](i64 xi) __attribute__((always_inline)) {
      const float* uxi = u.get() + size_t(xi) * us;
      const float* vxi = v + size_t(xi) * vs;
      float* mxi = m + size_t(xi) * ms;
      for (i64 p = 0; p < panels; ++p)
        for (i64 k0 = 0; k0 < Kp; k0 += MR)
          for (i64 c0 = 0; c0 < C; c0 += kc)
            tile_product(std::min(kc, C - c0), uxi + (k0 * C + c0 * MR), vxi + c0 * LS + p * NR, LS,
                         mxi + k0 * LS + p * NR, LS, c0 > 0);
    });
    for_each_over(K, inner, [&](i64 k) __attribute__((always_inline)) {
      for (i64 r = r0; r < r1; ++r) {
        const i64 n = r / Th, th = r % Th, l0 = (r - r0) * Tw;
        transform_output_row(y + (n * K + k) * Ho * Wo, Ho, Wo, m + k * LS + l0, ms, th, Tw, b ? b[k] : 0.0f);
      }
    });
  });
}

// x: [N, C, H, W], dy: [N, K, Ho, Wo] (Ho, Wo even) -> dw: [K, C, 3, 3], by F(3x3, 2x2). Chunks of
// rows of tiles as the forward's; their products summed into a fixed number of groups of
// consecutive chunks, then the groups in order: the same sums for any number of threads.
void winograd_weight_grad(float* dw, const float* x, const float* dy, const ConvShape& s, i64 N) {
  const i64 C = s.C, K = s.K, H = s.H, W = s.W, Ho = s.Ho, Wo = s.Wo;
  const i64 Th = Ho / 2, Tw = Wo / 2, Twv = (Tw + VL - 1) / VL * VL, Wr = 2 * Twv + 2;
  const i64 Kp = (K + MR - 1) / MR * MR, Cp = (C + NR - 1) / NR * NR;
  const TileChunks ch(N, Th, Tw, C + K);
  const i64 chunks = ch.chunks, groups = std::min<i64>(chunks, 8), LS = odd_lines(ch.L_max + VL);
  const i64 vs = odd_lines(C * LS), es = odd_lines(K * LS);
  const size_t packed = lines(size_t(ch.L_max) * Kp) + lines(size_t(ch.L_max) * Cp);
  const size_t per_thread = size_t(16 * (vs + es)) + lines(size_t(ch.Hr) * Wr) + packed;
  const int nt = threads_over(double(N) * K * C * 16 * Th * Tw, groups);
  // A single chunk (one image, or a few small ones) is one group, which one thread made while the
  // other waited: there its transforms go over the channels and its 16 products over the threads
  // (the same products, each tile's sum in the same order)
  const int inner = chunks == 1 ? threads_over(double(N) * K * C * 16 * Th * Tw, 16) : 1;
  ScratchFloats scratch(size_t(inner > 1 ? 0 : nt) * per_thread), sums(size_t(groups) * 16 * Kp * Cp);
  // channel j (input channel j, or dy's channel j - C) of the tiles of rows r0..r1 -> v or e
  auto transform = [&](i64 j, i64 r0, i64 r1, float* v, float* e, float* rows) {
    by_image(r0, r1, Th, Tw, [&](i64 n, i64 th0, i64 th1, i64 l0) {
      if (j < C)
        transform_input_rows(v + j * LS + l0, vs, x + (n * C + j) * H * W, H, W, s.pad, th0, th1, Tw, rows, Wr);
      else
        transform_dy_rows(e + (j - C) * LS + l0, es, dy + (n * K + j - C) * Ho * Wo, Wo, th0, th1, Tw, rows, Wr);
    });
  };
  // M_xi[K][C] (+)= E_xi[K][L] V_xi[C][L]^T, the L tiles as the depth (ep, vt: the packed operands)
  auto product = [&](int xi, i64 L, const float* v, const float* e, float* ep, float* vt, float* mxi, bool accumulate) {
    for (i64 k0 = 0; k0 < Kp; k0 += MR)
      pack_columns(ep + k0 * L, MR, e + xi * es + k0 * LS, LS, std::max<i64>(0, std::min<i64>(MR, K - k0)), L);
    pack_columns(vt, Cp, v + xi * vs, LS, C, L);
    for (i64 k0 = 0; k0 < Kp; k0 += MR)
      for (i64 c0 = 0; c0 < Cp; c0 += NR) tile_product(L, ep + k0 * L, vt + c0, Cp, mxi + k0 * Cp + c0, Cp, accumulate);
  };
  if (inner > 1) {
    const size_t mine = lines(size_t(ch.Hr) * Wr) + packed;  // rows, ep, vt: each thread's
    ScratchFloats planes(size_t(16) * (vs + es)), own(size_t(inner) * mine);
    float* v = planes.get();  // [16][C][LS]
    float* e = v + 16 * vs;   // [16][K][LS]
#pragma omp parallel num_threads(inner)
    {
      float* rows = own.get() + size_t(omp_get_thread_num()) * mine;
      float* ep = rows + lines(size_t(ch.Hr) * Wr);
      float* vt = ep + lines(size_t(ch.L_max) * Kp);
#pragma omp for schedule(static)
      for (i64 j = 0; j < C + K; ++j) transform(j, 0, ch.rows_total, v, e, rows);
#pragma omp for schedule(static)
      for (int xi = 0; xi < 16; ++xi)
        product(xi, ch.rows_total * Tw, v, e, ep, vt, sums.get() + size_t(xi) * Kp * Cp, false);
    }
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 group = 0; group < (inner > 1 ? 0 : groups); ++group) {
    float* v = scratch.get() + size_t(omp_get_thread_num()) * per_thread;  // [16][C][LS], planes vs apart
    float* e = v + 16 * vs;                                                // [16][K][LS], planes es apart
    float* rows = e + 16 * es;                                             // [Hr][Wr]
    float* ep = rows + lines(size_t(ch.Hr) * Wr);                          // e^T in panels: [Kp / MR][L][MR]
    float* vt = ep + lines(size_t(ch.L_max) * Kp);                         // v^T: [L][Cp]
    float* m = sums.get() + size_t(group) * 16 * Kp * Cp;                  // [16][Kp][Cp]
    for (i64 chunk = group * chunks / groups; chunk < (group + 1) * chunks / groups; ++chunk) {
      const i64 r0 = chunk * ch.rows_per_chunk, r1 = std::min(ch.rows_total, r0 + ch.rows_per_chunk);
      for (i64 j = 0; j < C + K; ++j) transform(j, r0, r1, v, e, rows);
      for (int xi = 0; xi < 16; ++xi)
        product(xi, (r1 - r0) * Tw, v, e, ep, vt, m + size_t(xi) * Kp * Cp, chunk > group * chunks / groups);
    }
  }
  std::vector<float> total(size_t(16) * Kp * Cp);
  sum_parts(total.data(), sums.get(), groups, 16 * Kp * Cp);
  for (i64 k = 0; k < K; ++k)  // dW = G^T M G
    for (i64 c = 0; c < C; ++c) {
      float mm[4][4], t[3][4];
      for (int xi = 0; xi < 16; ++xi) mm[xi / 4][xi % 4] = total[size_t((xi * Kp + k) * Cp + c)];
      for (int j = 0; j < 4; ++j) {
        t[0][j] = mm[0][j] + 0.5f * (mm[1][j] + mm[2][j]);
        t[1][j] = 0.5f * (mm[1][j] - mm[2][j]);
        t[2][j] = 0.5f * (mm[1][j] + mm[2][j]) + mm[3][j];
      }
      float* out = dw + (k * C + c) * 9;
      for (int i = 0; i < 3; ++i) {
        out[i * 3 + 0] = t[i][0] + 0.5f * (t[i][1] + t[i][2]);
        out[i * 3 + 1] = 0.5f * (t[i][1] - t[i][2]);
        out[i * 3 + 2] = 0.5f * (t[i][1] + t[i][2]) + t[i][3];
      }
    }
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
