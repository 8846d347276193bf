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

}  // namespace

// dw: [K, C, R, S] and db: [K] from x: [N, C, H, W] and dy: [N, K, Ho, Wo]; false, computing
// nothing, when the kernel's rows are too long (S > 7) or its channels too many (more than
// 2 * kMaxKV vectors; or not one row of taps' sums for a vector of them fits): the caller's
// GEMM path then serves. More than kMaxKV vectors of channels go in blocks, a pass over the
// image each.
bool tap_rows_weight_grad(float* dw, float* db, const float* x, const float* dy, const ConvShape& s, i64 N) {
  const i64 C = s.C, K = s.K, R = s.R, S = s.S, P = s.P(), T = s.taps();
  const i64 KV = (K + kTapVL - 1) / kTapVL, Kp = KV * kTapVL;
  if (S > kMaxS || KV > 2 * kMaxKV || rows_per_group(S, 1) == 0) return false;
  // channel blocks of KB vectors (as few as let one row of taps' sums fit), then groups of at
  // most rows_per_group tap rows, both as even as they go (9 rows by 4: 3, 3, 3, not 4, 4, 1)
  i64 blocks = 1;
  while ((KV + blocks - 1) / blocks > kMaxKV || rows_per_group(S, (KV + blocks - 1) / blocks) == 0) ++blocks;
  const i64 KB = (KV + blocks - 1) / blocks;
  const i64 rows = C * R, most = rows_per_group(S, KB),
            G = (rows + (rows + most - 1) / most - 1) / ((rows + most - 1) / most);
  const i64 plane = s.Hp * s.Wp;
  const int nt = threads_over(double(N) * K * P * T, N);
  const size_t per_thread = lines(size_t(C) * plane) + lines(size_t(P) * Kp) + lines(size_t(G) * S * KB * kTapVL);
  ScratchFloats scratch(size_t(nt) * per_thread), partial(size_t(std::max<i64>(N, 1)) * T * Kp),
      lanes(size_t(std::max<i64>(N, 1)) * K * 16);  // (the bias gradient's, as the panels' GatherDyPanels)
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* xp = scratch.get() + size_t(omp_get_thread_num()) * per_thread;  // [C][Hp][Wp], zero border
    float* dyt = xp + lines(size_t(C) * plane);                             // [P][Kp]
    float* sums = dyt + lines(size_t(P) * Kp);                              // [G][S][KB * kTapVL]
    std::fill(xp, xp + C * plane, 0.0f);
    for (i64 c = 0; c < C; ++c)
      for (i64 h = 0; h < s.H; ++h)
        std::memcpy(xp + c * plane + (h + s.pad) * s.Wp + s.pad, x + ((n * C + c) * s.H + h) * s.W,
                    sizeof(float) * s.W);
    const float* dyn = dy + n * K * P;
    transpose_blocks(dyt, Kp, dyn, P, K, P, Kp);  // [K][P] -> [P][Kp], zeros past K
    for (i64 k = 0; k < K; ++k) row_lanes(lanes.get() + (n * K + k) * 16, dyn + k * P, P);
    float* out = partial.get() + n * T * Kp;  // dw^T [T][Kp]; tap t = (c*R + r)*S + q
    for (i64 kv0 = 0; kv0 < KV; kv0 += KB) {
      const i64 kb = std::min(KB, KV - kv0), width = kb * kTapVL;
      for (i64 row0 = 0; row0 < rows; row0 += G) {
        const i64 g = std::min(G, rows - row0);
        const float* starts[kMaxG];
        for (i64 j = 0; j < g; ++j) starts[j] = xp + (row0 + j) / R * plane + (row0 + j) % R * s.Wp;
        kKernels[size_t(S - 1)][size_t(kb - 1)][size_t(g - 1)](sums, starts, dyt + kv0 * kTapVL, Kp, s.Ho, s.Wo, s.Wp,
                                                               s.stride);
        for (i64 t = 0; t < g * S; ++t)  // tap rows row0.. are taps row0*S..
          std::memcpy(out + (row0 * S + t) * Kp + kv0 * kTapVL, sums + t * width, sizeof(float) * width);
      }
    }
  }
  std::vector<float> total(size_t(T) * Kp);
  sum_parts(total.data(), partial.get(), N, T * Kp);
  for (i64 k = 0; k < K; ++k)
    for (i64 t = 0; t < T; ++t) dw[k * T + t] = total[size_t(t * Kp + k)];
  sum_bias_lanes(db, lanes.get(), N, K);
  return true;
}
