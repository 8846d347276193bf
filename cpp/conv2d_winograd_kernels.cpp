// conv2d's Winograd path, the kernels (conv2d_winograd.cpp chooses when and composes the
// backward), in portable vector code compiled once per instruction set.
//
// Winograd's minimal filtering F(m x m, 3x3) (Lavin & Gray, 2016): an m x m block of outputs of a
// 3x3 convolution from an a x a block of input (a = m + 2), with a^2 multiplications instead of
// 9 m^2:
//   Y = A^T [ sum_c (G g_kc G^T) .* (B^T d_c B) ] A
// F(2x2, 3x3): 16 multiplications for 4 outputs (2.25x fewer than direct),
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// F(4x4, 3x3): 36 for 16 (4x fewer), from the points 0, 1, -1, 2, -2 and infinity,
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
//   G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1],
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
// The sum over channels is, for each of the a^2 positions xi of the transform, a matrix product
// M_xi[K, tiles] = U_xi[K, C] V_xi[C, tiles], through the ISA's register tile (MR output channels
// x NV vectors of tiles). Tiles are the vector lanes of both transforms. F(2x2): VL tiles of one
// row of tiles at a time, their inputs read as even and odd columns of four input rows. F(4x4):
// VL consecutive tiles of the chunk, whatever row they lie in, from staged 6 x 6 input blocks and
// into staged 4 x 4 output blocks (on a 16 x 16 output its rows of 4 tiles would fill a quarter of
// AVX-512's lanes), and the chunks sized to fill the products' panels.
//
// Chunks of rows of tiles (an image's or several images'), each in L2: V [a^2][C][LS] and
// M [a^2][Kp][LS] for the chunk's L tiles (LS >= L + VL: a row's last vector may run past it and
// is overwritten by the next row or ignored). The chunking depends on the shapes only, and each
// output is one fixed sequence of operations: the results do not depend on the thread count. (The
// stride-2 transforms, further down, have their own chunking, stride2_products.)
#include <algorithm>
#include <array>
#include <cstring>
#include <numeric>
#include <vector>

#include "conv2d_common.hpp"
#include "isa_target.hpp"
#include "parallel.hpp"

#if defined(CNNFAST_ISA_AVX512) || defined(CNNFAST_ISA_AVX2)
#include <immintrin.h>
#endif

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

// dst[j*ldd + i] = src[i*lds + j] (i < rows, j < cols), 0 for rows <= i < rows_out: the ISA's
// register transposes (conv2d_panels_impl.hpp)
void transpose(float* dst, i64 ldd, const float* src, i64 lds, i64 rows, i64 cols, i64 rows_out);

