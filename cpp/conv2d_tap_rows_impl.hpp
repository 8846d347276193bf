// The weight gradient of a first layer (few input channels: an RGB or grey image; 3x3 to 7x7
// kernels, up to 64 output channels), compiled once per instruction set. The GEMM paths build
// packed rows of taps (im2col's, or the panels' gather of C = 3 floats at a time) and spend as
// long packing as multiplying. Here nothing is packed: dy is laid out pixel-major (an output
// pixel's K channels in KV vectors), and a group of G rows of taps (input channel c, kernel row r;
// S taps each) keeps its G*S*KV sums of dw^T in registers over the whole image while, pixel by
// pixel, every tap's input value is broadcast from the padded image straight into a multiply-add
// with dy's vectors: one load of dy per G*S*KV multiply-adds.
//   dw^T[(c, r, q)][k] = sum over output pixels (oh, ow) of
//                        x_pad[c][oh*stride + r][ow*stride + q] * dy[k][oh][ow]
// Images over the threads, one partial an image, summed in image order: the same for any
// thread count.
// At stride 1 with few taps (pixel_lanes_take), dw the other way round instead: output pixels in
// the vectors' lanes, dy read in place (no transposition) and each tap's input values laid out
// consecutively (ShiftedPlanes); per vector of pixels, KB vectors of dy and G of input values make
// KB*G multiply-adds into sums that are added across their lanes at the end (pixel_lanes).
//
// Included, inside namespace cnnfast::<isa> and its target pragmas, after conv2d_panels_impl.hpp,
// by the panels' per-ISA files (conv2d_panels_avx512.cpp, conv2d_panels_portable.cpp), whose
// transpose_blocks lays dy out pixel-major. (No include guard: each includes it once.)

namespace {

constexpr int kTapVL = CNNFAST_VEC_BYTES / 4;  // floats per vector
typedef float TapVec __attribute__((vector_size(CNNFAST_VEC_BYTES)));
// Vector registers the sums may take: AVX-512 and NEON have 32, SSE2 and AVX2 16; KV more hold a
// pixel's dy, one or two stay free for the compiler
#if defined(CNNFAST_ISA_AVX512) || defined(__aarch64__)
constexpr int kRegisters = 32;
#else
constexpr int kRegisters = 16;
#endif
constexpr int kMaxS = 7, kMaxKV = 4, kMaxG = 8;
constexpr bool fits(int S, int KV, int G) { return S * KV * G + KV + 2 <= kRegisters; }

// sums[g][q][kv] over every output pixel: rows[g] is tap row g's first input value (pixel
// (0, 0)'s), dyt the image's dy pixel-major (pixel p's KV vectors at dyt + p*ld)
inline TapVec load_tap_vec(const float* p) {
  TapVec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store_tap_vec(float* p, TapVec v) { __builtin_memcpy(p, &v, sizeof v); }

template <int S, int KV, int G>
void tap_rows(float* out, const float* const* rows, const float* dyt, i64 ld, i64 Ho, i64 Wo, i64 Wp, i64 st) {
  TapVec sums[G * S * KV] = {};  // (one flat array, every index a constant: the compiler keeps it in registers)
  const float* row[G];
  for (int g = 0; g < G; ++g) row[g] = rows[g];
  for (i64 oh = 0; oh < Ho; ++oh) {
    const float* d = dyt + oh * Wo * ld;
    const i64 row0 = oh * st * Wp;
    for (i64 ow = 0; ow < Wo; ++ow, d += ld) {
      TapVec dv[KV];
      for (int kv = 0; kv < KV; ++kv) dv[kv] = load_tap_vec(d + kv * kTapVL);
      const i64 at = row0 + ow * st;
      for (int g = 0; g < G; ++g)
        for (int q = 0; q < S; ++q) {
          const float xv = row[g][at + q];
          for (int kv = 0; kv < KV; ++kv) sums[(g * S + q) * KV + kv] += xv * dv[kv];
        }
    }
  }
  for (int i = 0; i < G * S * KV; ++i) store_tap_vec(out + i * kTapVL, sums[i]);
}

using TapRowsKernel = void (*)(float*, const float* const*, const float*, i64, i64, i64, i64, i64);

// The kernel for (S, KV, G), or null where its sums would not fit the registers
template <int S, int KV, int G>
constexpr TapRowsKernel kernel_if_fits() {
  if constexpr (fits(S, KV, G))
    return &tap_rows<S, KV, G>;
  else
    return nullptr;
}
template <int S, int KV, int... G>
constexpr auto kernels_over_g(std::integer_sequence<int, G...>) {
  return std::array<TapRowsKernel, sizeof...(G)>{kernel_if_fits<S, KV, G + 1>()...};
}
template <int S, int... KV>
constexpr auto kernels_over_kv(std::integer_sequence<int, KV...>) {
  return std::array<std::array<TapRowsKernel, kMaxG>, sizeof...(KV)>{
      kernels_over_g<S, KV + 1>(std::make_integer_sequence<int, kMaxG>())...};
}
template <int... S>
constexpr auto kernels_over_s(std::integer_sequence<int, S...>) {
  return std::array<std::array<std::array<TapRowsKernel, kMaxG>, kMaxKV>, sizeof...(S)>{
      kernels_over_kv<S + 1>(std::make_integer_sequence<int, kMaxKV>())...};
}
// kKernels[S-1][KV-1][G-1]
constexpr auto kKernels = kernels_over_s(std::make_integer_sequence<int, kMaxS>());

// The most tap rows whose sums fit the registers together (0: not even one)
int rows_per_group(i64 S, i64 KV) {
  int g = 0;
  while (g < kMaxG && fits(int(S), int(KV), g + 1)) ++g;
  return g;
}

// ---- forward: J output pixels of a row by KV vectors of output channels in registers ----
// acc[j][kv] = b + sum over taps (c, r, q) of x_pad[c][oh*ST + r][(ow0 + j)*ST + q] * wt[tap][kv]:
// per tap, KV loads of the weights and J input values broadcast into J*KV multiply-adds; the
// input is read where it lies (any stride: the J values are ST apart), nothing is packed.
// (GCC's predictive commoning would keep the input values one tap passes to the next, ST apart,
// in spilled registers: here every value is loaded where it is used, straight into a broadcast)
// (The pixel loops are unrolled by pragma: GCC unrolls up to 16 by itself, and AVX-512's tiles of one
// vector of channels are up to 28 pixels, whose sums then lived on the stack, a load and a store each
// multiply-add: 8->16 3x3 on 28 x 28 took 1.4-1.7x the time.)
#if defined(__GNUC__) && !defined(__clang__)
#define CNNFAST_NO_PREDICTIVE_COMMONING __attribute__((optimize("no-predictive-commoning")))
#else
#define CNNFAST_NO_PREDICTIVE_COMMONING
#endif
// Only the kernel rows r0..r1 (of R) are read: the others fall in the padding above or below for every pixel of the
// tile, whose zeros add nothing (so the sums are the same with finite weights).
template <int J, int KV, int ST>
CNNFAST_NO_PREDICTIVE_COMMONING void pixels_forward(float* out, i64 ld, const float* x, const float* wt, const float* b,
                                                    i64 C, i64 R, i64 r0, i64 r1, i64 S, i64 plane, i64 Wp, i64 Kp) {
  TapVec acc[J * KV];  // b (null: out's sums so far) + the taps of these C channels
  for (int kv = 0; kv < KV; ++kv) {
    const TapVec bias = b ? load_tap_vec(b + kv * kTapVL) : TapVec{};
#pragma GCC unroll 32
    for (int j = 0; j < J; ++j) acc[j * KV + kv] = b ? bias : load_tap_vec(out + j * ld + kv * kTapVL);
  }
  for (i64 c = 0; c < C; ++c)
    for (i64 r = r0; r < r1; ++r) {
      const float* xr = x + c * plane + r * Wp;
      const float* w = wt + (c * R + r) * S * Kp;
      for (i64 q = 0; q < S; ++q, w += Kp) {
        TapVec wv[KV];
        for (int kv = 0; kv < KV; ++kv) wv[kv] = load_tap_vec(w + kv * kTapVL);
#pragma GCC unroll 32
        for (int j = 0; j < J; ++j) {
          const float xv = xr[j * ST + q];
          for (int kv = 0; kv < KV; ++kv) acc[j * KV + kv] += xv * wv[kv];
        }
      }
    }
#pragma GCC unroll 32
  for (int j = 0; j < J; ++j)
    for (int kv = 0; kv < KV; ++kv) store_tap_vec(out + j * ld + kv * kTapVL, acc[j * KV + kv]);
}

// The same for J pixels anywhere in the image (a tile may run on into the next row: with 3-4
// vectors of channels a tile is 6-9 pixels, and rows of 8 would leave tiles of 2 that multiply-add
// at half the rate): pixel j's first input value at x + at[j], the J pointers in registers; kernel rows r0..r1.
template <int J, int KV>
CNNFAST_NO_PREDICTIVE_COMMONING void pixels_forward_at(float* out, i64 ld, const float* x, const i64* at,
                                                       const float* wt, const float* b, i64 C, i64 R, i64 r0, i64 r1,
                                                       i64 S, i64 plane, i64 Wp, i64 Kp) {
  TapVec acc[J * KV];
  for (int kv = 0; kv < KV; ++kv) {
    const TapVec bias = b ? load_tap_vec(b + kv * kTapVL) : TapVec{};
#pragma GCC unroll 32
    for (int j = 0; j < J; ++j) acc[j * KV + kv] = b ? bias : load_tap_vec(out + j * ld + kv * kTapVL);
  }
  const float* px[J];
  for (int j = 0; j < J; ++j) px[j] = x + at[j];
  for (i64 c = 0; c < C; ++c)
    for (i64 r = r0; r < r1; ++r) {
      const i64 row = c * plane + r * Wp;
      const float* w = wt + (c * R + r) * S * Kp;
      for (i64 q = 0; q < S; ++q, w += Kp) {
        TapVec wv[KV];
        for (int kv = 0; kv < KV; ++kv) wv[kv] = load_tap_vec(w + kv * kTapVL);
#pragma GCC unroll 32
        for (int j = 0; j < J; ++j) {
          const float xv = px[j][row + q];
          for (int kv = 0; kv < KV; ++kv) acc[j * KV + kv] += xv * wv[kv];
        }
      }
    }
#pragma GCC unroll 32
  for (int j = 0; j < J; ++j)
    for (int kv = 0; kv < KV; ++kv) store_tap_vec(out + j * ld + kv * kTapVL, acc[j * KV + kv]);
}

using PixelsKernel = void (*)(float*, i64, const float*, const float*, const float*, i64, i64, i64, i64, i64, i64, i64,
                              i64);
using PixelsAtKernel = void (*)(float*, i64, const float*, const i64*, const float*, const float*, i64, i64, i64, i64,
                                i64, i64, i64, i64);
constexpr int kMaxAtJ = 9, kMinAtKV = 3;  // tiles of at most 9 pixels: 3 or 4 vectors of channels
template <int J, int KV>
constexpr PixelsAtKernel pixels_at_kernel_if_fits() {
  if constexpr (J * KV + KV + 2 <= kRegisters)
    return &pixels_forward_at<J, KV>;
  else
    return nullptr;
}
template <int KV, int... J>
constexpr auto pixels_at_over_j(std::integer_sequence<int, J...>) {
  return std::array<PixelsAtKernel, sizeof...(J)>{pixels_at_kernel_if_fits<J + 1, KV>()...};
}
// kPixelAtKernels[KV - kMinAtKV][J-1]
constexpr std::array<std::array<PixelsAtKernel, kMaxAtJ>, kMaxKV - kMinAtKV + 1> kPixelAtKernels = {
    pixels_at_over_j<3>(std::make_integer_sequence<int, kMaxAtJ>()),
    pixels_at_over_j<4>(std::make_integer_sequence<int, kMaxAtJ>())};
constexpr int kMaxJ = 28;
constexpr bool pixels_fit(int J, int KV) { return J * KV + KV + 2 <= kRegisters; }
template <int J, int KV, int ST>
constexpr PixelsKernel pixels_kernel_if_fits() {
  if constexpr (pixels_fit(J, KV))
    return &pixels_forward<J, KV, ST>;
  else
    return nullptr;
}
template <int KV, int ST, int... J>
constexpr auto pixels_over_j(std::integer_sequence<int, J...>) {
  return std::array<PixelsKernel, sizeof...(J)>{pixels_kernel_if_fits<J + 1, KV, ST>()...};
}
template <int ST, int... KV>
constexpr auto pixels_over_kv(std::integer_sequence<int, KV...>) {
  return std::array<std::array<PixelsKernel, kMaxJ>, sizeof...(KV)>{
      pixels_over_j<KV + 1, ST>(std::make_integer_sequence<int, kMaxJ>())...};
}
// kPixelKernels[stride-1][KV-1][J-1], for strides 1 and 2
constexpr std::array<std::array<std::array<PixelsKernel, kMaxJ>, kMaxKV>, 2> kPixelKernels = {
    pixels_over_kv<1>(std::make_integer_sequence<int, kMaxKV>()),
    pixels_over_kv<2>(std::make_integer_sequence<int, kMaxKV>())};
int pixels_per_tile(i64 KV) {
  int j = 0;
  while (j < kMaxJ && pixels_fit(j + 1, int(KV))) ++j;
  return j;
}

// ---- dw with output pixels in the vectors' lanes ----
// sums[kb][g] (a vector of pixel lanes each) over P output pixels: dyk[kb] dy's plane of channel
// k0 + kb, xg[g] tap g's input value of each output pixel (ShiftedPlanes: P consecutive floats).
// Per vector of pixels: KB loads of dy held in registers, then G loads of input values, each
// multiplied by all KB; the last P % kTapVL pixels through zero-filled copies.
template <int KB, int G>
void pixel_lanes(float* acc, const float* const* dyk, const float* const* xg, i64 P) {
  TapVec sums[KB * G];
#pragma GCC unroll 48
  for (int i = 0; i < KB * G; ++i) sums[i] = load_tap_vec(acc + i * kTapVL);
  const i64 vecs = P / kTapVL, tail = P % kTapVL;
  auto step = [&](const TapVec* dv, auto&& input) {
    for (int g = 0; g < G; ++g) {
      TapVec xv = input(g);
      // (held in a register: else GCC folds the load into each of the KB multiply-adds, KB loads)
#if defined(CNNFAST_ISA_AVX512)
      __asm__("" : "+v"(xv));  // (any of the 32 zmm registers)
#elif defined(__SSE__)
      __asm__("" : "+x"(xv));
#elif defined(__aarch64__)
      __asm__("" : "+w"(xv));
#endif
      for (int k = 0; k < KB; ++k) sums[k * G + g] += dv[k] * xv;
    }
  };
  for (i64 v = 0; v < vecs; ++v) {
    TapVec dv[KB];
    for (int k = 0; k < KB; ++k) dv[k] = load_tap_vec(dyk[k] + v * kTapVL);
    step(dv, [&](int g) { return load_tap_vec(xg[g] + v * kTapVL); });
  }
  if (tail > 0) {
    auto part = [&](const float* p) {
      float buf[kTapVL] = {};
      std::memcpy(buf, p + vecs * kTapVL, sizeof(float) * size_t(tail));
      return load_tap_vec(buf);
    };
    TapVec dv[KB];
    for (int k = 0; k < KB; ++k) dv[k] = part(dyk[k]);
    step(dv, [&](int g) { return part(xg[g]); });
  }
#pragma GCC unroll 48
  for (int i = 0; i < KB * G; ++i) store_tap_vec(acc + i * kTapVL, sums[i]);
}
using PixelLanesKernel = void (*)(float*, const float* const*, const float* const*, i64);
constexpr int kMaxLaneKB = 6, kMaxLaneG = 8;
constexpr i64 kLaneChunks = 16;
constexpr bool lanes_fit(int KB, int G) { return KB * G + KB + 2 <= kRegisters; }
template <int KB, int G>
constexpr PixelLanesKernel lanes_kernel_if_fits() {
  if constexpr (lanes_fit(KB, G))
    return &pixel_lanes<KB, G>;
  else
    return nullptr;
}
template <int KB, int... G>
constexpr auto lanes_over_g(std::integer_sequence<int, G...>) {
  return std::array<PixelLanesKernel, sizeof...(G)>{lanes_kernel_if_fits<KB, G + 1>()...};
}
template <int... KB>
constexpr auto lanes_over_kb(std::integer_sequence<int, KB...>) {
  return std::array<std::array<PixelLanesKernel, kMaxLaneG>, sizeof...(KB)>{
      lanes_over_g<KB + 1>(std::make_integer_sequence<int, kMaxLaneG>())...};
}
// kLaneKernels[KB-1][G-1]
constexpr auto kLaneKernels = lanes_over_kb(std::make_integer_sequence<int, kMaxLaneKB>());

// dw: [K, T] from `count` parts of dw^T ([count][T][ld], columns K.. unused), added in order, and db:
// [K] from the images' bias lanes ([N][K][16], row_lanes')
void finish_weight_grad(float* dw, float* db, const float* parts, i64 count, i64 T, i64 ld, i64 K, const float* lanes,
                        i64 N) {
  std::vector<float> total(size_t(T) * ld);
  sum_parts(total.data(), parts, count, T * ld);
  for (i64 k = 0; k < K; ++k)
    for (i64 t = 0; t < T; ++t) dw[k * T + t] = total[size_t(t * ld + k)];
  sum_bias_lanes(db, lanes, N, K);
}

// An image laid out so that a tap's input values for the output pixels in order are consecutive
// floats (stride 1): plane (c, q) for input channel c and kernel column q holds
// [h][ow] = x_pad[c][h][ow + q] (Hp rows of Wo; zero outside x), and tap (c, r, q) reads plane
// (c, q) from row r on. Every float written by copy, row by row from x.
struct ShiftedPlanes {
  i64 plane, floats;
  explicit ShiftedPlanes(const ConvShape& s) : plane(s.Hp * s.Wo), floats(s.C * s.S * plane) {}
  i64 tap_offset(const ConvShape& s, i64 t) const {
    const i64 c = t / (s.R * s.S), r = t / s.S % s.R, q = t % s.S;
    return (c * s.S + q) * plane + r * s.Wo;
  }
  // x_n: [C, H, W] -> dst
  void copy(float* dst, const float* x, const ConvShape& s) const {
    for (i64 c = 0; c < s.C; ++c)
      for (i64 q = 0; q < s.S; ++q) {
        // the output columns whose input column ow + q - pad lies inside [0, W)
        const i64 lo = std::clamp<i64>(s.pad - q, 0, s.Wo), hi = std::clamp<i64>(s.W + s.pad - q, lo, s.Wo);
        float* out = dst + (c * s.S + q) * plane;
        for (i64 h = 0; h < s.Hp; ++h, out += s.Wo) {
          const i64 ih = h - s.pad;
          if (ih < 0 || ih >= s.H) {
            std::fill(out, out + s.Wo, 0.0f);
            continue;
          }
          std::fill(out, out + lo, 0.0f);
          std::memcpy(out + lo, x + (c * s.H + ih) * s.W + lo + q - s.pad, sizeof(float) * size_t(hi - lo));
          std::fill(out + hi, out + s.Wo, 0.0f);
        }
      }
  }
};

// Where pixel_lanes_weight_grad serves instead of the tap rows: stride 1 and at most kDirectTaps taps.
// There the tap rows' transposition of dy is a large part of the work (and with few output channels
// their vectors of channels run part empty); with more taps it is amortised, and strided, the
// layout's copies and the short images cost more than they save. Backward without dx, batch 128,
// one thread, ms, tap rows -> here: AVX-512 3->32 3x3 on 32 x 32 3.45 -> 3.06-3.18, 1->6 5x5 on
// 32 x 32 (LeNet's) 0.86 -> 0.42-0.50, 1->32 3x3 on 28 x 28 0.95-1.09 -> 0.90-0.98; AVX2 3.33-3.54
// -> 3.18-3.21, 0.93 -> 0.42, 1.13-1.40 -> 1.01-1.02. Not taken (tap rows faster): 3->64 5x5 on
// 48 x 48 (batch 32) 7.97 -> 7.82 AVX-512 but 8.95 -> 10.10 AVX2, 3->16 7x7 on 64 x 64 6.15 -> 6.33
// and 7.09 -> 8.20, strided 3->64 7x7 6.46 -> 7.39 and 7.84 -> 8.75, strided 3->32 3x3 (batch 128)
// 0.81 -> 1.02 and 0.92 -> 1.07 (the strided ones with a strided version of ShiftedPlanes, made from
// the image's phases, since dropped: its copies, and each unit's sums loaded and stored around only 16
// vectors of pixels, cost more than the transposition saved).
// (The tap rows' limits too: kernels up to kMaxS wide and 2 * kMaxKV vectors of output channels; the
// GEMM paths take the rest, as before.)
bool pixel_lanes_take(const ConvShape& s) {
  return s.stride == 1 && s.taps() <= kDirectTaps && s.S <= kMaxS && s.K <= 2 * kMaxKV * kTapVL;
}

// dw: [K, C, R, S] and db: [K] from x: [N, C, H, W] and dy: [N, K, Ho, Wo] (stride 1), output pixels
// in the lanes: dw[k][t] = the lanes' sum of dy[k][pixels] * x_t[pixels] over the image's vectors
// of pixels, dy read in place and x laid out as ShiftedPlanes. Channels in blocks of KB and taps in
// groups of G, each (block, group) a pass over the image with its KB*G sums in registers. The
// images in kLaneChunks chunks (from N alone), over the threads: each chunk's sums kept in vectors
// over its images, then added across the lanes, and the chunks' sums added in order: the same for
// any thread count. The bias gradient as everywhere (row_lanes).
bool pixel_lanes_weight_grad(float* dw, float* db, const float* x, const float* dy, const ConvShape& s, i64 N) {
  const i64 K = s.K, P = s.P(), T = s.taps();
  // the blocks: the least cost, counting the multiply-adds (channels and taps padded to whole
  // blocks) and the loads (a quarter of a multiply-add each)
  i64 KB = 0, G = 0;
  double best = 0;
  for (int kb = 1; kb <= kMaxLaneKB; ++kb)
    for (int g = 1; g <= kMaxLaneG; ++g) {
      if (!lanes_fit(kb, g) || (g < kMaxLaneG && lanes_fit(kb, g + 1))) continue;  // (the most taps for kb)
      const i64 ke = even_block(K, kb), ge = even_block(T, g);
      const double cost = double((K + ke - 1) / ke * ke) * double((T + ge - 1) / ge * ge) *
                          (1.0 + 0.25 * double(ke + ge) / double(ke * ge));
      if (KB == 0 || cost < best) best = cost, KB = ke, G = ge;
    }
  const i64 blocks_k = (K + KB - 1) / KB, groups = (T + G - 1) / G;
  const ShiftedPlanes layout(s);
  std::vector<i64> tap_offset(static_cast<size_t>(T));
  for (i64 t = 0; t < T; ++t) tap_offset[size_t(t)] = layout.tap_offset(s, t);
  // chunks of consecutive images (at most kLaneChunks, from N only), each with its sums in vectors
  // of lanes over its images, then added across the lanes once
  const i64 chunks = std::min<i64>(std::max<i64>(N, 1), kLaneChunks), units = blocks_k * groups;
  const int inner = N == 1 && double(K) * P * T >= kSplitChunkWork ? threads_over(double(K) * P * T, units) : 1;
  const int nt = inner > 1 ? inner : threads_over(double(N) * K * P * T, chunks);
  const size_t unit_sums = size_t(KB * G * kTapVL), planes = lines(size_t(layout.floats));
  const size_t per_thread = planes + size_t(units) * unit_sums;  // the image's planes, then every unit's sums
  ScratchFloats scratch(size_t(nt) * per_thread), partial(size_t(chunks) * T * K),
      lanes(size_t(std::max<i64>(N, 1)) * K * 16);
  auto lay_out = [&](i64 n, float* xp, bool bias) {
    layout.copy(xp, x + n * s.C * s.H * s.W, s);
    for (i64 k = 0; bias && k < K; ++k) row_lanes(lanes.get() + (n * K + k) * 16, dy + (n * K + k) * P, P);
  };
  // unit u (channel block u / groups, taps (u % groups)*G..) of image n into its sums
  auto unit = [&](i64 u, const float* xp, i64 n, float* acc) {
    const i64 k0 = u / groups * KB, t0 = u % groups * G, kb = std::min(KB, K - k0), g = std::min(G, T - t0);
    const float* dyk[kMaxLaneKB];
    const float* xg[kMaxLaneG];
    for (i64 k = 0; k < kb; ++k) dyk[k] = dy + (n * K + k0 + k) * P;
    for (i64 j = 0; j < g; ++j) xg[j] = xp + tap_offset[size_t(t0 + j)];
    kLaneKernels[size_t(kb - 1)][size_t(g - 1)](acc, dyk, xg, P);
  };
  // unit u's sums across their lanes -> out, dw^T [T][K]
  auto add_lanes = [&](i64 u, const float* acc, float* out) {
    const i64 k0 = u / groups * KB, t0 = u % groups * G, kb = std::min(KB, K - k0), g = std::min(G, T - t0);
    for (i64 k = 0; k < kb; ++k)
      for (i64 j = 0; j < g; ++j) {
        const float* lane = acc + (k * g + j) * kTapVL;
        float total = 0.0f;
        for (int l = 0; l < kTapVL; ++l) total += lane[l];
        out[(t0 + j) * K + k0 + k] = total;
      }
  };
  if (inner > 1) {
#pragma omp parallel num_threads(inner)
    {
      float* xp = scratch.get() + size_t(omp_get_thread_num()) * per_thread;
      lay_out(0, xp, omp_get_thread_num() == 0);
#pragma omp for schedule(static)
      for (i64 u = 0; u < units; ++u) {
        float* acc = xp + planes + size_t(u) * unit_sums;
        std::fill(acc, acc + unit_sums, 0.0f);
        unit(u, xp, 0, acc);
        add_lanes(u, acc, partial.get());
      }
    }
  } else {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 c = 0; c < chunks; ++c) {
      float* xp = scratch.get() + size_t(omp_get_thread_num()) * per_thread;
      float* acc = xp + planes;
      std::fill(acc, acc + size_t(units) * unit_sums, 0.0f);
      for (i64 n = c * N / chunks; n < (c + 1) * N / chunks; ++n) {
        lay_out(n, xp, true);
        for (i64 u = 0; u < units; ++u) unit(u, xp, n, acc + u * unit_sums);
      }
      for (i64 u = 0; u < units; ++u) add_lanes(u, acc + u * unit_sums, partial.get() + c * T * K);
    }
  }
  finish_weight_grad(dw, db, partial.get(), chunks, T, K, K, lanes.get(), N);
  return true;
}

}  // namespace