namespace {

#include "vec_impl.hpp"
#include "conv2d_loops_impl.hpp"  // (after vec_impl.hpp: copy_row's masked tail)
#include "tile_product_impl.hpp"  // VL, MR, NV, NR, tile_product

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

// w: [K, C, 3, 3] -> u: [a^2][Kp / MR][C][MR], planes us apart (u_kc = G g_kc G^T, position
// xi = a*i + j; zeros for k >= K); a panel's MR channels at a time, each step of the transform a
// loop over them that the compiler vectorizes (channel by channel, this transform was 30% of
// 128->256's dx on 4 x 4 at batch 32)
template <int M>
void transform_weights(float* u, i64 us, const float* w, i64 K, i64 C, i64 Kp) {
  constexpr int A = M + 2;
  const i64 panels = Kp / MR;
  // out[r][i] = (G v)[r] for the 3 values v0[i], v1[i], v2[i] (a kernel column, then a row of G g)
  auto apply_g = [](const float* v0, const float* v1, const float* v2, float (*out)[MR]) {
    for (int i = 0; i < MR; ++i) {
      if constexpr (M == 2) {
        out[0][i] = v0[i];
        out[1][i] = 0.5f * (v0[i] + v1[i] + v2[i]);
        out[2][i] = 0.5f * (v0[i] - v1[i] + v2[i]);
        out[3][i] = v2[i];
      } else {
        const float even = v0[i] * (1.0f / 24) + v2[i] * (1.0f / 6), odd = v1[i] * (1.0f / 12);
        out[0][i] = 0.25f * v0[i];
        out[1][i] = -(1.0f / 6) * (v0[i] + v1[i] + v2[i]);
        out[2][i] = -(1.0f / 6) * (v0[i] - v1[i] + v2[i]);
        out[3][i] = even + odd;
        out[4][i] = even - odd;
        out[5][i] = v2[i];
      }
    }
  };
  constexpr i64 CB = 16;  // (input channels a step: their MR rows of w read in order, 7 KB of f)
#pragma omp parallel for num_threads(threads_over(double(Kp) * C * 4 * A * A, panels)) schedule(static)
  for (i64 kp = 0; kp < panels; ++kp)
    for (i64 c0 = 0; c0 < C; c0 += CB) {
      const i64 cb = std::min(CB, C - c0);
      float f[CB][9][MR];  // f[cc][t][i]: tap t of input channel c0 + cc, output channel kp*MR + i (0 past K)
      for (int i = 0; i < MR; ++i) {
        const bool inside = kp * MR + i < K;
        const float* wk = inside ? w + ((kp * MR + i) * C + c0) * 9 : w;
        for (i64 cc = 0; cc < cb; ++cc)
          for (int t = 0; t < 9; ++t) f[cc][t][i] = inside ? wk[cc * 9 + t] : 0.0f;
      }
      for (i64 cc = 0; cc < cb; ++cc) {
        const i64 c = c0 + cc;
        float t[3][A][MR];  // (G g)^T: t[q][r] = (G g)[r][q]
        for (int q = 0; q < 3; ++q) apply_g(f[cc][q], f[cc][3 + q], f[cc][6 + q], t[q]);
        for (int r = 0; r < A; ++r) {  // (G g) G^T, a row at a time: straight into u
          float row[A][MR];
          apply_g(t[0][r], t[1][r], t[2][r], row);
          for (int j = 0; j < A; ++j) std::memcpy(u + (A * r + j) * us + (kp * C + c) * MR, row[j], sizeof row[j]);
        }
      }
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

// ---- F(4x4): its tiles in the lanes of whole vectors, whatever row of tiles (or image) they lie in ----
// The chunk's tiles in order (l: its rows of tiles one after the other, Tw tiles each), VL of them
// at a time, through staging planes of the chunk's tiles: the 6 x 6 input blocks d[(6i + j)*LS + l]
// and the 4 x 4 output blocks o[(4i + j)*LS + l]. (F(2x2) above keeps a row of tiles in a vector
// of its width: on a 16 x 16 output F(4x4) has rows of 4 tiles, a quarter of AVX-512's lanes.)

// B^T d for six values (a column or a row of the 6 x 6 block) -> out[0..5]
inline void apply_bt6(const vec d[6], vec out[6]) {
  const vec p = d[4] - 4.0f * d[2], q = d[3] - 4.0f * d[1], r = d[4] - d[2], s = 2.0f * (d[3] - d[1]);
  out[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
  out[1] = p + q;
  out[2] = p - q;
  out[3] = r + s;
  out[4] = r - s;
  out[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
}

// A^T m for six values (a column or a row of the 6 x 6 block) -> out[0..3]
inline void apply_at6(const vec m[6], vec out[4]) {
  const vec sum12 = m[1] + m[2], diff12 = m[1] - m[2], sum34 = m[3] + m[4], diff34 = m[3] - m[4];
  out[0] = m[0] + sum12 + sum34;
  out[1] = diff12 + 2.0f * diff34;
  out[2] = sum12 + 4.0f * sum34;
  out[3] = diff12 + 8.0f * diff34 + m[5];
}

// The floats between rows of the zero-padded input plane that rows of 4 x 4 tiles read (Twv: a
// row's tiles rounded up to whole vectors), with room for the last vectors' reads past it
inline i64 f4_row_floats(i64 Twv) { return 4 * (Twv + VL); }

// Rows of 1-2 tiles go value by value through the gather and the scatter: the shuffles of a row
// would fill a vector for them (64->128 on 8 x 8, rows of 2 tiles, 0.84-0.89x F(2x2)'s time on
// AVX-512 this way, 0.92-0.97x with the shuffles)
inline bool value_by_value(i64 Tw) { return 8 * Tw <= VL; }
// Their input blocks laid out tile by tile and transposed (finish_input_blocks) where the ISA
// has 16 x 16 register transposes: AVX-512's 64->128 on 8 x 8 0.84-0.86x the time with the
// masked row copies (value by value, the gather was a ninth of that forward); on AVX2 (rows of
// one tile, 128->256 on 4 x 4) 1.00-1.04x, so it keeps them value by value
constexpr bool kTransposedBlocks = CNNFAST_VEC_BYTES == 64;

// Rows of tiles th0..th1 of one input plane (x: [H, W]) -> their input blocks at lanes l0.. of d
// (a row's lanes past its Tw tiles, up to the next multiple of VL: garbage that the next row
// overwrites or the products ignore). The rows they read are copied once into padded
// ([4*(th1-th0)+2][Wp], zero at first: its borders are never written), then each row's columns
// 4tw + j (j < 6) taken apart by shuffles, VL tiles at a time.
void gather_input_blocks(float* d, i64 LS, const float* x, i64 H, i64 W, i64 pad, i64 th0, i64 th1, i64 Tw, i64 l0,
                         float* padded, i64 Wp) {
  for (i64 i = 0; i < 4 * (th1 - th0) + 2; ++i) {
    const i64 h = 4 * th0 + i - pad;
    float* row = padded + i * Wp;
    if (h < 0 || h >= H)
      std::fill(row, row + Wp, 0.0f);
    else if (W < VL)  // (one masked load and store: memcpy's calls were a twentieth of 8 x 8's forward)
      store_first(row + pad, load_first(x + h * W, W), W);
    else
      std::memcpy(row + pad, x + h * W, sizeof(float) * size_t(W));
  }
  if (value_by_value(Tw)) {  // (AVX-512: tile by tile into d's second half, finish_input_blocks transposes them)
    for (i64 th = th0; th < th1; ++th)
      for (i64 tw = 0; tw < Tw; ++tw) {
        const float* block = padded + 4 * (th - th0) * Wp + 4 * tw;
        const i64 l = l0 + (th - th0) * Tw + tw;
        for (int i = 0; i < 6; ++i)
          if (kTransposedBlocks)  // (8 floats a row: the last 2 overwritten by the next)
            __builtin_memcpy(d + 36 * LS + 36 * l + 6 * i, block + i * Wp, 8 * sizeof(float));
          else
            for (int j = 0; j < 6; ++j) d[(6 * i + j) * LS + l] = block[i * Wp + j];
      }
    return;
  }
  for (i64 th = th0; th < th1; ++th)
    for (int i = 0; i < 6; ++i) {
      float* out = d + 6 * i * LS + l0 + (th - th0) * Tw;  // plane (i, j) at out + j*LS
      const float* row = padded + (4 * (th - th0) + i) * Wp;
      for (i64 tw0 = 0; tw0 < Tw; tw0 += VL) {
        const float* c = row + 4 * tw0;  // columns 4tw, .., 4tw + 3, then (from c + 4) 4tw + 4, 4tw + 5
        const vec a0 = load(c), a1 = load(c + VL), a2 = load(c + 2 * VL), a3 = load(c + 3 * VL);
        const vec b0 = load(c + 4), b1 = load(c + 4 + VL), b2 = load(c + 4 + 2 * VL), b3 = load(c + 4 + 3 * VL);
        const vec e0 = even(a0, a1), e1 = even(a2, a3), o0 = odd(a0, a1), o1 = odd(a2, a3);
        store(out + tw0, even(e0, e1));
        store(out + LS + tw0, even(o0, o1));
        store(out + 2 * LS + tw0, odd(e0, e1));
        store(out + 3 * LS + tw0, odd(o0, o1));
        store(out + 4 * LS + tw0, even(even(b0, b1), even(b2, b3)));
        store(out + 5 * LS + tw0, even(odd(b0, b1), odd(b2, b3)));
      }
    }
}

// The floats of the staged input blocks d: [36][LS], and for rows of 1-2 tiles (value_by_value)
// on AVX-512 as many again after them, where gather_input_blocks lays each tile's block out whole
// ([L][36])
inline i64 f4_blocks_floats(i64 LS, i64 Tw) { return (value_by_value(Tw) && kTransposedBlocks ? 72 : 36) * LS + 8; }

// After gather_input_blocks for a chunk's L tiles: on AVX-512, rows of 1-2 tiles' blocks ([L][36],
// in d's second half) transposed into d's planes by its register transposes
void finish_input_blocks(float* d, i64 LS, i64 L, i64 Tw) {
  if (value_by_value(Tw) && kTransposedBlocks) transpose(d, LS, d + 36 * LS, 36, L, 36, L);
}

// Tiles 0..L of the staged input blocks (d) -> v[xi*vs + l] = (B^T d_l B)[xi], xi = 6i + j
void transform_input_blocks(float* v, i64 vs, const float* d, i64 LS, i64 L) {
  for (i64 l = 0; l < L; l += VL) {
    vec t[6][6];  // t[i][j] = (d B)[i][j]: along the columns first
    for (int i = 0; i < 6; ++i) {
      vec row[6];
      for (int j = 0; j < 6; ++j) row[j] = load(d + (6 * i + j) * LS + l);
      apply_bt6(row, t[i]);
    }
    for (int j = 0; j < 6; ++j) {  // then B^T (d B) along the rows
      const vec column[6] = {t[0][j], t[1][j], t[2][j], t[3][j], t[4][j], t[5][j]};
      vec out[6];
      apply_bt6(column, out);
      for (int i = 0; i < 6; ++i) store(v + (6 * i + j) * vs + l, out[i]);
    }
  }
}

// Tiles 0..L of one output channel's products (m[xi*ms + l]) -> o[(4i + j)*LS + l] = (A^T M_l A)[i][j] + bias
void transform_output_blocks(float* o, i64 LS, const float* m, i64 ms, i64 L, float bias) {
  for (i64 l = 0; l < L; l += VL) {
    vec s[4][6];  // (A^T M) rows
    for (int j = 0; j < 6; ++j) {
      vec column[6], out[4];
      for (int i = 0; i < 6; ++i) column[i] = load(m + (6 * i + j) * ms + l);
      apply_at6(column, out);
      for (int i = 0; i < 4; ++i) s[i][j] = out[i];
    }
    for (int i = 0; i < 4; ++i) {
      vec out[4];
      apply_at6(s[i], out);
      for (int j = 0; j < 4; ++j) store(o + (4 * i + j) * LS + l, out[j] + bias);
    }
  }
}

// The 4 columns of VL tiles' output row i (o: staged output blocks, its lanes l..l+VL) interleaved
// by shuffles: q[t / 4] holds tile t's 4 values at lanes 4(t % 4).. (y's order for consecutive tiles)
inline void interleave_columns(vec q[4], const float* o, i64 LS, int i, i64 l) {
  const float* at = o + 4 * i * LS + l;
  const vec c0 = load(at), c1 = load(at + LS), c2 = load(at + 2 * LS), c3 = load(at + 3 * LS);
  const vec lo02 = zip_lo(c0, c2), hi02 = zip_hi(c0, c2), lo13 = zip_lo(c1, c3), hi13 = zip_hi(c1, c3);
  q[0] = zip_lo(lo02, lo13), q[1] = zip_hi(lo02, lo13), q[2] = zip_lo(hi02, hi13), q[3] = zip_hi(hi02, hi13);
}

// Rows of 1-2 tiles (value_by_value): the chunk's L tiles (from its row of tiles r0, Th rows an
// image) VL at a time, whatever row or image they lie in, through interleave_columns, then each
// tile's rows of 4 copied into its place in y (y: channel k's plane of the chunk's first image,
// images `image` floats apart). (Value by value, this scatter was a seventh of 64->128's forward on
// 8 x 8 outputs on AVX-512.)
void scatter_small_rows(float* y, i64 image, i64 Ho, i64 Wo, const float* o, i64 LS, i64 r0, i64 L, i64 Th, i64 Tw) {
  for (i64 l0 = 0; l0 < L; l0 += VL) {
    float quads[4][4 * VL];  // quads[i][4t + j]: tile l0 + t's value (i, j)
    for (int i = 0; i < 4; ++i) {
      vec q[4];
      interleave_columns(q, o, LS, i, l0);
      for (int j = 0; j < 4; ++j) store(quads[i] + j * VL, q[j]);
    }
    const i64 first = r0 + l0 / Tw;  // (the tile's row of tiles and image, counted on from l0's)
    i64 n = first / Th - r0 / Th, th = first % Th, tw = l0 % Tw;
    for (i64 t = 0; t < VL && l0 + t < L; ++t) {
      float* to = y + n * image + 4 * th * Wo + 4 * tw;
      const i64 rows = std::min<i64>(4, Ho - 4 * th), cols = std::min<i64>(4, Wo - 4 * tw);
      for (i64 i = 0; i < rows; ++i) {
        if (cols == 4)
          __builtin_memcpy(to + i * Wo, quads[i] + 4 * t, 4 * sizeof(float));
        else
          for (i64 j = 0; j < cols; ++j) to[i * Wo + j] = quads[i][4 * t + j];
      }
      if (++tw == Tw && (tw = 0, ++th == Th)) th = 0, ++n;
    }
  }
}

// One row of tiles th (its Tw tiles at lanes l.. of the staged output blocks o) -> y rows
// 4th..4th+3 of the plane (y: [Ho, Wo]; those inside it): the 4 columns of each tile interleaved
// (rows of 1-2 tiles: scatter_small_rows)
void scatter_output_blocks(float* y, i64 Ho, i64 Wo, const float* o, i64 LS, i64 th, i64 Tw, i64 l) {
  for (int i = 0; i < 4 && 4 * th + i < Ho; ++i)
    for (i64 tw0 = 0; tw0 < Tw; tw0 += VL) {
      vec q[4];
      interleave_columns(q, o, LS, i, l + tw0);
      float* out = y + (4 * th + i) * Wo + 4 * tw0;
      const i64 width = std::min<i64>(4 * VL, Wo - 4 * tw0);
      for (int j = 0; j < 4 && j * VL < width; ++j) {  // (a row's last vectors: those it reaches)
        if ((j + 1) * VL <= width)
          store(out + j * VL, q[j]);
        else
          store_first(out + j * VL, q[j], width - j * VL);
      }
    }
}

// ---- F(4x4) with ReLU and 2x2 max-pooling: the windows pooled from the staged output blocks ----
// A 4 x 4 tile holds 2 x 2 whole windows; the rule is max_pool2d_planes' (over a window's four
// values row by row the first maximum wins and a NaN wins; a maximum not > 0 gives 0 and argmax -1),
// with tiles as the vector lanes. (Through the convolution's whole output and max_pool2d, the
// pooling was a fifth of the default model's conv2 block on AVX2.)

// Tiles 0..L of the staged output blocks (o) -> p[(2a + b)*LS + l] = window (a, b) of tile l
// pooled, and c[(2a + b)*LS + l] = which of its values won (2i + j), -1 unless the winner is > 0
void pool_output_blocks(float* p, std::int32_t* c, const float* o, i64 LS, i64 L) {
  for (i64 l = 0; l < L; l += VL)
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) {
        auto value = [&](int v) { return load(o + (4 * (2 * a + v / 2) + 2 * b + v % 2) * LS + l); };
        vec best = value(0);
        ivec which = {};
        for (int v = 1; v < 4; ++v) {
          const vec candidate = value(v);
          const ivec take = pool_takes(candidate, best);
          best = take ? candidate : best;
          which = take ? ivec{} + v : which;
        }
        pool_relu(best, which);
        store(p + (2 * a + b) * LS + l, best);
        store(reinterpret_cast<float*>(c + (2 * a + b) * LS + l), reinterpret_cast<const vec&>(which));
      }
}

// One row of tiles th (its Tw tiles at lanes l.. of p and c) -> rows 2th, 2th + 1 of the pooled plane
// (y: [Hq, Wq], those inside it; the windows (a, 0) and (a, 1) of consecutive tiles interleaved),
// and where argmax is wanted, each window's winner as its index oh*Wo + ow in the Ho x Wo plane
void scatter_pooled_row(float* y, std::int32_t* argmax, i64 Hq, i64 Wq, i64 Wo, const float* p, const std::int32_t* c,
                        i64 LS, i64 th, i64 Tw, i64 l) {
  ivec lane = {};
  for (int i = 0; i < VL; ++i) lane[i] = i;
  for (int a = 0; a < 2 && 2 * th + a < Hq; ++a)
    for (i64 tw0 = 0; tw0 < Tw && 2 * tw0 < Wq; tw0 += VL) {
      const i64 at = 2 * a * LS + l + tw0, q0 = 2 * tw0, width = std::min<i64>(2 * VL, Wq - q0);
      const vec left = load(p + at), right = load(p + at + LS);
      const vec values[2] = {zip_lo(left, right), zip_hi(left, right)};
      const float* codes = reinterpret_cast<const float*>(c);
      const vec left_code = load(codes + at), right_code = load(codes + at + LS);
      const vec code_bits[2] = {zip_lo(left_code, right_code), zip_hi(left_code, right_code)};
      for (int h = 0; h < 2 && h * VL < width; ++h) {
        const i64 n = std::min<i64>(VL, width - h * VL), offset = (2 * th + a) * Wq + q0 + h * VL;
        n == VL ? store(y + offset, values[h]) : store_first(y + offset, values[h], n);
        if (!argmax) continue;
        // window q's winner 2i + j: output row 4th + 2a + i, column 2q + j
        // (lanes past the row's last tile hold whatever the staging held: `won` keeps their arithmetic
        // in range; no such lane is stored)
        const ivec which = reinterpret_cast<const ivec&>(code_bits[h]), won = which & 3;
        const ivec q = lane + std::int32_t(q0 + h * VL);
        const ivec index =
            which < 0 ? ivec{} - 1 : (std::int32_t(4 * th + 2 * a) + (won >> 1)) * std::int32_t(Wo) + 2 * q + (won & 1);
        const vec index_bits = reinterpret_cast<const vec&>(index);
        float* to = reinterpret_cast<float*>(argmax + offset);
        n == VL ? store(to, index_bits) : store_first(to, index_bits, n);
      }
    }
}

// ---- Stride 2: F(4x4) through the input's phases ----
// A stride-2 3x3 convolution is four stride-1 convolutions, one per phase of the padded input (its
// even and odd rows by its even and odd columns), with kernels of 2 x 2 taps ((0,0), (0,2), (2,0),
// (2,2)), 2 x 1, 1 x 2 and 1 x 1. Along one dimension, 4 outputs take the even phase's 5 values
// through F(4, 2) (points 0, 1, -1, 2 and infinity: 5 products) and the odd phase's 4 values as
// they are (tap 1 alone: 4 products): 9 in all, one transform of a 9 x 9 input block (rows and
// columns 8t .. 8t + 8 of the padded input), so 81 products for a 4 x 4 block of outputs where a
// direct method does 144 multiply-adds:
//   B^T (9 x 9): rows 0-4 F(4, 2)'s B^T on the even values 0, 2, .., 8,
//     [1 -1/2 -1 1/2 0; 0 1 1/2 -1/2 0; 0 -1/3 1/2 -1/6 0; 0 -1/6 0 1/6 0; 0 2 -1 -2 1];
//     rows 5-8 the odd values 1, 3, 5, 7;
//   G (9 x 3): rows 0-4 on taps 0 and 2, [1 0; 1 1; 1 -1; 1 2; 0 1]; rows 5-8 tap 1;
//   A^T (4 x 9): [1 1 1 1 0; 0 1 -1 2 0; 0 1 1 4 0; 0 1 -1 8 1] on 0-4, the identity on 5-8.
// The products, tiles and output blocks are F(4x4)'s (above); only the transforms differ.

// F(4, 2)'s B^T e for the five values e0..e4 -> out[0..4]
inline void apply_bt5(vec e0, vec e1, vec e2, vec e3, vec e4, vec out[5]) {
  out[0] = e0 - e2 + 0.5f * (e3 - e1);
  out[1] = e1 + 0.5f * (e2 - e3);
  out[2] = 0.5f * e2 - (1.0f / 3) * e1 - (1.0f / 6) * e3;
  out[3] = (1.0f / 6) * (e3 - e1);
  out[4] = 2.0f * (e1 - e3) - e2 + e4;
}

// B^T d for nine values (a row or a column of the 9 x 9 block) -> out[0..8]
inline void apply_bt9(const vec d[9], vec out[9]) {
  apply_bt5(d[0], d[2], d[4], d[6], d[8], out);
  for (int t = 0; t < 4; ++t) out[5 + t] = d[2 * t + 1];
}

// F(4, 2)'s A^T m for five values -> out[0..3]
inline void apply_at5(const vec m[5], vec out[4]) {
  const vec sum12 = m[1] + m[2], diff12 = m[1] - m[2];
  out[0] = m[0] + sum12 + m[3];
  out[1] = diff12 + 2.0f * m[3];
  out[2] = sum12 + 4.0f * m[3];
  out[3] = diff12 + 8.0f * m[3] + m[4];
}

// A^T m for nine values -> out[0..3]
inline void apply_at9(const vec m[9], vec out[4]) {
  apply_at5(m, out);
  for (int t = 0; t < 4; ++t) out[t] = out[t] + m[5 + t];
}

// w: [K, C, 3, 3] -> u: [36][Kp / MR][C][MR], planes us apart (zeros for k >= K): G g G^T at
// the positions (i, j) < 6 (G's rows 6-8 are its row 5, tap 1 alone). A panel's taps are first laid
// out tap by tap (f: [9][C][MR]), so that each position is computed a vector of C*MR consecutive
// floats at a time (a position at a time from each channel's 9 taps, as F(4x4)'s, its stores went
// value by value, and this transform was a sixth of 64->128 to 4 x 4 at batch 32)
void transform_weights_stride2(float* u, i64 us, const float* w, i64 K, i64 C, i64 Kp) {
  const i64 panels = Kp / MR, n = C * MR, nv = (n + VL - 1) / VL * VL;  // (f's rows: whole vectors)
  const int threads = threads_over(double(Kp) * C * 36 * 4, panels);
  ScratchFloats taps(size_t(threads) * 9 * nv), by_tap(size_t(threads) * 9 * n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 kp = 0; kp < panels; ++kp) {
    // f[t][c][i] = w[kp*MR + i][c][t] (0 past K), by two register transposes: [i, c][t] -> [t][i, c],
    // then each tap's [i][c] -> [c][i] (value by value, a twentieth of 64->128 to 4 x 4 at batch 32)
    float* f = taps.get() + size_t(omp_get_thread_num()) * 9 * nv;
    float* t_ic = by_tap.get() + size_t(omp_get_thread_num()) * 9 * n;
    const i64 rows = std::min<i64>(MR, K - kp * MR);
    transpose(t_ic, n, w + kp * MR * C * 9, 9, rows * C, 9, rows * C);
    for (int t = 0; t < 9; ++t) {
      transpose(f + t * nv, MR, t_ic + t * n, C, rows, C, MR);
      std::fill(f + t * nv + n, f + (t + 1) * nv, 0.0f);
    }
    for (i64 e = 0; e < n; e += VL) {
      float* out = u + kp * n + e;
      // (a panel's last vector: its own lanes only, the next panel's are another thread's)
      auto put = [&](int xi, vec v) {
        if (e + VL <= n)
          store(out + xi * us, v);
        else
          store_first(out + xi * us, v, n - e);
      };
      vec h[3][6];  // g G^T: a row of taps at a time
      for (int r = 0; r < 3; ++r) {
        const vec a = load(f + 3 * r * nv + e), b = load(f + (3 * r + 1) * nv + e), c = load(f + (3 * r + 2) * nv + e);
        h[r][0] = a, h[r][1] = a + c, h[r][2] = a - c, h[r][3] = a + 2.0f * c, h[r][4] = c, h[r][5] = b;
      }
      for (int j = 0; j < 6; ++j) {  // then G (g G^T)
        const vec a = h[0][j], b = h[1][j], c = h[2][j];
        put(j, a);
        put(6 + j, a + c);
        put(12 + j, a - c);
        put(18 + j, a + 2.0f * c);
        put(24 + j, c);
        put(30 + j, b);
      }
    }
  }
}

// The floats between gather_blocks' padded rows: 16 zeros, the row (width floats), zeros as far as
// the blocks read (reach: one past the last column read) and a vector more
inline i64 padded_row_floats(i64 width, i64 reach) { return i64(lines(size_t(16 + std::max(width, reach) + 16))); }

// The tiles of rows of tiles r0..r1 (Th an image, Tw a row) of one channel (plane_of(n): its plane
// in image n, Hin x Win) -> each tile's B x B block of the zero-padded plane (rows step*th + lead ..,
// columns step*tw + lead ..; lead >= -16), tile l at blocks[B*B*l ..]. Through the rows they read,
// all the chunk's copied first into padded (rows Wp floats apart, at column 16 of each; zero at
// first, its borders never written; at most B rows a row of tiles): copying a row and at once
// reading the blocks from it, the loads waited on the row's stores (a sixth of stride-2 64->128 to
// 4 x 4 at batch 32).
template <int B, int step, class PlaneOf>
void gather_blocks(float* blocks, PlaneOf&& plane_of, i64 Hin, i64 Win, i64 lead, i64 r0, i64 r1, i64 Th, i64 Tw,
                   float* padded, i64 Wp) {
  float* rows = padded + 16;
  by_image(r0, r1, Th, Tw, [&](i64 n, i64 th0, i64 th1, i64) {
    const float* x = plane_of(n);
    for (i64 i = 0; i < step * (th1 - th0) + B - step; ++i, rows += Wp) {
      const i64 h = step * th0 + lead + i;
      if (h < 0 || h >= Hin) {
        std::fill(rows, rows + Win, 0.0f);
        continue;
      }
      copy_row(rows, x + h * Win, Win);
      // the next plane's row (the image's next channel, read next): a chunk's planes are an image
      // apart, too far for the hardware's prefetch (without this, at batch 128 the copy of
      // stride-2 64->128 to 8 x 8 was a sixth of the forward)
      for (i64 f = 0; f < Win; f += 16) __builtin_prefetch(x + (Hin + h) * Win + f);
    }
  });
  rows = padded + 16 + lead;
  by_image(r0, r1, Th, Tw, [&](i64, i64 th0, i64 th1, i64 l0) {
    for (i64 th = th0; th < th1; ++th)
      for (i64 tw = 0; tw < Tw; ++tw) {
        const float* block = rows + step * ((th - th0) * Wp + tw);
        float* out = blocks + B * B * (l0 + (th - th0) * Tw + tw);
        for (int i = 0; i < B; ++i) __builtin_memcpy(out + B * i, block + i * Wp, B * sizeof(float));
      }
    rows += (step * (th1 - th0) + B - step) * Wp;
  });
}

// Tiles 0..L, VL at a time, of In x In planes (src[(In*i + j)*ss + l]) -> Out x Out planes
// dst[(Out*i + j)*ds + l] = (T s T^T)[i][j] + bias, T applied to a row or a column of values by
// apply(in[In], out[Out]) (a lambda, so that it is inlined): along the rows first, then the
// columns (the stride-2 transforms)
template <int In, int Out, class Apply>
void transform_planes(float* dst, i64 ds, const float* src, i64 ss, i64 L, Apply apply, float bias = 0.0f) {
  for (i64 l = 0; l < L; l += VL) {
    vec t[In][Out];  // t[i] = T applied along row i
    for (int i = 0; i < In; ++i) {
      vec row[In];
      for (int j = 0; j < In; ++j) row[j] = load(src + (In * i + j) * ss + l);
      apply(row, t[i]);
    }
    for (int j = 0; j < Out; ++j) {
      vec column[In], out[Out];
      for (int i = 0; i < In; ++i) column[i] = t[i][j];
      apply(column, out);
      for (int i = 0; i < Out; ++i) store(dst + (Out * i + j) * ds + l, out[i] + bias);
    }
  }
}

// Tiles 0..L of the staged 9 x 9 blocks (d: [81][LS], plane 9i + j) -> v[xi*vs + l] = (B^T d_l B)[xi]
void transform_stride2_blocks(float* v, i64 vs, const float* d, i64 LS, i64 L) {
  transform_planes<9, 9>(v, vs, d, LS, L, [](const vec* in, vec* out) { apply_bt9(in, out); });
}

// Tiles 0..L of one output channel's 81 products (m[xi*ms + l]) -> o[(4i + j)*LS + l] = (A^T M_l A)[i][j] + bias
void transform_stride2_outputs(float* o, i64 LS, const float* m, i64 ms, i64 L, float bias) {
  transform_planes<9, 4>(o, LS, m, ms, L, [](const vec* in, vec* out) { apply_at9(in, out); }, bias);
}

// ---- Stride 2, the input gradient: the same products transposed ----
// dx of a stride-2 3x3 convolution, in the padded input's coordinates: an even row 2i takes
// dy[i - 1] w2 + dy[i] w0, an odd one 2i + 1 dy[i] w1 (and so the columns). So 4 even rows of dx
// are F(4, 2) of dy's rows i0 - 1 .. i0 + 3 with the kernel (w2, w0), 4 odd rows dy's rows
// i0 .. i0 + 3 times w1: the 9 positions of the forward's transform, with G on the kernel flipped
// (w2, w1, w0), B^T on a 5 x 5 block of dy (positions 5-8: its values 1-4 as they are), and
// A^T's two halves giving different outputs: positions 0-4 the even rows, 5-8 the odd ones. A tile
// is an 8 x 8 block of dx from a 5 x 5 block of dy, 81 products where the panels' GEMM does 144
// multiply-adds (dx^T = w^T dy, then its rows added into place). The tiles start at dx's rows and
// columns 0, 8, .. (not the padded input's: with padding 1, 8 x 8 tiles cover an 8 x 8 image, not
// 9 x 9 of it): with odd padding a tile's first row is an odd row of the padded input, and its
// 5 x 5 block of dy starts a row later (dy[i0 .. i0 + 4]), the odd rows using values 0-3 and going
// to the tile's even rows ("odd" below).

// B^T e for a 5 x 5 block's row or column e0..e4 -> out[0..8] (odd: positions 5-8 take e0..e3)
template <int odd>
inline void apply_bt5_dy(const vec e[5], vec out[9]) {
  apply_bt5(e[0], e[1], e[2], e[3], e[4], out);
  for (int t = 0; t < 4; ++t) out[5 + t] = e[1 - odd + t];
}

// Both halves of A^T m for nine values -> out[0..7]: out[2t + odd] = F(4, 2)'s A^T m[0..4],
// out[2t + 1 - odd] = m[5 + t]
template <int odd>
inline void apply_at9_dx(const vec m[9], vec out[8]) {
  vec even[4];
  apply_at5(m, even);
  for (int t = 0; t < 4; ++t) out[2 * t + odd] = even[t], out[2 * t + 1 - odd] = m[5 + t];
}

// Tiles 0..L of the staged 5 x 5 dy blocks (d: [25][LS], plane 5i + j) -> v[xi*vs + l], xi = 9i + j
template <int odd>
void transform_dy_stride2_blocks(float* v, i64 vs, const float* d, i64 LS, i64 L) {
  transform_planes<5, 9>(v, vs, d, LS, L, [](const vec* in, vec* out) { apply_bt5_dy<odd>(in, out); });
}

// Tiles 0..L of one input channel's 81 products (m[xi*ms + l]) -> o[(8i + j)*LS + l]: the 8 x 8 block
// of dx
template <int odd>
void transform_dx_stride2_outputs(float* o, i64 LS, const float* m, i64 ms, i64 L) {
  transform_planes<9, 8>(o, LS, m, ms, L, [](const vec* in, vec* out) { apply_at9_dx<odd>(in, out); });
}

// The tiles of rows r0..r1 (blocks: [L][64], each an 8 x 8 block of dx at (8 th, 8 tw)) -> their
// places in dx (channel c's plane of image 0; images `image` floats apart), what lies inside it
void scatter_dx_blocks(float* dx, i64 image, i64 H, i64 W, const float* blocks, i64 r0, i64 r1, i64 Th, i64 Tw) {
  for (i64 r = r0; r < r1; ++r)
    for (i64 tw = 0; tw < Tw; ++tw) {
      const float* block = blocks + 64 * ((r - r0) * Tw + tw);
      float* plane = dx + (r / Th - r0 / Th) * image;
      const i64 h0 = 8 * (r % Th), w0 = 8 * tw;
      const i64 j0 = std::max<i64>(0, -w0), j1 = std::min<i64>(8, W - w0);
      for (i64 i = std::max<i64>(0, -h0); i < std::min<i64>(8, H - h0); ++i)
        if (j0 == 0 && j1 == 8)
          __builtin_memcpy(plane + (h0 + i) * W + w0, block + 8 * i, 8 * sizeof(float));
        else
          for (i64 j = j0; j < j1; ++j) plane[(h0 + i) * W + w0 + j] = block[8 * i + j];
    }
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

// F(3x3, 4x4), the weight gradient's side of F(4x4, 3x3): dW_kc = G^T [ sum over tiles
// (A e_k A^T) .* (B^T d_c B) ] G, e_k a 4 x 4 block of dy (zeros past its plane) and d_c the 6 x 6
// block of input it met (B^T d B: the forward's input transform, as above).
// A e for four values (a row or a column of e) -> out[0..5], A = (A^T)^T
inline void apply_a4(const vec e[4], vec out[6]) {
  const vec sum02 = e[0] + e[2], sum13 = e[1] + e[3], far02 = e[0] + 4.0f * e[2], far13 = 2.0f * e[1] + 8.0f * e[3];
  out[0] = e[0];
  out[1] = sum02 + sum13;
  out[2] = sum02 - sum13;
  out[3] = far02 + far13;
  out[4] = far02 - far13;
  out[5] = e[3];
}

// Tiles 0..L of the staged dy blocks (d, as gather_input_blocks stages them: e = its planes
// (i, j) < 4) -> e_out[xi*es + l] = (A e_l A^T)[xi], xi = 6i + j
void transform_dy_blocks(float* e_out, i64 es, const float* d, i64 LS, i64 L) {
  for (i64 l = 0; l < L; l += VL) {
    vec t[4][6];  // t[i] = A e[i]: along the rows of e first
    for (int i = 0; i < 4; ++i) {
      vec row[4];
      for (int j = 0; j < 4; ++j) row[j] = load(d + (6 * i + j) * LS + l);
      apply_a4(row, t[i]);
    }
    for (int j = 0; j < 6; ++j) {  // then A along the columns
      const vec column[4] = {t[0][j], t[1][j], t[2][j], t[3][j]};
      vec out[6];
      apply_a4(column, out);
      for (int i = 0; i < 6; ++i) store(e_out + (6 * i + j) * es + l, out[i]);
    }
  }
}

// G^T m for six values -> out[0..2] (G: F(4x4, 3x3)'s, in the file's header), VL input channels a time
inline void apply_gt6(const vec m[6], vec out[3]) {
  const vec sum12 = m[1] + m[2], sum34 = m[3] + m[4];
  out[0] = 0.25f * m[0] - sum12 * (1.0f / 6) + sum34 * (1.0f / 24);
  out[1] = (m[2] - m[1]) * (1.0f / 6) + (m[3] - m[4]) * (1.0f / 12);
  out[2] = (sum34 - sum12) * (1.0f / 6) + m[5];
}

// rows: [n][ld] (n rows of `len` values) -> packed: [len][width] (row i's values down column i;
// columns n..width zero), the layout tile_product reads its operands in: through the ISA's
// register transposes (one value at a time, this packing took as long as the products of
// 96->96's dw by F(3x3, 4x4))
void pack_columns(float* packed, i64 width, const float* rows, i64 ld, i64 n, i64 len) {
  transpose(packed, width, rows, ld, n, len, width);
}

// Chunks of rows of tiles, for N images of Th x Tw tiles of F(M x M) whose V and M (or E) hold
// `channels` planes of (M + 2)^2 positions: about 768 KB in all, at least one row of tiles; over
// images when an image has fewer tiles. Depends on the shapes only, never on the threads.
struct TileChunks {
  i64 rows_total, rows_per_chunk, chunks;
  i64 L_max;  // tiles in a chunk
  i64 Hr;     // input rows a chunk's rows of tiles read, per image
  // (rows of tiles rounded to fill whole panels of `panel` tiles where they can, filled_rows)
  TileChunks(i64 N, i64 Th, i64 Tw, i64 channels, int M, i64 panel = 0, i64 budget = kWinogradChunkBytes)
      : rows_total(N * Th),
        rows_per_chunk(
            filled_rows(panel, Tw, budget / std::max<i64>((M + 2) * (M + 2) * channels * Tw * 4, 1), rows_total)),
        chunks((rows_total + rows_per_chunk - 1) / rows_per_chunk),
        L_max(rows_per_chunk * Tw),
        Hr(M * std::min(Th, rows_per_chunk) + 2) {}
  // the rows of the budget (at least one, at most the batch's), rounded to a multiple of the rows
  // that fill whole panels: down, or up by at most kWinogradChunkRoundUp (and if the batch has
  // them; conv2d_winograd.cpp's rule for F(4x4) says why); not when one row exceeds the budget
  static i64 whole_panels(i64 panel, i64 Tw, i64 budget_rows, i64 rows_total) {
    const i64 rows = std::max<i64>(1, std::min(rows_total, budget_rows));
    if (panel <= 0 || budget_rows < 1 || rows >= rows_total) return rows;
    const i64 g = panel / std::gcd(Tw, panel);
    if (rows >= g) return rows / g * g;
    return double(g) <= kWinogradChunkRoundUp * double(rows) && g <= rows_total ? g : rows;
  }
  // whole panels where they can be had; else, where the tiles would fill less than 3/4 of their
  // panels, whole vectors of tiles (the products take a last panel of one vector with a tile of that
  // width)
  static i64 filled_rows(i64 panel, i64 Tw, i64 budget_rows, i64 rows_total) {
    const i64 rows = whole_panels(panel, Tw, budget_rows, rows_total), tiles = rows * Tw;
    return panel <= 0 || fill_three_quarters(tiles, panel) ? rows : whole_panels(VL, Tw, budget_rows, rows_total);
  }
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

// Ask for the n floats from p, a plane a later call reads: by_image goes through a channel's planes
// image by image, C * H * W floats apart, a stride the hardware's prefetchers do not follow (AVX-512,
// 96->192 on 7 x 7 at batch 128, one thread: dw's gather of the input blocks waited on x and dy for
// 43% of its 12.3 ms; asking two images ahead, 8.4 ms)
inline void prefetch_plane(const float* p, i64 n) {
  for (i64 i = 0; i < n; i += 16) __builtin_prefetch(p + i);
  __builtin_prefetch(p + n - 1);
}

extern const int tile_columns = NR;  // (the ISA table's: the paths' rules, conv2d_winograd.cpp, conv2d_common.cpp)

namespace {

// x: [N, C, H, W], w: [K, C, 3, 3], b: [K] (may be null: no bias) -> y: [N, K, Ho, Wo]
// by F(M x M, 3x3); with pool_k = 2 (F(4x4) only) instead y, argmax: [N, K, Ho/2, Wo/2] =
// max_pool2d(relu(conv2d(x))), pooled from the staged output blocks (argmax may be null)
template <int M>
void winograd_forward_tiles(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                            const ConvShape& s, i64 N, i64 pool_k) {
  constexpr int X = (M + 2) * (M + 2);  // positions
  const i64 C = s.C, K = s.K, H = s.H, W = s.W, Ho = s.Ho, Wo = s.Wo;
  const i64 Th = (Ho + M - 1) / M, Tw = (Wo + M - 1) / M, Twv = (Tw + VL - 1) / VL * VL;
  const i64 Kp = (K + MR - 1) / MR * MR, Wr = 2 * Twv + 2;
  const i64 us = odd_lines(Kp * C);
  ScratchFloats u(size_t(X) * us);
  transform_weights<M>(u.get(), us, w, K, C, Kp);

  const TileChunks ch(N, Th, Tw, C + Kp, M, NR);
  const i64 LS = odd_lines((ch.L_max + VL + NR - 1) / NR * NR);
  const i64 vs = odd_lines(C * LS), ms = odd_lines(Kp * LS);  // V's and M's planes this far apart
  const i64 kc = C <= 320 ? C : 256;
  // a thread's staging: F(2x2) the input rows ([Hr][Wr]); F(4x4) the input blocks ([36][LS]) and
  // the padded input rows ([Hr][Wp], zeroed once), or the output blocks ([16][LS])
  const i64 Wp = f4_row_floats(Twv);
  const i64 blocks = f4_blocks_floats(LS, Tw);  // (F(4x4): the input blocks' floats, the padded rows after them)
  const size_t stage = M == 2 ? lines(size_t(ch.Hr) * Wr) : lines(size_t(blocks + ch.Hr * Wp));
  const size_t per_thread = size_t(X * (vs + ms)) + stage;
  // a single chunk (one image): its input transforms (by channel), X products and output
  // transforms (by channel) over the threads instead; one thread's transforms left the other idle.
  // So too every chunk in turn when the transformed weights outgrow half of L2 (16 x 256 x 128
  // floats, 2 MB, for 128->256) and the chunks are few: chunks side by side each streamed all of
  // them for a few tiles, where split by product each thread keeps its half (128->256 on 4 x 4 at
  // batch 32, two threads: 1.19 -> 1.07 ms on AVX-512, 1.53 -> 1.10 on AVX2; at batch 128, 16
  // chunks, side by side was faster on AVX-512: 3.47 against 3.75 ms)
  const int threads = threads_over(double(N) * K * C * X * Th * Tw, X);
  const bool heavy = double(X) * Kp * C * sizeof(float) > double(1 << 20) && ch.chunks < 4 * threads;
  const int inner = (ch.chunks == 1 || heavy) && double(N) * K * C * 9 * Ho * Wo >= kSplitChunkWork ? threads : 1;
  const int nt = inner > 1 ? 1 : threads_over(double(N) * K * C * X * Th * Tw, ch.chunks);
  ScratchFloats scratch(size_t(nt) * per_thread), inner_stage(inner > 1 ? size_t(inner) * stage : 0);
  if (M == 4) {  // the padded rows' borders
    for (int t = 0; t < nt; ++t) std::fill_n(scratch.get() + t * per_thread + X * (vs + ms) + blocks, ch.Hr * Wp, 0.0f);
    for (int t = 0; t < (inner > 1 ? inner : 0); ++t)
      std::fill_n(inner_stage.get() + t * stage + blocks, ch.Hr * Wp, 0.0f);
  }
  for_each_chunk_shared(ch.chunks, nt, inner, [&](i64 chunk, auto&& over) __attribute__((always_inline)) {
    float* v = scratch.get() + size_t(inner > 1 ? 0 : omp_get_thread_num()) * per_thread;  // [X][C][LS], vs apart
    float* m = v + X * vs;  // [X][Kp][LS], planes ms apart
    float* own_stage = m + X * ms;
    auto staging = [&]() { return inner > 1 ? inner_stage.get() + size_t(omp_get_thread_num()) * stage : own_stage; };
    const i64 r0 = chunk * ch.rows_per_chunk, r1 = std::min(ch.rows_total, r0 + ch.rows_per_chunk);
    const i64 L = (r1 - r0) * Tw, panels = (L + NR - 1) / NR;
    over(C, [&](i64 c) __attribute__((always_inline)) {
      float* rows = staging();
      by_image(r0, r1, Th, Tw, [&](i64 n, i64 th0, i64 th1, i64 l0) {
        const float* plane = x + (n * C + c) * H * W;
        if (n + 2 < N) prefetch_plane(plane + 2 * C * H * W, H * W);
        if constexpr (M == 2)
          transform_input_rows(v + c * LS + l0, vs, plane, H, W, s.pad, th0, th1, Tw, rows, Wr);
        else
          gather_input_blocks(rows, LS, plane, H, W, s.pad, th0, th1, Tw, l0, rows + blocks, Wp);
      });
      if constexpr (M == 4) {
        finish_input_blocks(rows, LS, L, Tw);
        transform_input_blocks(v + c * LS, vs, rows, LS, L);
      }
    });
    over(X, [&](i64 xi) __attribute__((always_inline)) {
      const float* uxi = u.get() + size_t(xi) * us;
      const float* vxi = v + size_t(xi) * vs;
      float* mxi = m + size_t(xi) * ms;
      for (i64 p = 0; p < panels; ++p) {
        // (a last panel of at most VL tiles: a tile of one vector of them, not a whole panel's products)
        const auto product = L - p * NR <= VL ? tile_product<1> : tile_product<NV>;
        for (i64 k0 = 0; k0 < Kp; k0 += MR)
          for (i64 c0 = 0; c0 < C; c0 += kc)
            product(std::min(kc, C - c0), uxi + (k0 * C + c0 * MR), vxi + c0 * LS + p * NR, LS, mxi + k0 * LS + p * NR,
                    LS, c0 > 0, nullptr);
      }
    });
    // (no barrier after: these read m and a thread's own staging, never v, and write y; the next chunk's input
    // transforms write v and a thread's own staging, and its products m only after their barrier)
    over.nowait(K, [&](i64 k) __attribute__((always_inline)) {
      const float bias = b ? b[k] : 0.0f;
      if constexpr (M == 4) transform_output_blocks(staging(), LS, m + k * LS, ms, L, bias);
      if (M == 4 && pool_k > 0) {  // (the staging's 36 planes hold the 16 staged, then the windows' 4 + 4)
        float* o = staging();
        float* pooled = o + 16 * LS;
        std::int32_t* which = reinterpret_cast<std::int32_t*>(o + 20 * LS);
        pool_output_blocks(pooled, which, o, LS, L);
        const i64 Hq = Ho / 2, Wq = Wo / 2;
        for (i64 r = r0; r < r1; ++r) {
          const i64 plane = (r / Th * K + k) * Hq * Wq;
          scatter_pooled_row(y + plane, argmax ? argmax + plane : nullptr, Hq, Wq, Wo, pooled, which, LS, r % Th, Tw,
                             (r - r0) * Tw);
        }
        return;
      }
      if (M == 4 && value_by_value(Tw))
        return scatter_small_rows(y + (r0 / Th * K + k) * Ho * Wo, K * Ho * Wo, Ho, Wo, staging(), LS, r0, L, Th, Tw);
      for (i64 r = r0; r < r1; ++r) {
        const i64 n = r / Th, th = r % Th, l0 = (r - r0) * Tw;
        if constexpr (M == 2)
          transform_output_row(y + (n * K + k) * Ho * Wo, Ho, Wo, m + k * LS + l0, ms, th, Tw, bias);
        else
          scatter_output_blocks(y + (n * K + k) * Ho * Wo, Ho, Wo, staging(), LS, th, Tw, l0);
      }
    });
  });
}

// The stride-2 products, forward and dx alike: Cin planes in, Cout planes out, N images of Th x Tw
// tiles, 81 positions a tile; u: the transformed weights, 36 planes us apart, each
// [Coutp / MR][Cin][MR] (position (i, j) has (min(i, 5), min(j, 5))'s: G's rows 5-8 are alike).
// Chunks of rows of tiles whose transformed input V [81][Cin][LS] and one block of MR output
// channels' products [81][MR][LS] take about kWinogradChunkBytes (M is never whole: 81 planes of all
// the output channels would not stay in L2); each block's products, then its output transforms.
// Over the threads by chunk, or, for a single chunk, its input channels and its blocks of output
// channels. stage_of(rows, LS): the floats of a thread's own staging for chunks of that many rows of
// tiles (zeroed once); in(c, chunk, v_c, vs, stage) transforms input channel c of the chunk's tiles
// into v_c[xi*vs + l] (every lane up to chunk.lanes: the products read them); out(k, chunk, m_k, ms,
// stage) makes output channel k from its products m_k[xi*ms + l]. The chunks follow the thread count
// too (as many for each thread), but each output is one fixed sequence of operations whatever its
// chunk: the same results for any thread count.
struct Stride2Chunk {
  i64 r0, r1;  // its rows of tiles
  i64 rows;    // the rows of tiles of a chunk (the stage's layout)
  i64 L;       // its tiles, (r1 - r0) * Tw
  i64 lanes;   // L rounded up to whole panels of the products
  i64 LS;      // the floats between planes
};
template <class StageOf, class In, class Out>
void stride2_products(const float* u, i64 us, i64 Cin, i64 Cout, i64 N, i64 Th, i64 Tw, StageOf&& stage_of, In&& in,
                      Out&& out) {
  constexpr int X = 81;
  const i64 Coutp = (Cout + MR - 1) / MR * MR;
  auto weights_at = [&](int xi) { return u + size_t(6 * std::min(xi / 9, 5) + std::min(xi % 9, 5)) * us; };
  const i64 rows_total = N * Th;
  const double work = double(N) * Cout * Cin * X * Th * Tw;
  // at least the rows whose tiles fill whole panels (lcm(Tw, NR) tiles; where the batch has them) even past the
  // chunk's bytes, up to kStride2WholePanelsBytes of V: below, a panel's columns are partly empty. 192->192 at stride 2
  // to 4 x 4 on AVX-512 put 11 tiles in a panel of 32 and ran at 0.4x the panels path's speed, 2.2x faster with 32
  // (V 2 MB); 96->192 to 12 x 12, 21 tiles in a panel, 1.3-1.6x faster with 3 whole panels (3 MB); 128->128 to 20 x 20
  // at batch 8 1.5x (7.3 MB); 64->128 to 28 x 28 (7 panels, 5.5 MB) even. (One panel's worth of tiles, 35 for a panel
  // of 32, was 0.57-0.75x.)
  constexpr double kStride2WholePanelsBytes = 8.0 * (1 << 20);
  const i64 budget = TileChunks::whole_panels(NR, Tw, kWinogradChunkBytes / (i64(X) * (Cin + MR) * Tw * 4), rows_total);
  const i64 whole = std::min(rows_total, NR / std::gcd(Tw, i64(NR)));
  const bool whole_fits = double(whole) * double(Tw) * X * double(Cin + MR) * 4.0 <= kStride2WholePanelsBytes;
  const i64 budget_rows = whole_fits ? std::max(budget, whole) : budget;
  // a few chunks, as many for each thread (3 over two threads was 1.26x the panels' time on AVX2,
  // 32->64 to 8 x 8 at batch 32)
  const i64 few = (rows_total + budget_rows - 1) / budget_rows, team = threads_over(work, few);
  const i64 rows = few > 1 && few < 8 * team && few % team
                       ? (rows_total + (few + team - 1) / team * team - 1) / ((few + team - 1) / team * team)
                       : budget_rows;
  const i64 chunks = (rows_total + rows - 1) / rows;
  const i64 LS = (rows * Tw + NR - 1) / NR * NR;  // (the products read whole panels; the transforms whole vectors)
  const i64 vs = odd_lines(Cin * LS), ms = odd_lines(MR * LS);
  const i64 kc = Cin <= 320 ? Cin : 256;
  const size_t products = size_t(X) * ms, stage = lines(size_t(stage_of(rows, LS))), own = products + stage;
  const int inner = chunks == 1 ? threads_over(work, Coutp / MR) : 1;
  const int nt = inner > 1 ? 1 : threads_over(work, chunks), owners = std::max(inner, nt);
  ScratchFloats scratch(size_t(owners) * own), shared_v(size_t(X) * vs * (inner > 1 ? 1 : nt));
  for (int t = 0; t < owners; ++t) std::fill_n(scratch.get() + t * own + products, stage, 0.0f);
  auto mine = [&]() { return scratch.get() + size_t(omp_get_thread_num()) * own; };
  for_each_chunk_shared(chunks, nt, inner, [&](i64 chunk, auto&& over) __attribute__((always_inline)) {
    float* v = shared_v.get() + (inner > 1 ? 0 : size_t(omp_get_thread_num()) * X * vs);  // [X][Cin][LS]
    const i64 r0 = chunk * rows, r1 = std::min(rows_total, r0 + rows), panels = ((r1 - r0) * Tw + NR - 1) / NR;
    const Stride2Chunk part{r0, r1, rows, (r1 - r0) * Tw, panels * NR, LS};
    over(Cin, [&](i64 c) __attribute__((always_inline)) { in(c, part, v + c * LS, vs, mine() + products); });
    over(Coutp / MR, [&](i64 kb) __attribute__((always_inline)) {
      float* m = mine();  // [X][MR][LS], planes ms apart
      for (int xi = 0; xi < X; ++xi)
        for (i64 p = 0; p < panels; ++p)
          for (i64 c0 = 0; c0 < Cin; c0 += kc)
            tile_product(std::min(kc, Cin - c0), weights_at(xi) + (kb * Cin + c0) * MR,
                         v + size_t(xi) * vs + c0 * LS + p * NR, LS, m + size_t(xi) * ms + p * NR, LS, c0 > 0);
      for (i64 k = kb * MR; k < std::min(Cout, kb * MR + MR); ++k)
        out(k, part, m + (k - kb * MR) * LS, ms, m + products);
    });
  });
}

// x: [N, C, H, W], w: [K, C, 3, 3], b: [K] (may be null: no bias) -> y: [N, K, Ho, Wo], stride 2, by
// F(4x4) through the input's phases (above)
void winograd_forward_stride2(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N) {
  const i64 C = s.C, K = s.K, H = s.H, W = s.W, Ho = s.Ho, Wo = s.Wo, pad = s.pad;
  const i64 Th = (Ho + 3) / 4, Tw = (Wo + 3) / 4, Kp = (K + MR - 1) / MR * MR;
  const i64 Wp = padded_row_floats(W, 8 * Tw - pad + 1);  // (the last block's last column: 8 Tw - pad)
  // (36 planes for 81 positions: the 81 made the transform a tenth of 64->128 to 4 x 4 at batch
  // 128, its stores 2.6 MB)
  const i64 us = odd_lines(Kp * C);
  ScratchFloats u(size_t(36) * us);
  transform_weights_stride2(u.get(), us, w, K, C, Kp);
  // the stage, as dx's: the padded input rows (whose zero borders the output side must not
  // touch), then the tiles' blocks ([L][81]) and the same as planes ([81][LS]), or an output
  // channel's blocks ([16][LS])
  auto parts = [&](i64 rows, i64 LS) {
    return std::array<size_t, 3>{size_t(9 * rows + 1) * Wp, lines(size_t(81) * rows * Tw), lines(size_t(81) * LS)};
  };
  stride2_products(
      u.get(), us, C, K, N, Th, Tw,
      [&](i64 rows, i64 LS) {
        const auto p = parts(rows, LS);
        return p[0] + p[1] + p[2];
      },
      [&](i64 c, const Stride2Chunk& ch, float* v_c, i64 vs, float* stage) {
        const auto p = parts(ch.rows, ch.LS);
        float* blocks = stage + p[0];
        gather_blocks<9, 8>(
            blocks, [&](i64 n) { return x + (n * C + c) * H * W; }, H, W, -pad, ch.r0, ch.r1, Th, Tw, stage, Wp);
        transpose(blocks + p[1], ch.LS, blocks, 81, ch.L, 81, ch.lanes);
        transform_stride2_blocks(v_c, vs, blocks + p[1], ch.LS, ch.lanes);
      },
      [&](i64 k, const Stride2Chunk& ch, const float* m_k, i64 ms, float* stage) {
        float* o = stage + parts(ch.rows, ch.LS)[0];
        transform_stride2_outputs(o, ch.LS, m_k, ms, ch.L, b ? b[k] : 0.0f);
        if (value_by_value(Tw))
          return scatter_small_rows(y + (ch.r0 / Th * K + k) * Ho * Wo, K * Ho * Wo, Ho, Wo, o, ch.LS, ch.r0, ch.L, Th,
                                    Tw);
        for (i64 r = ch.r0; r < ch.r1; ++r)
          scatter_output_blocks(y + (r / Th * K + k) * Ho * Wo, Ho, Wo, o, ch.LS, r % Th, Tw, (r - ch.r0) * Tw);
      });
}

// dy: [N, K, Ho, Wo], w: [K, C, 3, 3] -> dx: [N, C, H, W] of a stride-2 3x3 convolution with
// padding pad (odd = pad % 2), through the same products (above): dy's K channels in, C out,
// 8 x 8 tiles of dx
template <int odd>
void winograd_input_grad_stride2_tiles(float* dx, const float* dy, const float* w, const ConvShape& s, i64 N) {
  const i64 C = s.C, K = s.K, H = s.H, W = s.W, Ho = s.Ho, Wo = s.Wo;
  const i64 lead = (s.pad + odd) / 2 - 1;  // (tile (th, tw)'s dy block at (4th + lead, 4tw + lead))
  const i64 Th = (H + 7) / 8, Tw = (W + 7) / 8, Cp = (C + MR - 1) / MR * MR;
  const i64 Wq = padded_row_floats(Wo, 4 * Tw + lead + 1);  // (the last block's last column: 4 Tw + lead)
  const std::vector<float> flipped = flipped_transposed(w, K, C, 9);
  const i64 us = odd_lines(Cp * K);
  ScratchFloats u(size_t(36) * us);
  transform_weights_stride2(u.get(), us, flipped.data(), C, K, Cp);
  // the stage: the padded dy rows (whose zero borders the output side must not touch), then the
  // tiles' dy blocks ([L][25]) and the same as planes ([25][LS]), or an input channel's 8 x 8 blocks
  // as planes ([64][LS]) and tile by tile ([L][64])
  auto parts = [&](i64 rows, i64 LS) {
    return std::array<size_t, 3>{size_t(5 * rows + 1) * Wq, lines(size_t(25) * rows * Tw), lines(size_t(25) * LS)};
  };
  stride2_products(
      u.get(), us, K, C, N, Th, Tw,
      [&](i64 rows, i64 LS) {
        const auto p = parts(rows, LS);
        return p[0] + std::max(p[1] + p[2], lines(size_t(64) * LS) + lines(size_t(64) * rows * Tw));
      },
      [&](i64 k, const Stride2Chunk& ch, float* v_k, i64 vs, float* stage) {
        const auto p = parts(ch.rows, ch.LS);
        float* blocks = stage + p[0];
        gather_blocks<5, 4>(
            blocks, [&](i64 n) { return dy + (n * K + k) * Ho * Wo; }, Ho, Wo, lead, ch.r0, ch.r1, Th, Tw, stage, Wq);
        transpose(blocks + p[1], ch.LS, blocks, 25, ch.L, 25, ch.lanes);
        transform_dy_stride2_blocks<odd>(v_k, vs, blocks + p[1], ch.LS, ch.lanes);
      },
      [&](i64 c, const Stride2Chunk& ch, const float* m_c, i64 ms, float* stage) {
        float* o = stage + parts(ch.rows, ch.LS)[0];
        float* tiles = o + lines(size_t(64) * ch.LS);
        transform_dx_stride2_outputs<odd>(o, ch.LS, m_c, ms, ch.L);
        transpose(tiles, 64, o, ch.LS, 64, ch.L, 64);
        scatter_dx_blocks(dx + (ch.r0 / Th * C + c) * H * W, C * H * W, H, W, tiles, ch.r0, ch.r1, Th, Tw);
      });
}
}  // namespace

// x: [N, C, H, W], w: [K, C, 3, 3], b: [K] (may be null: no bias) -> y: [N, K, Ho, Wo], by
// F(m x m, 3x3), m = 2 or 4; stride 2: F(4x4) through the input's phases
void winograd_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N, int m) {
  if (s.stride == 2) return winograd_forward_stride2(y, x, w, b, s, N);
  if (m == 4) return winograd_forward_tiles<4>(y, nullptr, x, w, b, s, N, 0);
  winograd_forward_tiles<2>(y, nullptr, x, w, b, s, N, 0);
}

// The same with ReLU and 2x2 max-pooling, F(4x4) at stride 1: y, argmax (may be null): [N, K, Ho/2,
// Wo/2] = max_pool2d(relu(conv2d(x, w, b)), 2), max_pool2d's numbers
void winograd_forward_pool2(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                            const ConvShape& s, i64 N) {
  winograd_forward_tiles<4>(y, argmax, x, w, b, s, N, 2);
}

// dy: [N, K, Ho, Wo], w: [K, C, 3, 3] -> dx: [N, C, H, W] of a stride-2 3x3 convolution (its
// padding up to 2), by the forward's phases transposed
void winograd_input_grad_stride2(float* dx, const float* dy, const float* w, const ConvShape& s, i64 N) {
  if (s.pad % 2) return winograd_input_grad_stride2_tiles<1>(dx, dy, w, s, N);
  winograd_input_grad_stride2_tiles<0>(dx, dy, w, s, N);
}

namespace {

// x: [N, C, H, W], dy: [N, K, Ho, Wo] -> dw: [K, C, 3, 3], by F(3x3, M x M) (M = 2: Ho, Wo even;
// M = 4: any, the last tiles' dy zero past the plane). Chunks of rows of tiles (F(3x3, 2x2): the
// forward's; F(3x3, 4x4): `budget` bytes of transformed input and dy, the tiles being the
// products' depth); their products summed into a fixed number of groups of consecutive chunks,
// then the groups in order: the same sums for any number of threads.
template <int M>
void weight_grad_tiles(float* dw, const float* x, const float* dy, const ConvShape& s, i64 N, i64 budget) {
  constexpr int X = (M + 2) * (M + 2);  // positions
  const i64 C = s.C, K = s.K, H = s.H, W = s.W, Ho = s.Ho, Wo = s.Wo;
  const i64 Th = (Ho + M - 1) / M, Tw = (Wo + M - 1) / M, Twv = (Tw + VL - 1) / VL * VL, Wr = 2 * Twv + 2;
  const i64 Kp = (K + MR - 1) / MR * MR, Cp = (C + NR - 1) / NR * NR;
  const TileChunks ch(N, Th, Tw, C + K, M, 0, budget);
  const i64 chunks = ch.chunks;
  // (groups: at most 8, fewer where their sums would pass kWinogradSumsBytes, but two at least, for
  // two threads; from the shapes only)
  const i64 sum_bytes = i64(X) * Kp * Cp * i64(sizeof(float));
  const i64 groups = std::min<i64>({chunks, 8, std::max<i64>(2, kWinogradSumsBytes / std::max<i64>(sum_bytes, 1))}),
            LS = odd_lines(ch.L_max + VL);
  const i64 vs = odd_lines(C * LS), es = odd_lines(K * LS);
  const size_t packed = lines(size_t(ch.L_max) * Kp) + lines(size_t(ch.L_max) * Cp);
  // a thread's staging: F(2x2) the rows it transforms ([Hr][Wr]); F(4x4) the 6 x 6 blocks
  // ([36][LS]) and the padded rows of x and of dy ([Hr][Wp] each, zeroed once: each keeps its own
  // border)
  const i64 Wp = f4_row_floats(Twv), blocks = f4_blocks_floats(LS, Tw);
  const size_t stage = M == 2 ? lines(size_t(ch.Hr) * Wr) : lines(size_t(blocks + 2 * ch.Hr * Wp));
  const size_t per_thread = size_t(X * (vs + es)) + stage + packed;
  const int nt = threads_over(double(N) * K * C * X * Th * Tw, groups);
  // A single chunk (one image, or a few small ones) is one group, which one thread made while the
  // other waited: there its transforms go over the channels and its products over the threads
  // (the same products, each tile's sum in the same order)
  const int inner = chunks == 1 ? threads_over(double(N) * K * C * X * Th * Tw, X) : 1;
  ScratchFloats scratch(size_t(inner > 1 ? 0 : nt) * per_thread), sums(size_t(groups) * X * Kp * Cp);
  auto zero_borders = [&](float* staging) {
    if (M == 4) std::fill_n(staging + blocks, 2 * ch.Hr * Wp, 0.0f);
  };
  // channel j (input channel j, or dy's channel j - C) of the tiles of rows r0..r1 -> v or e
  auto transform = [&](i64 j, i64 r0, i64 r1, float* v, float* e, float* staging) {
    auto ask_ahead = [&](i64 n) {  // (channel j's plane two images on)
      if (n + 2 < N)
        prefetch_plane(j < C ? x + ((n + 2) * C + j) * H * W : dy + ((n + 2) * K + j - C) * Ho * Wo,
                       j < C ? H * W : Ho * Wo);
    };
    if constexpr (M == 2) {
      by_image(r0, r1, Th, Tw, [&](i64 n, i64 th0, i64 th1, i64 l0) {
        ask_ahead(n);
        if (j < C)
          transform_input_rows(v + j * LS + l0, vs, x + (n * C + j) * H * W, H, W, s.pad, th0, th1, Tw, staging, Wr);
        else
          transform_dy_rows(e + (j - C) * LS + l0, es, dy + (n * K + j - C) * Ho * Wo, Wo, th0, th1, Tw, staging, Wr);
      });
    } else {
      float* padded = staging + blocks + (j < C ? 0 : ch.Hr * Wp);
      by_image(r0, r1, Th, Tw, [&](i64 n, i64 th0, i64 th1, i64 l0) {
        ask_ahead(n);
        if (j < C)
          gather_input_blocks(staging, LS, x + (n * C + j) * H * W, H, W, s.pad, th0, th1, Tw, l0, padded, Wp);
        else
          gather_input_blocks(staging, LS, dy + (n * K + j - C) * Ho * Wo, Ho, Wo, 0, th0, th1, Tw, l0, padded, Wp);
      });
      finish_input_blocks(staging, LS, (r1 - r0) * Tw, Tw);
      if (j < C)
        transform_input_blocks(v + j * LS, vs, staging, LS, (r1 - r0) * Tw);
      else
        transform_dy_blocks(e + (j - C) * LS, es, staging, LS, (r1 - r0) * Tw);
    }
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
    const size_t mine = stage + packed;  // staging, ep, vt: each thread's
    ScratchFloats planes(size_t(X) * (vs + es)), own(size_t(inner) * mine);
    float* v = planes.get();  // [X][C][LS]
    float* e = v + X * vs;    // [X][K][LS]
#pragma omp parallel num_threads(inner)
    {
      float* staging = own.get() + size_t(omp_get_thread_num()) * mine;
      float* ep = staging + stage;
      float* vt = ep + lines(size_t(ch.L_max) * Kp);
      zero_borders(staging);
#pragma omp for schedule(static)
      for (i64 j = 0; j < C + K; ++j) transform(j, 0, ch.rows_total, v, e, staging);
#pragma omp for schedule(static)
      for (int xi = 0; xi < X; ++xi)
        product(xi, ch.rows_total * Tw, v, e, ep, vt, sums.get() + size_t(xi) * Kp * Cp, false);
    }
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 group = 0; group < (inner > 1 ? 0 : groups); ++group) {
    float* v = scratch.get() + size_t(omp_get_thread_num()) * per_thread;  // [X][C][LS], planes vs apart
    float* e = v + X * vs;                                                 // [X][K][LS], planes es apart
    float* staging = e + X * es;
    float* ep = staging + stage;                          // e^T in panels: [Kp / MR][L][MR]
    float* vt = ep + lines(size_t(ch.L_max) * Kp);        // v^T: [L][Cp]
    float* m = sums.get() + size_t(group) * X * Kp * Cp;  // [X][Kp][Cp]
    zero_borders(staging);
    for (i64 chunk = group * chunks / groups; chunk < (group + 1) * chunks / groups; ++chunk) {
      const i64 r0 = chunk * ch.rows_per_chunk, r1 = std::min(ch.rows_total, r0 + ch.rows_per_chunk);
      for (i64 j = 0; j < C + K; ++j) transform(j, r0, r1, v, e, staging);
      for (int xi = 0; xi < X; ++xi)
        product(xi, (r1 - r0) * Tw, v, e, ep, vt, m + size_t(xi) * Kp * Cp, chunk > group * chunks / groups);
    }
  }
  ScratchFloats summed(groups > 1 ? size_t(X) * Kp * Cp : 0);  // (one group: its sums are the total)
  if (groups > 1) sum_parts(summed.get(), sums.get(), groups, X * Kp * Cp);
  const float* total = groups > 1 ? summed.get() : sums.get();
  // dW = G^T M G (over the threads by output channel: on one, a sixth of 128->256 on 4 x 4 at batch 32)
#pragma omp parallel for num_threads(threads_over(double(X) * 4 * K * C, K)) schedule(static)
  for (i64 k = 0; k < K; ++k) {
    if constexpr (M == 2) {
      for (i64 c = 0; c < C; ++c) {
        float* out = dw + (k * C + c) * 9;
        float mm[4][4], t[3][4];
        for (int xi = 0; xi < 16; ++xi) mm[xi / 4][xi % 4] = total[size_t((xi * Kp + k) * Cp + c)];
        for (int j = 0; j < 4; ++j) {
          t[0][j] = mm[0][j] + 0.5f * (mm[1][j] + mm[2][j]);
          t[1][j] = 0.5f * (mm[1][j] - mm[2][j]);
          t[2][j] = 0.5f * (mm[1][j] + mm[2][j]) + mm[3][j];
        }
        for (int i = 0; i < 3; ++i) {
          out[i * 3 + 0] = t[i][0] + 0.5f * (t[i][1] + t[i][2]);
          out[i * 3 + 1] = 0.5f * (t[i][1] - t[i][2]);
          out[i * 3 + 2] = 0.5f * (t[i][1] + t[i][2]) + t[i][3];
        }
      }
    } else {
      // VL input channels at a time, in the vectors (value by value, this was a third of 128->256's dw
      // on 4 x 4 at batch 32; Cp, a multiple of the vectors, keeps the loads inside M)
      for (i64 c0 = 0; c0 < C; c0 += VL) {
        vec t[3][6];  // G^T M: along the columns first
        for (int j = 0; j < 6; ++j) {
          vec column[6], rows3[3];
          for (int i = 0; i < 6; ++i) column[i] = load(total + ((6 * i + j) * Kp + k) * Cp + c0);
          apply_gt6(column, rows3);
          for (int r = 0; r < 3; ++r) t[r][j] = rows3[r];
        }
        float out[9][VL];
        for (int r = 0; r < 3; ++r) {  // then (G^T M) G along the rows
          vec row3[3];
          apply_gt6(t[r], row3);
          for (int q = 0; q < 3; ++q) store(out[3 * r + q], row3[q]);
        }
        for (i64 c = c0; c < std::min<i64>(C, c0 + VL); ++c)
          for (int tap = 0; tap < 9; ++tap) dw[(k * C + c) * 9 + tap] = out[tap][c - c0];
      }
    }
  }
}

}  // namespace

// dw by F(3x3, m x m), m = 2 or 4 (the ISA table's entry)
void winograd_weight_grad(float* dw, const float* x, const float* dy, const ConvShape& s, i64 N, int m) {
  const i64 depth_bytes = kWinogradWeightGradTiles * 36 * (s.C + s.K) * i64(sizeof(float));
  if (m == 4) return weight_grad_tiles<4>(dw, x, dy, s, N, std::max(kWinogradChunkBytes, depth_bytes));
  weight_grad_tiles<2>(dw, x, dy, s, N, kWinogradChunkBytes);
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