// dw: [K, C, R, S] and db: [K] from x: [N, C, H, W] and dy: [N, K, Ho, Wo]; false, computing
// nothing, when the kernel's rows are too long (S > 7) or its channels too many (more than
// 2 * kMaxKV vectors; or not one row of taps' sums for a vector of them fits): the caller's
// GEMM path then serves. More than kMaxKV vectors of channels go in blocks, a pass over the
// image each. (Where pixel_lanes_take says so, pixel_lanes_weight_grad instead: within the same
// limits.)
bool tap_rows_weight_grad(float* dw, float* db, const float* x, const float* dy, const ConvShape& s, i64 N) {
  if (pixel_lanes_take(s)) return pixel_lanes_weight_grad(dw, db, x, dy, s, N);
  const i64 C = s.C, K = s.K, R = s.R, S = s.S, P = s.P(), T = s.taps();
  const i64 KV = (K + kTapVL - 1) / kTapVL, Kp = KV * kTapVL;
  if (S > kMaxS || KV > 2 * kMaxKV || rows_per_group(S, 1) == 0) return false;
  // channel blocks of KB vectors (as few as let one row of taps' sums fit), then groups of at
  // most rows_per_group tap rows, both as even as they go (9 rows by 4: 3, 3, 3, not 4, 4, 1)
  i64 blocks = 1;
  while ((KV + blocks - 1) / blocks > kMaxKV || rows_per_group(S, (KV + blocks - 1) / blocks) == 0) ++blocks;
  const i64 KB = (KV + blocks - 1) / blocks;
  const i64 rows = C * R, G = even_block(rows, rows_per_group(S, KB));
  const i64 plane = s.Hp * s.Wp;
  const i64 blocks_k = (KV + KB - 1) / KB, groups = (rows + G - 1) / G;
  // one image: its (channel block, tap row group) units over the threads instead (each unit's rows
  // of dw^T are one thread's; one thread made them all while the other waited: 3->16 7x7 on 64 x 64,
  // 0.111 -> 0.090 ms on two AVX-512 threads, 0.221 -> 0.147 on AVX2; a 3->32 3x3 layer, 0.9M
  // multiply-adds, took three times as long split)
  const int inner =
      N == 1 && double(K) * P * T >= kSplitChunkWork ? threads_over(double(K) * P * T, blocks_k * groups) : 1;
  const int nt = inner > 1 ? inner : threads_over(double(N) * K * P * T, N);
  const size_t sums_floats = lines(size_t(G) * S * KB * kTapVL);
  const size_t per_thread = lines(size_t(C) * plane) + lines(size_t(P) * Kp) + sums_floats;
  ScratchFloats scratch(size_t(nt) * per_thread), partial(size_t(std::max<i64>(N, 1)) * T * Kp),
      lanes(size_t(std::max<i64>(N, 1)) * K * 16);  // (the bias gradient's, as the panels' GatherDyPanels)
  zero_each(scratch.get(), nt, per_thread, size_t(C) * plane);
  // image n laid out in xp (x, zero-bordered) and dyt (dy pixel-major), its bias lanes taken
  auto lay_out = [&](i64 n, float* xp, float* dyt, bool bias) {
    copy_into_border(xp, x + n * C * s.H * s.W, C, s);
    const float* dyn = dy + n * K * P;
    transpose_blocks(dyt, Kp, dyn, P, K, P, Kp);  // [K][P] -> [P][Kp], zeros past K
    for (i64 k = 0; bias && k < K; ++k) row_lanes(lanes.get() + (n * K + k) * 16, dyn + k * P, P);
  };
  // unit u: channel block u / groups, tap rows (u % groups)*G.. -> out, dw^T [T][Kp] (tap t = (c*R + r)*S + q)
  auto unit = [&](i64 u, const float* xp, const float* dyt, float* sums, float* out) {
    const i64 kv0 = u / groups * KB, row0 = u % groups * G;
    const i64 kb = std::min(KB, KV - kv0), width = kb * kTapVL, g = std::min(G, rows - row0);
    const float* starts[kMaxG];
    for (i64 j = 0; j < g; ++j) starts[j] = xp + (row0 + j) / R * plane + (row0 + j) % R * s.Wp;
    kKernels[size_t(S - 1)][size_t(kb - 1)][size_t(g - 1)](sums, starts, dyt + kv0 * kTapVL, Kp, s.Ho, s.Wo, s.Wp,
                                                           s.stride);
    for (i64 t = 0; t < g * S; ++t)  // tap rows row0.. are taps row0*S..
      std::memcpy(out + (row0 * S + t) * Kp + kv0 * kTapVL, sums + t * width, sizeof(float) * width);
  };
  if (inner > 1)  // (each thread lays the image out for itself: its passes then read its own cache; reading
                  // another core's made 3->64 5x5 on 48 x 48 1.14x slower than one thread)
#pragma omp parallel num_threads(inner)
  {
    float* xp = scratch.get() + size_t(omp_get_thread_num()) * per_thread;
    float* dyt = xp + lines(size_t(C) * plane);
    lay_out(0, xp, dyt, omp_get_thread_num() == 0);
#pragma omp for schedule(static)
    for (i64 u = 0; u < blocks_k * groups; ++u) unit(u, xp, dyt, dyt + lines(size_t(P) * Kp), partial.get());
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < (inner > 1 ? 0 : N); ++n) {
    float* xp = scratch.get() + size_t(omp_get_thread_num()) * per_thread;  // [C][Hp][Wp], zero border
    float* dyt = xp + lines(size_t(C) * plane);                             // [P][Kp]
    float* sums = dyt + lines(size_t(P) * Kp);                              // [G][S][KB * kTapVL]
    lay_out(n, xp, dyt, true);
    for (i64 u = 0; u < blocks_k * groups; ++u) unit(u, xp, dyt, sums, partial.get() + n * T * Kp);
  }
  finish_weight_grad(dw, db, partial.get(), N, T, Kp, K, lanes.get(), N);
  return true;
}

// y: [N, K, Ho, Wo] = conv2d(x, w, b) for strides 1 and 2, up to kMaxKV vectors of output channels
// (3 at stride 1) and rows of output of 8 pixels or more (or a whole tile, where that is shorter); false,
// computing nothing, otherwise. Input channels go in blocks
// whose weights (a block of channels' taps by the output channels) fit in half of L1, each block's sums added to the
// last's. Images over the threads; each image's output made pixel-major ([P][Kp]) and transposed into place.
bool tap_rows_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N) {
  const i64 C = s.C, K = s.K, R = s.R, S = s.S, P = s.P(), T = s.taps();
  const i64 KV = (K + kTapVL - 1) / kTapVL, Kp = KV * kTapVL;
  // (more channels: the panels' GEMM measured faster, 64->128 3x3 stride 2 on 8x8: 0.55 against
  // 0.79 ms at batch 32 on AVX-512; tiles of under 4 pixels, AVX2's with 4 vectors of channels in
  // its 16 registers, no faster)
  // (3-4 vectors: tiles run on from row to row, pixels_forward_at; fewer: tiles within a row)
  const bool across_rows = KV >= kMinAtKV && pixels_per_tile(KV) <= kMaxAtJ;
  // At stride 1 (no phase split for the panels to pay), only up to 3 vectors of channels and rows
  // of 8 pixels or more, in tiles of a whole row where a row is shorter than a tile: LeNet's 6->16
  // 5x5 on 14 x 14 (rows of 10) at batch 128 0.79x the time of the panels' (their 16 x 16 tile spent a
  // quarter of its time packing 150 taps for 16 channels), 0.72-0.82x AVX2; 32->48 3x3 on 11 x 11
  // 0.72x, 16->32 5x5 on 12 x 12 0.87x (AVX-512); but 32->64 on 13 x 13, 4 vectors, 1.04x.
  // At stride 2 too, rows of 8 pixels or more (they needed a whole tile: AVX-512's tiles of one and two
  // vectors are 28 and 14 pixels): stride-2 16->16 to 14 x 14, 8->16 to 10 x 10, 16->32 to 8 x 8 and
  // 10 x 10, 24->32 to 12 x 12 (3x3 at padding 1) and 32->32 5x5 to 8 x 8 took 0.49-0.93x the panels'
  // time (Zen 5, batch 32/128, 1-2 threads); AVX2's 16->8 and 8->8 to 10 x 10 and 12 x 12 0.52-0.82x.
  const i64 shortest = std::min(8, pixels_per_tile(KV));
  if (s.stride > 2 || KV > kMaxKV || pixels_per_tile(KV) < 4 || (!across_rows && s.Wo < shortest) ||
      (s.stride == 1 && KV > 3))
    return false;
  const i64 plane = s.Hp * s.Wp, most = pixels_per_tile(KV),
            even = even_block(s.Wo, most);  // a row's tiles within a row, as even as they go
  // input channels in near-equal blocks whose weights fill at most 24 KB (32 channels of 3x3 by 64:
  // 8 + 8 + 8 + 8, not 10 + 10 + 10 + 2)
  const i64 cb = even_block(C, std::max<i64>(1, 6144 / (R * S * Kp)));
  const auto& kernels = kPixelKernels[size_t(s.stride - 1)][size_t(KV - 1)];
  std::vector<float> wt(size_t(T) * Kp), bias(size_t(Kp), 0.0f);  // w^T [T][Kp], zeros past K
  transpose_blocks(wt.data(), Kp, w, T, K, T, Kp);
  std::copy(b, b + K, bias.begin());
  // tile u of channel block c0 -> out [P][Kp] (c0 == 0 adds the bias; each tile's blocks in order)
  const i64 row_tiles = (s.Wo + even - 1) / even, units = across_rows ? (P + most - 1) / most : s.Ho * row_tiles;
  // (across rows) each output pixel's first input value, once a call (two divisions a pixel, made
  // again for every tile and block of channels, were a tenth of a stride-2 32->64 layer's time)
  std::vector<i64> at(across_rows ? size_t(P) : 0);
  for (i64 oh = 0; across_rows && oh < s.Ho; ++oh)
    for (i64 ow = 0; ow < s.Wo; ++ow) at[size_t(oh * s.Wo + ow)] = (oh * s.Wp + ow) * s.stride;
  auto tile = [&](i64 u, i64 c0, const float* src, float* out) {
    const float* wc = wt.data() + c0 * R * S * Kp;
    const float* bc = c0 == 0 ? bias.data() : nullptr;
    const i64 cn = std::min(cb, C - c0);
    if (across_rows) {
      const i64 p0 = u * most, jn = std::min<i64>(most, P - p0);
      // (the kernel rows some pixel of the tile reads inside the image: the last row's first, the first row's last;
      // within 0..R: a row reading only the padding above has an empty range that starts past R when pad > R)
      const i64 r1 = std::min(R, taps_inside(s, p0 / s.Wo, s.H, R).second),
                r0 = std::min(r1, taps_inside(s, (p0 + jn - 1) / s.Wo, s.H, R).first);
      kPixelAtKernels[size_t(KV - kMinAtKV)][size_t(jn - 1)](out + p0 * Kp, Kp, src + c0 * plane, at.data() + p0, wc,
                                                             bc, cn, R, r0, r1, S, plane, s.Wp, Kp);
      return;
    }
    const i64 oh = u / row_tiles, ow0 = u % row_tiles * even;  // (a row of 16 in tiles of 8 and 8, not 14 and 2)
    const i64 jn = std::min<i64>(even, s.Wo - ow0);
    const auto rows = taps_inside(s, oh, s.H, R);  // (the kernel rows inside the image)
    kernels[size_t(jn - 1)](out + (oh * s.Wo + ow0) * Kp, Kp, src + c0 * plane + oh * s.stride * s.Wp + ow0 * s.stride,
                            wc, bc, cn, R, rows.first, rows.second, S, plane, s.Wp, Kp);
  };
  auto tiles_of = [&](i64 u0, i64 u1, const float* src, float* out) {  // tiles u0..u1, each channel block in turn
    for (i64 c0 = 0; c0 < C; c0 += cb)
      for (i64 u = u0; u < u1; ++u) tile(u, c0, src, out);
  };
  // one image: its tiles over the threads, each thread with its own copy of the (small) image
  // (strided 3->64 7x7 on 64 x 64, before first layers went to the direct path, ran on one thread of
  // two: 0.134 -> 0.097 ms on two AVX-512 threads)
  const int inner = N == 1 && double(K) * P * T >= kSplitChunkWork ? threads_over(double(K) * P * T, units) : 1;
  const int nt = inner > 1 ? inner : threads_over(double(N) * K * P * T, N);
  const size_t per_thread = lines(size_t(C) * plane) + lines(size_t(P) * Kp);
  ScratchFloats scratch(size_t(nt) * per_thread);
  if (s.pad > 0) zero_each(scratch.get(), nt, per_thread, size_t(C) * plane);
  if (inner > 1) {
    float* out = scratch.get() + lines(size_t(C) * plane);  // [P][Kp], one for all (thread 0's)
#pragma omp parallel num_threads(inner)
    {
      const int me = omp_get_thread_num();
      float* xp = scratch.get() + size_t(me) * per_thread;
      if (s.pad > 0) copy_into_border(xp, x, C, s);
      const float* src = s.pad > 0 ? xp : x;
      tiles_of(units * me / inner, units * (me + 1) / inner, src, out);
#pragma omp barrier
#pragma omp for schedule(static)
      for (i64 blk = 0; blk < (K + 15) / 16; ++blk)  // [P][Kp] -> [K][P], 16 channels at a time
        transpose_blocks(y + blk * 16 * P, P, out + blk * 16, Kp, P, std::min<i64>(16, K - blk * 16), P);
    }
    return true;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* xp = scratch.get() + size_t(omp_get_thread_num()) * per_thread;  // [C][Hp][Wp], zero border
    float* out = xp + lines(size_t(C) * plane);                             // [P][Kp]
    if (s.pad > 0) copy_into_border(xp, x + n * C * s.H * s.W, C, s);
    const float* src = s.pad > 0 ? xp : x + n * C * s.H * s.W;
    tiles_of(0, units, src, out);
    transpose_blocks(y + n * K * P, P, out, Kp, P, K, P);  // [P][Kp] -> [K][P]
  }
  return true;
}
