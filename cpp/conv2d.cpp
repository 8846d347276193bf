// conv2d: stride 1, zero padding, PyTorch weight layout [K, C, R, S].
//
// The paths, each with its blocking explained where it is defined:
// - Direct (patches of <= 32 taps: conv1, 3x3 on one channel): im2col of one image into L1,
//   then register-blocked loops; too little work per output for a GEMM to pay for its packing.
// - Patch panels (AVX-512; conv2): the GEMMs' packed operands are built straight from the
//   image with masked vector loads: forward from x itself, a load per run of pixels per tap
//   (conv2d_forward_panels); backward from a channels-last copy of x, with dx made 12 pixels
//   at a time in L1 and added in place (conv2d_backward_panels).
// - Patch rows + GEMM (the other instruction sets). An image is first copied into a
//   zero-bordered channels-last copy xp[H+2p][W+2p][C]; then every output pixel's receptive
//   field is one contiguous "patch row" of R*S*C taps (R copies of S*C floats), and with the
//   weights reordered to wt[K][R][S][C] the convolution is one matrix product:
//   y^T[pixels, K] = rows[pixels, RSC] wt^T. Because rows, dy and wt are all stored with the
//   summed dimension where the GEMM packs it from, packing is plain row copies.
// At the end, conv2d + ReLU + max_pool2d as one kernel (conv2d_relu_max_pool2d_*), built from
// the same pieces, plus conv1's block computed and pooled in registers (conv3x3_relu_pool2_*).
//
// Blocking: a few images are laid side by side (a chunk of ~1,024 pixels, so its operands stay
// near L2 and the GEMM's edge tiles and packing of wt are amortised), and each thread takes
// whole chunks. The chunking depends only on the shapes, never on the thread count, so the
// weight gradient, summed over chunks in chunk order, is the same for any number of threads.
#include "gemm.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <memory>
#include <vector>
#include <omp.h>
#ifdef CNNFAST_HAVE_AVX512
#include <immintrin.h>

#include "pool_rule_avx512.hpp"
#endif

namespace cnnfast {
namespace {

// Scratch space: n floats (uninitialised), starting on a 64-byte cache line, so that buffers of
// whole lines carved from it keep vector loads and stores from straddling two lines.
class ScratchFloats {
 public:
  explicit ScratchFloats(size_t n) : p_(static_cast<float*>(std::aligned_alloc(64, lines(std::max<size_t>(n, 1)) * 4))) {
    if (!p_) throw std::bad_alloc();
  }
  ~ScratchFloats() { std::free(p_); }
  ScratchFloats(const ScratchFloats&) = delete;
  ScratchFloats& operator=(const ScratchFloats&) = delete;
  float* get() const { return p_; }
  // n floats rounded up to whole 64-byte lines
  static size_t lines(size_t n) { return (n + 15) / 16 * 16; }

 private:
  float* p_;
};
inline size_t lines(size_t n) { return ScratchFloats::lines(n); }

struct ConvShape {
  i64 C, H, W, K, R, S, pad, Ho, Wo, Hp, Wp;
  ConvShape(i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad)
      : C(C), H(H), W(W), K(K), R(R), S(S), pad(pad), Ho(H + 2 * pad - R + 1), Wo(W + 2 * pad - S + 1),
        Hp(H + 2 * pad), Wp(W + 2 * pad) {}
  i64 P() const { return Ho * Wo; }        // output pixels per channel
  i64 taps() const { return C * R * S; }   // patch row length
};

// Images per chunk and number of chunks: up to ~1,024 pixels per chunk (conv2's backward keeps a
// chunk's image, input gradient and dy in two layouts, ~0.6 MB, inside L2: 3-4% faster than
// 2,048, 512 slower), the number of chunks rounded up to a multiple of 4 (so that 2 or 4 threads
// get equal shares: conv2's 121 pixels an image at batch 128 make 16 chunks of 8 images); one
// image when an image alone has 512 pixels or more (then dy and y are used in place).
struct Chunking {
  i64 per_chunk, chunks;
  Chunking(i64 N, i64 P) {
    N = std::max<i64>(N, 1), P = std::max<i64>(P, 1);
    const i64 wanted = (std::max<i64>(1, (N * P + 1023) / 1024) + 3) / 4 * 4;
    per_chunk = P >= 512 ? 1 : (N + wanted - 1) / wanted;
    chunks = (N + per_chunk - 1) / per_chunk;
  }
};

// x_n: [C, H, W] -> xp: [H+2p, W+2p, C], zeros in the border
void to_padded_nhwc(float* xp, const float* x, const ConvShape& s) {
  std::fill(xp, xp + s.Hp * s.Wp * s.C, 0.0f);
  for (i64 c = 0; c < s.C; ++c)
    for (i64 h = 0; h < s.H; ++h) {
      const float* src = x + (c * s.H + h) * s.W;
      float* dst = xp + ((h + s.pad) * s.Wp + s.pad) * s.C + c;
      for (i64 w = 0; w < s.W; ++w) dst[w * s.C] = src[w];
    }
}

// xp: [H+2p, W+2p, C] -> dx_n: [C, H, W] (the border is dropped)
void from_padded_nhwc(float* dx, const float* xp, const ConvShape& s) {
  for (i64 c = 0; c < s.C; ++c)
    for (i64 h = 0; h < s.H; ++h) {
      const float* src = xp + ((h + s.pad) * s.Wp + s.pad) * s.C + c;
      float* dst = dx + (c * s.H + h) * s.W;
      for (i64 w = 0; w < s.W; ++w) dst[w] = src[w * s.C];
    }
}

// xp -> rows: [Ho*Wo, R*S*C], rows[oh*Wo + ow][(r*S + q)*C + c] = xp[oh + r][ow + q][c]
void im2row(float* rows, const float* xp, const ConvShape& s) {
  const i64 span = s.S * s.C;  // for fixed r, the taps (q, c) are contiguous in xp
  for (i64 oh = 0; oh < s.Ho; ++oh)
    for (i64 ow = 0; ow < s.Wo; ++ow) {
      float* row = rows + (oh * s.Wo + ow) * s.taps();
      for (i64 r = 0; r < s.R; ++r) std::memcpy(row + r * span, xp + ((oh + r) * s.Wp + ow) * s.C, sizeof(float) * span);
    }
}

// The adjoint of im2row: xp[oh + r][ow + q][c] += rows[oh*Wo + ow][(r*S + q)*C + c] (xp zeroed first)
void row2im(float* xp, const float* rows, const ConvShape& s) {
  const i64 span = s.S * s.C;
  std::fill(xp, xp + s.Hp * s.Wp * s.C, 0.0f);
  for (i64 oh = 0; oh < s.Ho; ++oh)
    for (i64 ow = 0; ow < s.Wo; ++ow) {
      const float* row = rows + (oh * s.Wo + ow) * s.taps();
      for (i64 r = 0; r < s.R; ++r) {
        float* dst = xp + ((oh + r) * s.Wp + ow) * s.C;
        const float* src = row + r * span;
        for (i64 i = 0; i < span; ++i) dst[i] += src[i];
      }
    }
}

// out[i] = 0 + parts[0][i] + parts[1][i] + ... (the parts in order; vectorised across i)
void sum_parts(float* out, const float* parts, i64 count, i64 n) {
  std::fill(out, out + n, 0.0f);
  for (i64 p = 0; p < count; ++p)
    for (i64 i = 0; i < n; ++i) out[i] += parts[p * n + i];
}

// w: [K, C, R, S] -> wt: [K, R, S, C]
std::vector<float> weights_rsc(const float* w, const ConvShape& s) {
  std::vector<float> wt(size_t(s.K) * s.taps());
  for (i64 k = 0; k < s.K; ++k)
    for (i64 c = 0; c < s.C; ++c)
      for (i64 r = 0; r < s.R; ++r)
        for (i64 q = 0; q < s.S; ++q)
          wt[((k * s.R + r) * s.S + q) * s.C + c] = w[((k * s.C + c) * s.R + r) * s.S + q];
  return wt;
}

// ---- direct path for short patches (conv1: one channel, 3x3 = 9 taps) ----
// With so few taps each element of y or dy meets at most kDirectTaps weights: too little work to
// pay for packing GEMM operands. Instead col[T, P] (im2col, the image's T shifted copies, in L1)
// is combined row by row. These loops are compiled for AVX-512, AVX2 and the baseline
// (target_clones), the best picked by the loader at run time.
constexpr i64 kDirectTaps = 32;

// x_n: [C, H, W] -> col: [C*R*S, Ho*Wo] with rows ld apart (ld >= Ho*Wo),
// col[(c*R + r)*S + q][oh*Wo + ow] = x[c][oh+r-pad][ow+q-pad]
void im2col(float* col, const float* x, const ConvShape& s, i64 ld) {
  for (i64 c = 0; c < s.C; ++c)
    for (i64 r = 0; r < s.R; ++r)
      for (i64 q = 0; q < s.S; ++q) {
        float* row = col + ((c * s.R + r) * s.S + q) * ld;
        // the output columns whose input column ow+q-pad lies inside [0, W)
        const i64 ow_lo = std::clamp<i64>(s.pad - q, 0, s.Wo), ow_hi = std::clamp<i64>(s.W + s.pad - q, ow_lo, s.Wo);
        for (i64 oh = 0; oh < s.Ho; ++oh) {
          float* out = row + oh * s.Wo;
          const i64 ih = oh + r - s.pad;
          if (ih < 0 || ih >= s.H) { std::fill(out, out + s.Wo, 0.0f); continue; }
          const float* in = x + (c * s.H + ih) * s.W;
          std::fill(out, out + ow_lo, 0.0f);
          std::copy(in + (ow_lo + q - s.pad), in + (ow_hi + q - s.pad), out + ow_lo);
          std::fill(out + ow_hi, out + s.Wo, 0.0f);
        }
      }
}

// col's rows are this far apart (>= P): whole blocks of 64 (and of 48) pixels never read past a row
inline i64 direct_ld(i64 P) { return (P + 191) / 192 * 192; }

// The same for exactly NT taps (conv1's 9): the NT shifted copies of three 16-pixel blocks stay
// in 3*NT registers (27 of AVX-512's 32) while all K output channels go by, each block taking NT
// multiply-adds with the weights broadcast from memory: about one load per three FMAs instead of
// one per FMA (0.40 -> 0.19 ms for conv1 at batch 128, 2 threads). The same sums in the same order.
template <int NT>
__attribute__((always_inline)) inline void direct_forward_taps(float* y, const float* col, const float* w,
                                                             const float* b, i64 K, i64 P, i64 ld) {
  typedef float v16 __attribute__((vector_size(64)));
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

// y_n[k][p] = b[k] + sum_t w[k][t] col[t][p]     (w: [K, T] in PyTorch's (c, r, s) order;
// col's rows are direct_ld(P) apart)
// Blocking: 64 pixels of one output channel live in four 16-float accumulators for the whole
// tap loop; each tap is one broadcast weight, four loads of col (in L1) and four multiply-adds,
// and y is written once (the plain loop re-read and re-wrote y for every tap: 0.52 -> 0.38 ms
// for conv1 at batch 128; two channels at once, eight accumulators, measured slower).
__attribute__((target_clones("avx512f", "avx2", "default")))
void direct_forward(float* y, const float* col, const float* w, const float* b, i64 K, i64 T, i64 P, i64 ld) {
  if (T == 9) return direct_forward_taps<9>(y, col, w, b, K, P, ld);
  typedef float v16 __attribute__((vector_size(64)));
  for (i64 p0 = 0; p0 < P; p0 += 64)
    for (i64 k = 0; k < K; ++k) {
      v16 acc[4];
      for (int i = 0; i < 4; ++i) acc[i] = v16{} + b[k];
      for (i64 t = 0; t < T; ++t) {
        const float wkt = w[k * T + t];
        const float* ct = col + t * ld + p0;
        for (int i = 0; i < 4; ++i) {
          v16 c;
          __builtin_memcpy(&c, ct + 16 * i, sizeof c);
          acc[i] += wkt * c;
        }
      }
      float* yk = y + k * P + p0;
      if (P - p0 >= 64) {
        __builtin_memcpy(yk, acc, sizeof acc);
      } else {  // the row's last, partial block
        float tail[64];
        __builtin_memcpy(tail, acc, sizeof acc);
        for (i64 p = 0; p < P - p0; ++p) yk[p] = tail[p];
      }
    }
}

// dw[k][t] = sum_p dy_n[k][p] col[t][p], each sum in 16 interleaved lanes (one vector), added up
// lane by lane at the end. Blocking: a block of NB taps (NB = T when T <= 12: conv1's 9) keeps NB
// vector accumulators while one pass over the row dy_n[k] loads each 16 pixels of it once (the
// plain loop re-read the row for every tap and kept a single dependent chain).
template <int NB>
__attribute__((always_inline)) inline void weight_grad_block(float* dw, const float* d, const float* col, i64 P) {
  typedef float v16 __attribute__((vector_size(64)));
  const i64 P16 = P / 16 * 16;
  v16 acc[NB];
  for (int i = 0; i < NB; ++i) acc[i] = v16{};
  for (i64 p = 0; p < P16; p += 16) {
    v16 dv;
    __builtin_memcpy(&dv, d + p, sizeof dv);
    for (int i = 0; i < NB; ++i) {
      v16 cv;
      __builtin_memcpy(&cv, col + i * P + p, sizeof cv);
      acc[i] += dv * cv;
    }
  }
  for (int i = 0; i < NB; ++i) {
    float lanes[16];
    __builtin_memcpy(lanes, &acc[i], sizeof lanes);
    for (i64 p = P16; p < P; ++p) lanes[p % 16] += d[p] * col[i * P + p];
    float sum = 0.0f;
    for (int j = 0; j < 16; ++j) sum += lanes[j];
    dw[i] = sum;
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void direct_weight_grad(float* dw, const float* dy, const float* col, i64 K, i64 T, i64 P) {
  const i64 blocks = (T + 11) / 12;
  for (i64 k = 0; k < K; ++k)
    for (i64 b = 0; b < blocks; ++b) {
      const i64 t0 = T * b / blocks, nb = T * (b + 1) / blocks - t0;  // blocks of near-equal size <= 12
      float* out = dw + k * T + t0;
      const float* d = dy + k * P;
      const float* c = col + t0 * P;
      switch (nb) {
        case 1: weight_grad_block<1>(out, d, c, P); break;
        case 2: weight_grad_block<2>(out, d, c, P); break;
        case 3: weight_grad_block<3>(out, d, c, P); break;
        case 4: weight_grad_block<4>(out, d, c, P); break;
        case 5: weight_grad_block<5>(out, d, c, P); break;
        case 6: weight_grad_block<6>(out, d, c, P); break;
        case 7: weight_grad_block<7>(out, d, c, P); break;
        case 8: weight_grad_block<8>(out, d, c, P); break;
        case 9: weight_grad_block<9>(out, d, c, P); break;
        case 10: weight_grad_block<10>(out, d, c, P); break;
        case 11: weight_grad_block<11>(out, d, c, P); break;
        default: weight_grad_block<12>(out, d, c, P); break;
      }
    }
}

#ifdef CNNFAST_HAVE_AVX512
// ---- AVX-512 forward: the GEMM's packed A built straight from the image ----
// For a panel of mr output pixels (mr = 12: the micro-kernel's rows), packed A holds, for each
// tap t = (c, r, q) in PyTorch's weight order, the mr values x[c][oh+r][ow+q] of those pixels.
// The panel's pixels fall into a few runs of one output row each (two for conv2: 12 pixels,
// rows of 11), and a run's values for a tap are contiguous in x. So each tap is one masked
// vector load per run, offset so that the run lands in its own lanes, and one store: no patch
// rows are written and nothing is transposed element by element. The weights [K, T] are then
// the product's B, packed once per call; C = [pixels, K] is written per panel.
struct PanelRun {
  i64 offset;       // element offset of lane 0 for tap 0 (the run's first pixel minus its lane)
  __mmask16 lanes;  // the lanes this run fills
};

// (NRUNS runs, their offsets and masks held in registers for the whole loop)
template <int NRUNS>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"), always_inline)) inline void
pack_runs(float* ap, const float* src, const PanelRun* runs, const i64* tap_offset, i64 T, int mr) {
  const __mmask16 store_mask = __mmask16((1u << mr) - 1);
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(src);
  std::uintptr_t offset[NRUNS];
  __mmask16 lanes[NRUNS];
  for (int j = 0; j < NRUNS; ++j) offset[j] = base + std::uintptr_t(runs[j].offset * 4), lanes[j] = runs[j].lanes;
  for (i64 t = 0; t < T; ++t) {
    const std::uintptr_t at = std::uintptr_t(tap_offset[t] * 4);
    // (an address below src is never read: its lanes are masked off)
    __m512 v = _mm512_maskz_loadu_ps(lanes[0], reinterpret_cast<const float*>(offset[0] + at));
    for (int j = 1; j < NRUNS; ++j) v = _mm512_mask_loadu_ps(v, lanes[j], reinterpret_cast<const float*>(offset[j] + at));
    _mm512_mask_storeu_ps(ap + t * mr, store_mask, v);
  }
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
void pack_patch_panel(float* ap, const float* src, const PanelRun* runs, int nruns,
                      const i64* tap_offset, i64 T, int mr) {
  switch (nruns) {
    case 1: return pack_runs<1>(ap, src, runs, tap_offset, T, mr);
    case 2: return pack_runs<2>(ap, src, runs, tap_offset, T, mr);
    case 3: return pack_runs<3>(ap, src, runs, tap_offset, T, mr);
    default: break;
  }
  const __mmask16 store_mask = __mmask16((1u << mr) - 1);
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(src);
  for (i64 t = 0; t < T; ++t) {
    __m512 v = _mm512_setzero_ps();
    for (int j = 0; j < nruns; ++j)
      v = _mm512_mask_loadu_ps(v, runs[j].lanes,
                               reinterpret_cast<const float*>(base + (runs[j].offset + tap_offset[t]) * 4));
    _mm512_mask_storeu_ps(ap + t * mr, store_mask, v);
  }
}

// out[j*ldd + i] = in[i*lds + j] for a 16 x 16 block: rows loaded in pairs and interleaved as
// pairs of floats, then of doubles, then 128-bit lanes, each column stored as soon as it is
// made (so no more than ~20 vectors are live: the compiler keeps them all in registers).
__attribute__((target("avx512f"), always_inline)) inline void transpose16(float* out, i64 ldd, const float* in, i64 lds) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane j: (r0[4j], r1[4j], r0[4j+1], r1[4j+1]) ...
    const __m512 a = _mm512_loadu_ps(in + 2 * i * lds), b = _mm512_loadu_ps(in + (2 * i + 1) * lds);
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
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44), v3 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
    _mm512_storeu_ps(out + m * ldd, _mm512_shuffle_f32x4(v0, v2, 0x88));
    _mm512_storeu_ps(out + (4 + m) * ldd, _mm512_shuffle_f32x4(v0, v2, 0xDD));
    _mm512_storeu_ps(out + (8 + m) * ldd, _mm512_shuffle_f32x4(v1, v3, 0x88));
    _mm512_storeu_ps(out + (12 + m) * ldd, _mm512_shuffle_f32x4(v1, v3, 0xDD));
  }
}

// dst[j*ldd + i] = src[i*lds + j] for i < rows, j < cols, and 0 for rows <= i < rows_out: a
// transpose in 16 x 16 blocks (whole blocks straight from src to dst, edge blocks through a
// zero-padded copy, stored masked).
__attribute__((target("avx512f")))
void transpose_avx512(float* dst, i64 ldd, const float* src, i64 lds, i64 rows, i64 cols, i64 rows_out) {
  auto mask = [](i64 n) { return __mmask16(n >= 16 ? 0xFFFF : (1u << n) - 1); };
  for (i64 i0 = 0; i0 < rows_out; i0 += 16)
    for (i64 j0 = 0; j0 < cols; j0 += 16) {
      const i64 ni = std::clamp<i64>(rows - i0, 0, 16), nj = std::min<i64>(16, cols - j0), no = std::min<i64>(16, rows_out - i0);
      if (ni == 16 && nj == 16 && no == 16) {
        transpose16(dst + j0 * ldd + i0, ldd, src + i0 * lds + j0, lds);
        continue;
      }
      alignas(64) float block[16 * 16], flipped[16 * 16];
      const __mmask16 columns = mask(nj), rows_stored = mask(no);
      for (i64 i = 0; i < 16; ++i)
        _mm512_store_ps(block + 16 * i, i < ni ? _mm512_maskz_loadu_ps(columns, src + (i0 + i) * lds + j0) : _mm512_setzero_ps());
      transpose16(flipped, 16, block, 16);
      for (i64 j = 0; j < nj; ++j) _mm512_mask_storeu_ps(dst + (j0 + j) * ldd + i0, rows_stored, _mm512_load_ps(flipped + 16 * j));
    }
}

// y[k][p] += b[k] for k < K, p < P
__attribute__((target("avx512f")))
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

// to_padded_nhwc and from_padded_nhwc (the same results) through transpose_avx512
void to_padded_nhwc_avx512(float* xp, const float* x, const ConvShape& s) {
  if (s.pad == 0) return transpose_avx512(xp, s.C, x, s.H * s.W, s.C, s.H * s.W, s.C);
  std::fill(xp, xp + s.Hp * s.Wp * s.C, 0.0f);
  for (i64 h = 0; h < s.H; ++h)
    transpose_avx512(xp + ((h + s.pad) * s.Wp + s.pad) * s.C, s.C, x + h * s.W, s.H * s.W, s.C, s.W, s.C);
}
void from_padded_nhwc_avx512(float* dx, const float* xp, const ConvShape& s) {
  if (s.pad == 0) return transpose_avx512(dx, s.H * s.W, xp, s.C, s.H * s.W, s.C, s.H * s.W);
  for (i64 h = 0; h < s.H; ++h)
    transpose_avx512(dx + h * s.W, s.H * s.W, xp + ((h + s.pad) * s.Wp + s.pad) * s.C, s.C, s.W, s.C, s.W);
}

// row2im of m pixels: xp[pixel i + (r*Wp + q)*C + c] += rows[i*ld + (r*S + q)*C + c], pixel i
// at offsets[i] in xp (for a fixed r, the S*C values are contiguous in both)
__attribute__((target("avx512f")))
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
        _mm512_mask_storeu_ps(dst + e, tail, _mm512_add_ps(_mm512_maskz_loadu_ps(tail, dst + e), _mm512_maskz_loadu_ps(tail, src + e)));
    }
}

// out: [images * Hu * Wu, K] (a chunk's product, pixel-major, without bias, only the rows and
// columns the windows read: Hu = Ho/k*k, Wu = Wo/k*k) ->
// y, argmax: [images, K, Ho/k, Wo/k] = max_pool2d(out + b, k, relu=true), the rule of
// max_pool2d_planes (first maximum, a NaN wins; a maximum not > 0 gives 0 and argmax -1, an
// index oh*Wo + ow into the whole Ho x Wo plane), with a pixel's channels as the vector lanes;
// an image's windows are written [Q, K] to window_y / window_argmax, then transposed into place.
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
void relu_pool_pixel_major(float* y, std::int32_t* argmax, const float* out, const float* b, i64 images,
                           i64 K, i64 Ho, i64 Wo, i64 k, float* best, std::int32_t* index, float* window_y,
                           std::int32_t* window_argmax) {
  const i64 Hq = Ho / k, Wq = Wo / k, Q = Hq * Wq, Wu = Wq * k, Pu = Hq * k * Wu;
  for (i64 n = 0; n < images; ++n) {
    for (i64 oh = 0; oh < Hq; ++oh)
      for (i64 ow = 0; ow < Wq; ++ow) {
        for (i64 r = 0; r < k; ++r)
          for (i64 q = 0; q < k; ++q) {
            const std::int32_t p = std::int32_t((oh * k + r) * Wo + ow * k + q);
            const float* v = out + (n * Pu + (oh * k + r) * Wu + ow * k + q) * K;
            if (r == 0 && q == 0) {
              for (i64 c = 0; c < K; ++c) { best[c] = v[c] + b[c]; index[c] = p; }
              continue;
            }
            for (i64 c = 0; c < K; ++c) {
              const float value = v[c] + b[c];
              const bool take = value > best[c] || (value != value && best[c] == best[c]);
              best[c] = take ? value : best[c];
              index[c] = take ? p : index[c];
            }
          }
        float* yq = window_y + (oh * Wq + ow) * K;  // [Q, K] for now
        std::int32_t* aq = window_argmax + (oh * Wq + ow) * K;
        for (i64 c = 0; c < K; ++c) {
          yq[c] = best[c] <= 0.0f ? 0.0f : best[c];
          aq[c] = best[c] > 0.0f ? index[c] : -1;
        }
      }
    // [Q, K] -> [K, Q] (argmax's int32 moved as float bit patterns; argmax may be null)
    transpose_avx512(y + n * K * Q, Q, window_y, K, Q, K, Q);
    if (argmax)
      transpose_avx512(reinterpret_cast<float*>(argmax + n * K * Q), Q, reinterpret_cast<const float*>(window_argmax), K, Q, K, Q);
  }
}

// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y: [N, K, Ho, Wo], chunked as the patch-row path;
// with pool_k > 0 instead y, argmax: [N, K, Ho/k, Wo/k] = max_pool2d(y, pool_k, relu=true), each
// chunk pooled straight from its product (the convolution's output is never stored, and the
// pixels no window reads, conv2's last row and column, 21 of 121, are not computed)
void conv2d_forward_panels(float* y, const float* x, const float* w, const float* b, const ConvShape& s,
                           i64 N, const MicroKernel& mk, std::int32_t* argmax = nullptr, i64 pool_k = 0) {
  const i64 C = s.C, K = s.K, P = s.P(), T = s.taps();
  const int mr = mk.mr, nr = mk.nr;
  // Padded images go through a zero-bordered planar copy; unpadded ones are read in place.
  const i64 plane = s.Hp * s.Wp, image = C * plane;
  std::vector<i64> tap_offset(static_cast<size_t>(T));
  for (i64 c = 0; c < C; ++c)
    for (i64 r = 0; r < s.R; ++r)
      for (i64 q = 0; q < s.S; ++q) tap_offset[size_t((c * s.R + r) * s.S + q)] = c * plane + r * s.Wp + q;
  // One depth block while a panel's A (T x 12) and B (T x 32) fit L1 and L2 together (conv2:
  // T = 288, measured 3% faster than two blocks of 144); sgemm's blocks beyond that.
  const i64 kc = T <= 512 ? T : depth_block(T), Kpad = (K + nr - 1) / nr * nr;
  std::vector<float> wp(size_t(T) * Kpad);  // op(B) = w^T [T, K], packed per depth block
  for (i64 k0 = 0; k0 < T; k0 += kc) pack_b(wp.data() + k0 * Kpad, true, w, T, k0, 0, std::min(kc, T - k0), K, nr);

  const i64 Hu = pool_k > 0 ? s.Ho / pool_k * pool_k : s.Ho, Wu = pool_k > 0 ? s.Wo / pool_k * pool_k : s.Wo, Pu = Hu * Wu;
  const Chunking ch(N, Pu);
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * Pu * T), int(ch.chunks)));
  const size_t padded_floats = s.pad ? size_t(ch.per_chunk) * image : 0, chunk_pixels = size_t(ch.per_chunk) * Pu;
  const size_t pooled_floats = pool_k > 0 ? size_t(K) * (s.Ho / pool_k) * (s.Wo / pool_k) : 0;
  const size_t scratch_per_thread = padded_floats + size_t(T) * mr + chunk_pixels * K + 2 * size_t(K) + 2 * pooled_floats;
  ScratchFloats scratch(size_t(nt) * scratch_per_thread);  // (each value written before it is read)
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 chunk = 0; chunk < ch.chunks; ++chunk) {
    const i64 n0 = chunk * ch.per_chunk, n1 = std::min(N, n0 + ch.per_chunk), L = (n1 - n0) * Pu;
    float* padded = scratch.get() + size_t(omp_get_thread_num()) * scratch_per_thread;
    float* ap = padded + padded_floats;  // [T, mr]
    float* out = ap + size_t(T) * mr;    // [L, K]
    const float* src = x + n0 * C * s.H * s.W;
    if (s.pad) {
      std::fill(padded, padded + (n1 - n0) * image, 0.0f);
      for (i64 n = n0; n < n1; ++n)
        for (i64 c = 0; c < C; ++c)
          for (i64 h = 0; h < s.H; ++h)
            std::memcpy(padded + (n - n0) * image + c * plane + (h + s.pad) * s.Wp + s.pad,
                        x + ((n * C + c) * s.H + h) * s.W, sizeof(float) * s.W);
      src = padded;
    }
    PanelRun runs[16];
    for (i64 l0 = 0; l0 < L; l0 += mr) {
      const int m = int(std::min<i64>(mr, L - l0));
      int nruns = 0;
      for (int i = 0; i < m;) {  // lanes i.. of one (image, output row)
        const i64 l = l0 + i, n = l / Pu, oh = l % Pu / Wu, ow = l % Pu % Wu;
        const int len = int(std::min<i64>(m - i, Wu - ow));
        runs[nruns++] = {n * image + oh * s.Wp + ow - i, __mmask16(((1u << len) - 1) << i)};
        i += len;
      }
      pack_patch_panel(ap, src, runs, nruns, tap_offset.data(), T, mr);
      for (i64 k0 = 0; k0 < T; k0 += kc) {
        const i64 kcb = std::min(kc, T - k0);
        for (i64 j0 = 0; j0 < K; j0 += nr)
          mk.run(kcb, ap + k0 * mr, wp.data() + k0 * Kpad + j0 * kcb, out + l0 * K + j0, K, m,
                 std::min<i64>(nr, K - j0), k0 > 0);
      }
    }
    if (pool_k > 0) {
      const i64 pooled = K * (s.Ho / pool_k) * (s.Wo / pool_k);
      float* best = out + chunk_pixels * K;
      relu_pool_pixel_major(y + n0 * pooled, argmax ? argmax + n0 * pooled : nullptr, out, b, n1 - n0, K, s.Ho, s.Wo, pool_k, best,
                            reinterpret_cast<std::int32_t*>(best + K), best + 2 * K,
                            reinterpret_cast<std::int32_t*>(best + 2 * K + pooled));
      continue;
    }
    for (i64 n = n0; n < n1; ++n) {  // y_n[k][p] = out[(n - n0)*P + p][k] + b[k]: transposed, then + b
      float* yn = y + n * K * P;
      transpose_avx512(yn, P, out + (n - n0) * P * K, K, P, K, P);
      add_bias_rows(yn, b, K, P);
    }
  }
}

// ---- AVX-512: conv2d (one input channel, 3x3) + ReLU + 2x2 max-pool of one image, in registers ----
// A window's four conv outputs (2i+a, 2j+b), a, b in {0, 1}, read x at (2i+a+r-pad, 2j+b+q-pad):
// only a+r and b+q (0..3 each) matter, so the image is first split into 16 subsampled planes
// D[u][v][i*Wq + j] = x[2i+u-pad][2j+v-pad] (zero outside x; 11 KB for conv1, in L1), each row a
// permute of two vector loads from a zero-bordered copy of x. Then, 16 windows at a time, a
// channel's four outputs per window are four accumulators of 9 multiply-adds (the channel's
// weights in registers), and the window's maximum and argmax are picked in registers with
// max_pool2d's rule: the convolution's output is never stored. Sums in the direct path's order
// (0 + bias, then taps r, q), so the same numbers as conv2d_forward + max_pool2d_forward.
// (One block of 16 windows at a time: two or three, for more independent sums, measured slower.)
struct Pool2Windows {
  i64 Hq, Wq, Q, Qp;                // windows down and across, their number, rounded up to 16
  i64 Hz, Wz;                       // the zero-bordered copy of x: rows, row length
  std::vector<std::int32_t> first;  // first[i*Wq + j] = (2i)*Wo + 2j, the window's top-left pixel
  explicit Pool2Windows(const ConvShape& s)
      : Hq(s.Ho / 2), Wq(s.Wo / 2), Q(Hq * Wq), Qp((Q + 15) / 16 * 16), Hz(2 * Hq + 2),
        Wz((Wq + 15) / 16 * 32 + 16), first(static_cast<size_t>(Qp), 0) {
    for (i64 i = 0; i < Hq; ++i)
      for (i64 j = 0; j < Wq; ++j) first[size_t(i * Wq + j)] = std::int32_t(2 * i * s.Wo + 2 * j);
  }
  i64 scratch_floats() const { return 16 * Qp + Hz * Wz; }
};

// 16 windows' ReLU + max-pool from their four candidates out[0..3] (window order (0,0), (0,1),
// (1,0), (1,1); pixel indices first + step[i]) -> y, argmax (the first n lanes stored; argmax
// may be null)
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"), always_inline)) inline void
pool2_relu_16(float* y, std::int32_t* argmax, const __m512* out, __m512i first, const __m512i* step, i64 n) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 best;
  __m512i index;
  if (_mm512_cmp_ps_mask(out[0], out[1], _CMP_UNORD_Q) | _mm512_cmp_ps_mask(out[2], out[3], _CMP_UNORD_Q)) {
    pool_first_max_avx512(&best, &index, out, 4, first, step);  // a NaN somewhere: the rule step by step
    best = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(best, zero, _CMP_LE_OQ), best, zero);
  } else {  // no NaN: the maximum, then the first of the four equal to it
    best = _mm512_max_ps(_mm512_max_ps(out[0], out[1]), _mm512_max_ps(out[2], out[3]));
    index = _mm512_add_epi32(first, step[3]);
    for (int i = 2; i >= 0; --i)
      index = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(out[i], best, _CMP_EQ_OQ), index, _mm512_add_epi32(first, step[i]));
    best = _mm512_max_ps(best, zero);  // (a maximum not > 0 gives +0)
  }
  const __mmask16 lanes = __mmask16(n >= 16 ? 0xFFFF : (1u << n) - 1);
  _mm512_mask_storeu_ps(y, lanes, best);
  if (!argmax) return;  // (inference: y only)
  index = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(best, zero, _CMP_GT_OQ), _mm512_set1_epi32(-1), index);
  _mm512_mask_storeu_epi32(argmax, lanes, index);
}

// D[u][v][i*Wq + j] = x[2i+u-pad][2j+v-pad] (zero outside x), u, v in 0..3, rows Qp apart,
// through xz, a zero-bordered copy of x
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
void build_pool2_planes(float* D, const float* x, const ConvShape& s, const Pool2Windows& win, float* xz) {
  const i64 Wq = win.Wq, Q = win.Q, Qp = win.Qp, Wz = win.Wz;
  std::fill(xz, xz + win.Hz * Wz, 0.0f);  // xz[h + pad][w + pad] = x[h][w] (only what D reads)
  for (i64 h = 0; h < std::min(s.H, win.Hz - s.pad); ++h)
    std::memcpy(xz + (h + s.pad) * Wz + s.pad, x + h * s.W, sizeof(float) * std::min(s.W, Wz - s.pad));
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (i64 u = 0; u < 4; ++u)
    for (i64 v = 0; v < 4; ++v) {
      float* d = D + (u * 4 + v) * Qp;
      for (i64 i = 0; i < win.Hq; ++i) {
        const float* src = xz + (2 * i + u) * Wz + v;
        for (i64 j0 = 0; j0 < Wq; j0 += 16) {
          const __mmask16 lanes = __mmask16(Wq - j0 >= 16 ? 0xFFFF : (1u << (Wq - j0)) - 1);
          const __m512 picked = _mm512_permutex2var_ps(_mm512_loadu_ps(src + 2 * j0), even, _mm512_loadu_ps(src + 2 * j0 + 16));
          _mm512_mask_storeu_ps(d + i * Wq + j0, lanes, picked);
        }
      }
      std::fill(d + Q, d + Qp, 0.0f);
    }
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
void conv3x3_relu_pool2_image(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                              const ConvShape& s, const Pool2Windows& win, float* scratch) {
  const i64 Q = win.Q, Qp = win.Qp;
  float* D = scratch;
  build_pool2_planes(D, x, s, win, scratch + 16 * Qp);
  const __m512 zero = _mm512_setzero_ps();
  const __m512i step[4] = {_mm512_setzero_si512(), _mm512_set1_epi32(1), _mm512_set1_epi32(std::int32_t(s.Wo)),
                           _mm512_set1_epi32(std::int32_t(s.Wo + 1))};  // (a, b) = (0,0), (0,1), (1,0), (1,1)
  for (i64 k = 0; k < s.K; ++k) {
    __m512 wk[9];
    for (int t = 0; t < 9; ++t) wk[t] = _mm512_set1_ps(w[k * 9 + t]);
    const __m512 bias = _mm512_add_ps(zero, _mm512_set1_ps(b[k]));  // 0 + b, as the direct path
    for (i64 q0 = 0; q0 < Q; q0 += 16) {  // 16 windows: 4 independent sums
      __m512 out[4] = {bias, bias, bias, bias};
      // each plane (u, v) loaded once and used by every window pixel (a, b) with tap
      // (r, q) = (u - a, v - b) inside 3x3; for a fixed (a, b) the taps come in (r, q) order
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          const __m512 d = _mm512_loadu_ps(D + (u * 4 + v) * Qp + q0);
#pragma GCC unroll 4
          for (int ab = 0; ab < 4; ++ab) {
            const int r = u - (ab >> 1), q = v - (ab & 1);
            if (r < 0 || r > 2 || q < 0 || q > 2) continue;
            out[ab] = _mm512_fmadd_ps(wk[r * 3 + q], d, out[ab]);
          }
        }
      pool2_relu_16(y + k * Q + q0, argmax ? argmax + k * Q + q0 : nullptr, out, _mm512_loadu_si512(win.first.data() + q0),
                    step, Q - q0);
    }
  }
}

// The backward of conv3x3_relu_pool2_image (dw and the bias-gradient lanes; conv1 needs no dx):
// a window's dy goes to the one of its four pixels (a, b) its argmax names, so for 16 windows
// the four d(conv) vectors are dy masked by argmax == first + step[ab], and dw[k][r][q] gathers
// d(conv)_ab * D[a + r][b + q] over (a, b) and the windows in 9 accumulators (one per tap),
// each plane loaded once per block. dw_k: [K, 9]; lanes: [K, 16], the bias gradient's partial
// sums. Returns false, computing nothing useful, if an argmax is neither -1 nor a pixel of its
// window (argmax made by hand): the caller then takes the general path.
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
bool conv3x3_relu_pool2_backward_image(float* dw_k, float* lanes, const float* x, const float* dy,
                                       const std::int32_t* argmax, const ConvShape& s, const Pool2Windows& win,
                                       float* scratch) {
  const i64 Q = win.Q, Qp = win.Qp;
  float* D = scratch;
  build_pool2_planes(D, x, s, win, scratch + 16 * Qp);
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
          const __m512 plane = _mm512_loadu_ps(D + (u * 4 + v) * Qp + q0);
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

bool panels_apply(const MicroKernel& mk, const ConvShape& s) {
  return std::strcmp(mk.name, "avx512") == 0 && mk.mr <= 16 && s.Wo > 0;
}
#endif

}  // namespace

// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y: [N, K, Ho, Wo]
void conv2d_forward(float* y, const float* x, const float* w, const float* b,
                    i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad) {
  const ConvShape s(C, H, W, K, R, S, pad);
  const i64 P = s.P(), T = s.taps();
  if (N == 0 || K == 0) return;  // nothing to compute (and no scratch to allocate)
  if (T == 0) {  // no input channels: y is the bias
    for (i64 n = 0; n < N; ++n)
      for (i64 k = 0; k < K; ++k) std::fill(y + (n * K + k) * P, y + (n * K + k + 1) * P, b[k]);
    return;
  }
  if (T <= kDirectTaps) {  // short patches: the direct path, image by image
    const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * T), int(std::max<i64>(N, 1))));
    const i64 ld = direct_ld(P);  // (the padding is zeroed once and never written)
    std::vector<float> cols(size_t(nt) * T * ld);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      float* col = cols.data() + size_t(omp_get_thread_num()) * T * ld;
      im2col(col, x + n * C * H * W, s, ld);
      direct_forward(y + n * K * P, col, w, b, K, T, P, ld);
    }
    return;
  }
#ifdef CNNFAST_HAVE_AVX512
  const MicroKernel& mk = active_microkernel();
  if (panels_apply(mk, s)) return conv2d_forward_panels(y, x, w, b, s, N, mk);
#endif
  const Chunking ch(N, P);
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * T), int(std::max<i64>(ch.chunks, 1))));
  const std::vector<float> wt = weights_rsc(w, s);
  const size_t image_floats = size_t(s.Hp) * s.Wp * C, chunk_pixels = size_t(ch.per_chunk) * P;
  const size_t scratch_per_thread = image_floats + chunk_pixels * (T + K);
  std::vector<float> scratch(size_t(nt) * scratch_per_thread);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 chunk = 0; chunk < ch.chunks; ++chunk) {
    const i64 n0 = chunk * ch.per_chunk, n1 = std::min(N, n0 + ch.per_chunk), L = (n1 - n0) * P;
    float* xp = scratch.data() + size_t(omp_get_thread_num()) * scratch_per_thread;
    float* rows = xp + image_floats;  // [L, T]
    float* out = rows + chunk_pixels * T;  // [K, L] or [L, K]
    for (i64 n = n0; n < n1; ++n) {
      to_padded_nhwc(xp, x + n * C * H * W, s);
      im2row(rows + (n - n0) * P * T, xp, s);
    }
    // Long patch rows (T > K) are packed cheaply as the product's rows, y^T = rows wt^T, at the
    // price of transposing the small result; short ones (conv1: 9 taps) go in as columns, and a
    // single image's product is then written straight into y.
    const bool pixel_rows = T > K;
    if (!pixel_rows && n1 - n0 == 1) {
      float* yn = y + n0 * K * P;
      for (i64 k = 0; k < K; ++k) std::fill(yn + k * P, yn + (k + 1) * P, b[k]);
      sgemm(false, true, K, P, T, wt.data(), T, rows, T, yn, P, /*accumulate=*/true);
      continue;
    }
    if (pixel_rows)
      sgemm(false, true, L, K, T, rows, T, wt.data(), T, out, K, false);   // out: [L, K]
    else
      sgemm(false, true, K, L, T, wt.data(), T, rows, T, out, L, false);   // out: [K, L]
    const i64 pixel_stride = pixel_rows ? K : 1, channel_stride = pixel_rows ? 1 : L;
    for (i64 n = n0; n < n1; ++n)  // y_n[k][p] = out[k][(n - n0)*P + p] + b[k]
      for (i64 k = 0; k < K; ++k) {
        const float* src = out + (n - n0) * P * pixel_stride + k * channel_stride;
        float* dst = y + (n * K + k) * P;
        for (i64 p = 0; p < P; ++p) dst[p] = src[p * pixel_stride] + b[k];
      }
  }
}

namespace {

// A chunk's dy (images n0..n1, L pixels) for conv2d_backward_gemm: as [K, L] (channel-major),
// and, where the source can give it cheaply, also as [L, K] (pixel-major), which spares the
// weight-gradient GEMM a transposing pack. The plain source: dy itself, gathered.
struct DyChunk {
  const float* by_channel;  // [K, L]
  const float* by_pixel;    // [L, K] or null
};

struct GatherDy {
  const float* dy;
  i64 K, P;
  // kl: room for [K, L]; lk: room for [L, K] (unused here)
  DyChunk operator()(i64 n0, i64 n1, float* kl, float*) const {
    if (n1 - n0 == 1) return {dy + n0 * K * P, nullptr};  // one image's dy serves as it is
    const i64 L = (n1 - n0) * P;
    for (i64 n = n0; n < n1; ++n)
      for (i64 k = 0; k < K; ++k)
        std::memcpy(kl + k * L + (n - n0) * P, dy + (n * K + k) * P, sizeof(float) * P);
    return {kl, nullptr};
  }
};

// dw and dx (either may be null) through GEMMs on patch rows; see conv2d_backward. dy_of gives
// each chunk's dy (GatherDy, or the fused pool backward).
template <typename DyOf>
void conv2d_backward_gemm(float* dx, float* dw, const float* x, const float* w, const DyOf& dy_of,
                          const ConvShape& s, i64 N) {
  const i64 C = s.C, H = s.H, W = s.W, K = s.K, R = s.R, S = s.S, P = s.P(), T = s.taps();
  const Chunking ch(N, P);
  const int nt = std::max(1, std::min<int>(threads_for(2.0 * N * K * P * T), int(std::max<i64>(ch.chunks, 1))));
  const std::vector<float> wt = weights_rsc(w, s);
  // Rows of the dw product: output channels (dwt as is) or taps (dwt transposed), whichever
  // wastes less of the micro-kernel's tile (conv1 has 9 taps: as columns they would fill 9 of 32).
  const MicroKernel& mk = active_microkernel();
  auto padded = [](i64 v, i64 unit) { return (v + unit - 1) / unit * unit; };
  const bool taps_as_rows = padded(T, mk.mr) * padded(K, mk.nr) < padded(K, mk.mr) * padded(T, mk.nr);
  std::vector<float> partial(dw ? size_t(std::max<i64>(ch.chunks, 1)) * K * T : 0, 0.0f);
  const size_t image_floats = size_t(s.Hp) * s.Wp * C, chunk_pixels = size_t(ch.per_chunk) * P;
  const size_t scratch_per_thread = image_floats + chunk_pixels * (T + 2 * K);
  std::vector<float> scratch(size_t(nt) * scratch_per_thread);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 chunk = 0; chunk < ch.chunks; ++chunk) {
    const i64 n0 = chunk * ch.per_chunk, n1 = std::min(N, n0 + ch.per_chunk), L = (n1 - n0) * P;
    float* xp = scratch.data() + size_t(omp_get_thread_num()) * scratch_per_thread;
    float* rows = xp + image_floats;  // [L, T]
    float* kl = rows + chunk_pixels * T;
    const DyChunk d = dy_of(n0, n1, kl, kl + chunk_pixels * K);
    const float* dy_rows = d.by_channel;  // [K, L]
    for (i64 n = n0; n < n1; ++n) {
      to_padded_nhwc(xp, x + n * C * H * W, s);
      im2row(rows + (n - n0) * P * T, xp, s);
    }
    float* out = dw ? partial.data() + chunk * K * T : nullptr;  // (no arithmetic on an empty vector's data())
    // (the same products whichever layout of dy they are packed from)
    if (!dw) {
    } else if (taps_as_rows && d.by_pixel)
      sgemm(true, false, T, K, L, rows, T, d.by_pixel, K, out, K, false);  // out: [T, K]
    else if (taps_as_rows)
      sgemm(true, true, T, K, L, rows, T, dy_rows, L, out, K, false);
    else if (d.by_pixel)
      sgemm(true, false, K, T, L, d.by_pixel, K, rows, T, out, T, false);  // out: [K, T]
    else
      sgemm(false, false, K, T, L, dy_rows, L, rows, T, out, T, false);
    if (dx) {  // rows are no longer needed: they become drows
      sgemm(true, false, L, T, K, dy_rows, L, wt.data(), T, rows, T, false);
      for (i64 n = n0; n < n1; ++n) {
        row2im(xp, rows + (n - n0) * P * T, s);
        from_padded_nhwc(dx + n * C * H * W, xp, s);
      }
    }
  }
  if (!dw) return;
  std::vector<float> total(size_t(K) * T);
  sum_parts(total.data(), partial.data(), ch.chunks, K * T);  // the chunks' products, in chunk order
  for (i64 k = 0; k < K; ++k)  // dw[k][c][r][q] = dwt[k][(r*S + q)*C + c]
    for (i64 c = 0; c < C; ++c)
      for (i64 r = 0; r < R; ++r)
        for (i64 q = 0; q < S; ++q) {
          const i64 t = (r * S + q) * C + c;
          dw[((k * C + c) * R + r) * S + q] = total[size_t(taps_as_rows ? t * K + k : k * T + t)];
        }
}

// The bias gradient's partial sums of one row d[0:P] (one image, one channel): 16 interleaved
// float lanes (so it vectorises); db[k] adds them up in double, image by image.
inline void row_lanes(float lanes[16], const float* d, i64 P) {
  float acc[16] = {};  // a local array, so the sums stay in registers (lanes may alias d)
  i64 p = 0;
  for (; p + 16 <= P; p += 16)
    for (int j = 0; j < 16; ++j) acc[j] += d[p + j];
  for (; p < P; ++p) acc[p % 16] += d[p];
  std::memcpy(lanes, acc, sizeof acc);
}

#ifdef CNNFAST_HAVE_AVX512
// ---- AVX-512 backward: both GEMMs fed straight from the image and dy ----
// The patch-row path writes every pixel's patch row (rows[L, RSC], 2.2 MB per chunk for conv2)
// and the input gradient's drows[L, RSC] out to memory and reads them back. Here neither exists:
// - dW^T[RSC, K] = rows^T dy: the GEMM's packed A (12 taps x a depth block of pixels) is built
//   from the chunk's channels-last image xp[n][Hp][Wp][C] with pack_patch_panel (for a pixel,
//   12 consecutive taps (r, q, c..c+11) are contiguous in xp: one or two masked loads), and its
//   B is dy pixel-major in panels of 32 channels, read in place (no packing).
// - drows = dy^T wt is made 12 pixels at a time into a [12, RSC] tile in L1 (A packed from
//   channel-major dy, again one masked load per run of pixels per channel; B is wt packed once
//   per call), and added into the chunk's zero-bordered input gradient at once (row2im).

// The 12x32 micro-kernel (gemm_microkernel.cpp's, the same sums in the same order) with A read
// in place: depth step k's 12 values are a[offsets[k] + 0..11], 12 consecutive taps of pixel k
// in the channels-last image (for a fixed r, the S*C taps (q, c) of a pixel are contiguous
// there), instead of a packed panel. For dW this spares packing every (pixel, tap) pair; a tile
// must be whole (m = 12, n = 32).
__attribute__((target("avx512f")))
void microkernel_12x32_in_place(i64 kc, const float* a, const i64* offsets, const float* b, float* c, i64 ldc,
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

// A chunk's dy for conv2d_backward_panels. Channel-major: the value for (image n of the chunk,
// pixel p, channel k) at by_channel[n*image_stride + k*channel_stride + p]. Pixel-major, the
// same values in panels of nr channels: by_pixel[(k / nr)*L*nr + l*nr + k % nr], l = n*P + p,
// zero for channels k >= K up to the next multiple of nr.
struct DyPanels {
  const float* by_channel;
  i64 image_stride, channel_stride;
  const float* by_pixel;
};

// The plain source: dy itself (channel-major as it is), transposed into the pixel-major panels.
// The bias gradient's lanes of each row (row_lanes) are taken on the way, while the rows are in cache.
struct GatherDyPanels {
  const float* dy;
  i64 K, P;
  int nr;
  float* lanes;  // [N, K, 16]
  DyPanels operator()(i64 n0, i64 n1, float*, float* lk) const {
    const i64 L = (n1 - n0) * P;
    for (i64 n = n0; n < n1; ++n) {
      for (i64 k0 = 0; k0 < K; k0 += nr)  // [nr channels, P] -> [P, nr], zeros past K
        transpose_avx512(lk + k0 * L + (n - n0) * P * nr, nr, dy + (n * K + k0) * P, P, std::min<i64>(nr, K - k0), P, nr);
      for (i64 k = 0; k < K; ++k) row_lanes(lanes + (n * K + k) * 16, dy + (n * K + k) * P, P);
    }
    return {dy + n0 * K * P, K * P, P, lk};
  }
};

// dw and dx (either may be null); chunked as conv2d_backward_gemm, the weight gradient summed
// chunk by chunk in chunk order, so the results do not depend on the thread count. Only the
// output pixels in the first Hu rows and Wu columns count (the fused kernel's dy is zero
// elsewhere); dy_of's chunks hold P = Hu*Wu pixels an image.
template <typename DyOf>
void conv2d_backward_panels(float* dx, float* dw, const float* x, const float* w, const DyOf& dy_of,
                            const ConvShape& s, i64 N, const MicroKernel& mk, i64 Hu, i64 Wu) {
  const i64 C = s.C, K = s.K, P = Hu * Wu, T = s.taps(), S = s.S;
  const int mr = mk.mr, nr = mk.nr;
  const i64 Kp = (K + nr - 1) / nr * nr, Tp = (T + nr - 1) / nr * nr, image = s.Hp * s.Wp * C;
  const Chunking ch(N, P);
  const int nt = std::max(1, std::min<int>(threads_for((dx && dw ? 2.0 : 1.0) * N * K * P * T), int(ch.chunks)));
  // dW's A, tap panel by tap panel: the runs of taps (t = (r*S + q)*C + c) that are contiguous in xp;
  // when no panel straddles two kernel rows r (and tiles are whole), A is read in place instead
  const bool in_place = mr == 12 && nr == 32 && (S * C) % 12 == 0 && K % 32 == 0;
  // dx's A likewise, from dy's channel rows, for panels of 12 pixels of one image (whole tiles)
  const bool dx_in_place = mr == 12 && nr == 32 && T % 32 == 0;
  const i64 tap_panels = (T + mr - 1) / mr;
  std::vector<PanelRun> tap_runs(size_t(tap_panels) * 16);
  std::vector<int> tap_nruns(static_cast<size_t>(tap_panels));
  for (i64 tp = 0; tp < tap_panels; ++tp) {
    const int m = int(std::min<i64>(mr, T - tp * mr));
    int nruns = 0;
    for (int i = 0; i < m;) {
      const i64 t = tp * mr + i, rq = t / C, c = t % C;
      const int len = int(std::min<i64>(m - i, C - c));
      tap_runs[size_t(tp * 16 + nruns++)] = {(rq / S * s.Wp + rq % S) * C + c - i, __mmask16(((1u << len) - 1) << i)};
      i += len;
    }
    tap_nruns[size_t(tp)] = nruns;
  }
  std::vector<float> wtp;  // dx's B: wt [K, T] (taps in xp order) in panels of nr taps
  if (dx) {
    const std::vector<float> wt = weights_rsc(w, s);
    wtp.resize(size_t(Tp) * K);
    pack_b(wtp.data(), false, wt.data(), T, 0, 0, K, T, nr);
  }
  ScratchFloats partial(dw ? size_t(ch.chunks) * T * Kp : 0);  // (columns K..Kp are never written)
  if (dw && Kp > K) std::fill(partial.get(), partial.get() + ch.chunks * T * Kp, 0.0f);
  const i64 chunk_pixels = ch.per_chunk * P, depth = depth_block(std::max<i64>(chunk_pixels, 1));
  // (every buffer a whole number of cache lines, so that each starts on one: see ScratchFloats)
  const size_t xp_floats = lines(size_t(ch.per_chunk) * image), ap_floats = lines(size_t(std::max(depth, K)) * mr);
  const size_t tile_floats = dx ? lines(size_t(mr) * Tp) : 0, lk_floats = lines(size_t(chunk_pixels) * Kp);
  const size_t per_thread = xp_floats * (dx ? 2 : 1) + ap_floats + tile_floats + lk_floats + lines(size_t(chunk_pixels) * K);
  const size_t offsets_per_thread = size_t(chunk_pixels + K);
  ScratchFloats scratch(size_t(nt) * per_thread);
  std::unique_ptr<i64[]> offset_scratch(new i64[size_t(nt) * offsets_per_thread]);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 chunk = 0; chunk < ch.chunks; ++chunk) {
    const i64 n0 = chunk * ch.per_chunk, n1 = std::min(N, n0 + ch.per_chunk), L = (n1 - n0) * P;
    float* xp = scratch.get() + size_t(omp_get_thread_num()) * per_thread;  // [images][Hp][Wp][C]
    float* xdx = xp + xp_floats;                                            // the same, for dx
    float* ap = xdx + (dx ? xp_floats : 0);                                 // packed A
    float* tile = ap + ap_floats;                                           // drows [mr, Tp]
    float* lk = tile + tile_floats;                                         // dy pixel-major
    float* kl = lk + lk_floats;                                             // dy channel-major
    i64* offsets = offset_scratch.get() + size_t(omp_get_thread_num()) * offsets_per_thread;  // pixel l's in xp
    i64* channel_offsets = offsets + chunk_pixels;                                            // channel k's in dy
    for (i64 n = n0; n < n1; ++n) to_padded_nhwc_avx512(xp + (n - n0) * image, x + n * s.C * s.H * s.W, s);
    const DyPanels d = dy_of(n0, n1, kl, lk);
    for (i64 n = 0, l = 0; n < n1 - n0; ++n)
      for (i64 oh = 0; oh < Hu; ++oh)
        for (i64 ow = 0; ow < Wu; ++ow) offsets[l++] = n * image + (oh * s.Wp + ow) * C;
    if (dw) {
      float* out = partial.get() + chunk * T * Kp;  // dW^T [T, Kp]
      for (i64 l0 = 0; l0 < L; l0 += depth) {
        const i64 kb = std::min(depth, L - l0);
        for (i64 tp = 0; tp < tap_panels; ++tp) {
          if (in_place) {  // taps tp*12.. of kernel row r = tap / (S*C), at offset tap % (S*C) in the pixel's row r
            const float* a = xp + (tp * 12) / (S * C) * s.Wp * C + (tp * 12) % (S * C);
            for (i64 j0 = 0; j0 < K; j0 += nr)
              microkernel_12x32_in_place(kb, a, offsets + l0, d.by_pixel + j0 * L + l0 * nr, out + tp * mr * Kp + j0, Kp, l0 > 0);
            continue;
          }
          pack_patch_panel(ap, xp, &tap_runs[size_t(tp * 16)], tap_nruns[size_t(tp)], offsets + l0, kb, mr);
          for (i64 j0 = 0; j0 < K; j0 += nr)
            mk.run(kb, ap, d.by_pixel + j0 * L + l0 * nr, out + tp * mr * Kp + j0, Kp,
                   std::min<i64>(mr, T - tp * mr), std::min<i64>(nr, K - j0), l0 > 0);
        }
      }
    }
    if (dx) {
      std::fill(xdx, xdx + (n1 - n0) * image, 0.0f);
      for (i64 k = 0; k < K; ++k) channel_offsets[k] = k * d.channel_stride;
      for (i64 l0 = 0; l0 < L; l0 += mr) {
        const int m = int(std::min<i64>(mr, L - l0));
        PanelRun runs[16];
        int nruns = 0;
        for (int i = 0; i < m;) {  // lanes i.. of one image
          const i64 l = l0 + i, n = l / P, p = l % P;
          const int len = int(std::min<i64>(m - i, P - p));
          runs[nruns++] = {n * d.image_stride + p - i, __mmask16(((1u << len) - 1) << i)};
          i += len;
        }
        if (dx_in_place && m == 12 && nruns == 1) {  // 12 pixels of one image: A read in place from dy's rows
          for (i64 j0 = 0; j0 < T; j0 += nr)
            microkernel_12x32_in_place(K, d.by_channel + runs[0].offset, channel_offsets, wtp.data() + j0 * K, tile + j0, Tp, false);
        } else {
          pack_patch_panel(ap, d.by_channel, runs, nruns, channel_offsets, K, mr);
          for (i64 j0 = 0; j0 < T; j0 += nr) mk.run(K, ap, wtp.data() + j0 * K, tile + j0, Tp, m, std::min<i64>(nr, T - j0), 0);
        }
        add_patch_rows(xdx, tile, Tp, offsets + l0, m, s);
      }
      for (i64 n = n0; n < n1; ++n) from_padded_nhwc_avx512(dx + n * s.C * s.H * s.W, xdx + (n - n0) * image, s);
    }
  }
  if (!dw) return;
  std::vector<float> total(size_t(T) * Kp);
  sum_parts(total.data(), partial.get(), ch.chunks, T * Kp);  // the chunks' products, in chunk order
  for (i64 k = 0; k < K; ++k)  // dw[k][c][r][q] = dwt[(r*S + q)*C + c][k]
    for (i64 c = 0; c < C; ++c)
      for (i64 r = 0; r < s.R; ++r)
        for (i64 q = 0; q < S; ++q) dw[((k * C + c) * s.R + r) * S + q] = total[size_t(((r * S + q) * C + c) * Kp + k)];
}
#endif

// db[k] = the lanes[n][k][0..16] of every image n, added in that order in double. Blocks of 8
// channels over the threads, the 8 sums of a block interleaved (independent chains overlap).
void sum_bias_lanes(float* db, const float* lanes, i64 N, i64 K) {
  const i64 blocks = (K + 7) / 8;
#pragma omp parallel for num_threads(std::max(1, std::min<int>(threads_for(16.0 * N * K), int(blocks)))) schedule(static)
  for (i64 blk = 0; blk < blocks; ++blk) {
    const i64 k0 = 8 * blk, kn = std::min<i64>(8, K - k0);
    double sums[8] = {};
    for (i64 n = 0; n < N; ++n)
      for (i64 kk = 0; kk < kn; ++kk)
        for (int j = 0; j < 16; ++j) sums[kk] += lanes[(n * K + k0 + kk) * 16 + j];
    for (i64 kk = 0; kk < kn; ++kk) db[k0 + kk] = float(sums[kk]);
  }
}

// dw through the direct path: one partial per image, added in image order.
void conv2d_backward_weight_direct(float* dw, const float* x, const float* dy, const ConvShape& s, i64 N) {
  const i64 K = s.K, P = s.P(), T = s.taps();
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * T), int(std::max<i64>(N, 1))));
  std::vector<float> cols(size_t(nt) * T * P), partial(size_t(std::max<i64>(N, 1)) * K * T, 0.0f);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* col = cols.data() + size_t(omp_get_thread_num()) * T * P;
    im2col(col, x + n * s.C * s.H * s.W, s, P);
    direct_weight_grad(partial.data() + n * K * T, dy + n * K * P, col, K, T, P);
  }
  sum_parts(dw, partial.data(), N, K * T);  // w's layout [K, C, R, S] is [K, T]: no reordering
}

}  // namespace

// x: [N, C, H, W], w: [K, C, R, S], dy: [N, K, Ho, Wo] -> dx: [N, C, H, W] (skipped if null),
// dw: [K, C, R, S], db: [K]. Per chunk, dy's rows are laid side by side, dy_rows[K, pixels]:
//   dwt += dy_rows rows          ([K, RSC]: one GEMM summing over every pixel of the chunk)
//   drows = dy_rows^T wt, dx = row2im(drows)
// Each chunk's dwt is a separate partial sum; they are added in chunk order at the end.
void conv2d_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                     i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad) {
  const ConvShape s(C, H, W, K, R, S, pad);
  const i64 P = s.P(), T = s.taps();
  if (N == 0 || K == 0 || T == 0) {  // an empty product: zero gradients, no scratch
    if (dx) std::fill(dx, dx + N * C * H * W, 0.0f);
    std::fill(dw, dw + K * T, 0.0f);
    if (N == 0 || T == 0) std::fill(db, db + K, 0.0f);
    if (N == 0 || K == 0) return;
  } else if (T <= kDirectTaps) {  // short patches: dw by the direct path, dx (if asked) by GEMM
    conv2d_backward_weight_direct(dw, x, dy, s, N);
    if (dx) conv2d_backward_gemm(dx, nullptr, x, w, GatherDy{dy, K, P}, s, N);
  } else {
#ifdef CNNFAST_HAVE_AVX512
    const MicroKernel& mk = active_microkernel();
    if (panels_apply(mk, s)) {  // (the bias gradient's lanes taken as dy is transposed)
      ScratchFloats lanes(size_t(N) * K * 16);  // (every lane written)
      conv2d_backward_panels(dx, dw, x, w, GatherDyPanels{dy, K, P, mk.nr, lanes.get()}, s, N, mk, s.Ho, s.Wo);
      sum_bias_lanes(db, lanes.get(), N, K);
      return;
    }
#endif
    conv2d_backward_gemm(dx, dw, x, w, GatherDy{dy, K, P}, s, N);
  }
  // db[k] = sum over images and pixels: every row's lanes, then one reduction in double, the
  // same two steps as everywhere else
  std::vector<float> lanes(size_t(N) * K * 16);
#pragma omp parallel for num_threads(threads_for(double(N) * K * P)) schedule(static)
  for (i64 row = 0; row < N * K; ++row) row_lanes(lanes.data() + row * 16, dy + row * P, P);
  sum_bias_lanes(db, lanes.data(), N, K);
}

// ---- conv2d + ReLU + max_pool2d as one layer ----
// The paths, the convolution's output and its gradient never going out to memory and back:
// - one input channel, 3x3, 2x2 windows on AVX-512 (conv1): conv3x3_relu_pool2_image and its
//   backward, window by window in registers (above);
// - other short patches: each image convolved into a thread's scratch (in L2) and pooled from
//   there; backward, its d(conv) rebuilt there from dy and argmax and consumed at once;
// - long patches on AVX-512 (conv2): each chunk's product pooled straight from the GEMM's
//   output (pixel-major), and only the pixels the windows read computed (conv2: 100 of 121),
//   forward and backward (conv2d_backward_panels over those pixels);
// - anything else (and dx for short patches) through the separate kernels.
// y, argmax and dx are the separate kernels' numbers bit for bit; dw and db are the same sums,
// in another order on the first and third paths (other roundings). The one exception: the
// pixels the third path leaves out have zero gradient, and a 0 * inf there (an inf or NaN in x
// or w that only those pixels meet) is NaN in the separate kernels but absent here.

// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y, argmax: [N, K, Ho/k, Wo/k]
void conv2d_relu_max_pool2d_forward(float* y, std::int32_t* argmax, const float* x, const float* w,
                                    const float* b, i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S,
                                    i64 pad, i64 k) {
  const ConvShape s(C, H, W, K, R, S, pad);
  const i64 P = s.P(), T = s.taps(), pooled = K * (s.Ho / k) * (s.Wo / k);
  if (N == 0 || K == 0) return;
#ifdef CNNFAST_HAVE_AVX512
  const MicroKernel& mk = active_microkernel();
  if (T > kDirectTaps && panels_apply(mk, s)) return conv2d_forward_panels(y, x, w, b, s, N, mk, argmax, k);
  if (C == 1 && R == 3 && S == 3 && k == 2 && std::strcmp(mk.name, "avx512") == 0 && s.Ho >= 2 && s.Wo >= 2 &&
      P < (i64(1) << 30)) {
    const Pool2Windows win(s);
    const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * T), int(N)));
    std::vector<float> scratch(size_t(nt) * win.scratch_floats());
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 n = 0; n < N; ++n)
      conv3x3_relu_pool2_image(y + n * pooled, argmax ? argmax + n * pooled : nullptr, x + n * H * W, w, b, s, win,
                               scratch.data() + size_t(omp_get_thread_num()) * win.scratch_floats());
    return;
  }
#endif
  std::unique_ptr<std::int32_t[]> unwanted;  // where the paths below must put an argmax nobody asked for
  if (T == 0 || T > kDirectTaps) {
    std::unique_ptr<float[]> conv(new float[size_t(N) * K * P]);
    conv2d_forward(conv.get(), x, w, b, N, C, H, W, K, R, S, pad);
    if (!argmax) unwanted.reset(new std::int32_t[size_t(N) * pooled]);
    max_pool2d_forward(y, argmax ? argmax : unwanted.get(), conv.get(), N, K, s.Ho, s.Wo, k, true);
    return;
  }
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * T), int(N)));
  const i64 ld = direct_ld(P);
  const size_t per_thread = size_t(T) * ld + size_t(K) * P;
  std::vector<float> scratch(size_t(nt) * per_thread);
  if (!argmax) unwanted.reset(new std::int32_t[size_t(nt) * pooled]);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* col = scratch.data() + size_t(omp_get_thread_num()) * per_thread;
    float* conv = col + size_t(T) * ld;  // [K, Ho, Wo]
    im2col(col, x + n * C * H * W, s, ld);
    direct_forward(conv, col, w, b, K, T, P, ld);
    max_pool2d_planes(y + n * pooled, argmax ? argmax + n * pooled : unwanted.get() + omp_get_thread_num() * pooled,
                      conv, K, s.Ho, s.Wo, k, true);
  }
}

// dy, argmax: [N, K, Ho/k, Wo/k] -> dx: [N, C, H, W] (may be null), dw: [K, C, R, S], db: [K]
void conv2d_relu_max_pool2d_backward(float* dx, float* dw, float* db, const float* x, const float* w,
                                     const float* dy, const std::int32_t* argmax, i64 N, i64 C, i64 H,
                                     i64 W, i64 K, i64 R, i64 S, i64 pad, i64 k) {
  const ConvShape s(C, H, W, K, R, S, pad);
  const i64 P = s.P(), T = s.taps(), Hq = s.Ho / k, Wq = s.Wo / k, pooled = K * Hq * Wq;
  if (N > 0 && K > 0 && T > kDirectTaps) {
    // Long patches: each chunk's d(conv) is rebuilt from dy and argmax in both layouts the
    // GEMMs want (never as a whole NCHW array), and its bias-gradient lanes taken on the way.
    // On AVX-512 only the pixels the windows read count (conv2: 100 of 121), when every argmax
    // points into them (it does when it comes from the forward; if not, all pixels count).
    // d(conv) of the chunk's images n0..n1 over a region of Pr pixels an image: index[p] is pixel
    // p's place in the region (-1 outside); channel-major kl[K, L], and pixel-major lk in panels
    // of `width` channels (zeros up to Kp): lk[(k / width)*L*width + l*width + k % width].
    ScratchFloats lanes(size_t(N) * K * 16);  // (every lane written by pooled_dy)
    std::atomic<bool> outside{false};  // an argmax pointed out of the region
    auto pooled_dy = [&](i64 n0, i64 n1, float* kl, float* lk, i64 width, const std::int32_t* index, i64 Pr) {
      const i64 L = (n1 - n0) * Pr, Kp = (K + width - 1) / width * width;
      std::fill(lk, lk + L * Kp, 0.0f);
      std::fill(kl, kl + K * L, 0.0f);
      bool missed = false;
      for (i64 n = n0; n < n1; ++n)
        for (i64 kk = 0; kk < K; ++kk) {
          const i64 plane = n * pooled + kk * Hq * Wq;
          float* row = kl + kk * L + (n - n0) * Pr;
          float* column = lk + (kk / width) * L * width + (n - n0) * Pr * width + kk % width;
          for (i64 q = 0; q < Hq * Wq; ++q) {  // branch-free and bounded, as max_pool2d_backward_planes
            const std::int32_t a = argmax[plane + q], u = a >= 0 && a < P ? index[a] : -1;
            missed |= a >= 0 && u < 0;
            const bool open = u >= 0;
            row[open ? u : 0] += open ? dy[plane + q] : 0.0f;
            column[(open ? u : 0) * width] += open ? dy[plane + q] : 0.0f;
          }
          row_lanes(lanes.get() + (n * K + kk) * 16, row, Pr);
        }
      if (missed) outside.store(true, std::memory_order_relaxed);
    };
    std::vector<std::int32_t> all(static_cast<size_t>(P));
    for (i64 p = 0; p < P; ++p) all[size_t(p)] = std::int32_t(p);
#ifdef CNNFAST_HAVE_AVX512
    const MicroKernel& mk = active_microkernel();
    if (panels_apply(mk, s)) {
      const i64 Hu = Hq * k, Wu = Wq * k;
      std::vector<std::int32_t> read(static_cast<size_t>(P));  // the pixels the windows read
      for (i64 p = 0; p < P; ++p) read[size_t(p)] = p / s.Wo < Hu && p % s.Wo < Wu ? std::int32_t(p / s.Wo * Wu + p % s.Wo) : -1;
      auto region_dy = [&](i64 n0, i64 n1, float* kl, float* lk) -> DyPanels {
        pooled_dy(n0, n1, kl, lk, mk.nr, read.data(), Hu * Wu);
        return {kl, Hu * Wu, (n1 - n0) * Hu * Wu, lk};
      };
      conv2d_backward_panels(dx, dw, x, w, region_dy, s, N, mk, Hu, Wu);
      if (outside.load() && Hu * Wu < P) {  // (not from the forward pass: take every pixel)
        auto every_dy = [&](i64 n0, i64 n1, float* kl, float* lk) -> DyPanels {
          pooled_dy(n0, n1, kl, lk, mk.nr, all.data(), P);
          return {kl, P, (n1 - n0) * P, lk};
        };
        conv2d_backward_panels(dx, dw, x, w, every_dy, s, N, mk, s.Ho, s.Wo);
      }
      sum_bias_lanes(db, lanes.get(), N, K);
      return;
    }
#endif
    auto rows_dy = [&](i64 n0, i64 n1, float* kl, float* lk) -> DyChunk {
      pooled_dy(n0, n1, kl, lk, K, all.data(), P);
      return {kl, lk};
    };
    conv2d_backward_gemm(dx, dw, x, w, rows_dy, s, N);
    sum_bias_lanes(db, lanes.get(), N, K);
    return;
  }
  if (dx || N == 0 || K == 0 || T == 0 || T > kDirectTaps) {
    std::unique_ptr<float[]> dconv(new float[size_t(N) * K * P]);
    max_pool2d_backward(dconv.get(), argmax, dy, N, K, s.Ho, s.Wo, Hq, Wq);
    conv2d_backward(dx, dw, db, x, w, dconv.get(), N, C, H, W, K, R, S, pad);
    return;
  }
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * T), int(N)));
#ifdef CNNFAST_HAVE_AVX512
  if (C == 1 && R == 3 && S == 3 && k == 2 && std::strcmp(active_microkernel().name, "avx512") == 0 &&
      s.Ho >= 2 && s.Wo >= 2 && P < (i64(1) << 30)) {
    const Pool2Windows win(s);  // (every scratch value is written before it is read: no zeroing)
    ScratchFloats scratch(size_t(nt) * win.scratch_floats()), partial(size_t(N) * K * 9), lanes(size_t(N) * K * 16);
    std::atomic<bool> stray{false};
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 n = 0; n < N; ++n)
      if (!conv3x3_relu_pool2_backward_image(partial.get() + n * K * 9, lanes.get() + n * K * 16, x + n * H * W,
                                             dy + n * pooled, argmax + n * pooled, s, win,
                                             scratch.get() + size_t(omp_get_thread_num()) * win.scratch_floats()))
        stray.store(true, std::memory_order_relaxed);
    if (!stray.load()) {
      sum_parts(dw, partial.get(), N, K * 9);  // per image, added in image order
      sum_bias_lanes(db, lanes.get(), N, K);
      return;
    }
  }
#endif
  const size_t per_thread = size_t(T) * P + size_t(K) * P;
  std::vector<float> scratch(size_t(nt) * per_thread), partial(size_t(N) * K * T), lanes(size_t(N) * K * 16);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* col = scratch.data() + size_t(omp_get_thread_num()) * per_thread;
    float* dconv = col + size_t(T) * P;  // [K, Ho, Wo]
    max_pool2d_backward_planes(dconv, argmax + n * pooled, dy + n * pooled, K, s.Ho, s.Wo, Hq, Wq);
    im2col(col, x + n * C * H * W, s, P);
    direct_weight_grad(partial.data() + n * K * T, dconv, col, K, T, P);
    for (i64 kk = 0; kk < K; ++kk) row_lanes(lanes.data() + (n * K + kk) * 16, dconv + kk * P, P);
  }
  sum_parts(dw, partial.data(), N, K * T);  // as conv2d_backward_weight_direct
  sum_bias_lanes(db, lanes.data(), N, K);
}

// The specification: y[n][k][oh][ow] = b[k] + sum_{c,r,s} w[k][c][r][s] * x[n][c][oh+r-pad][ow+s-pad]
void conv2d_forward_naive(float* y, const float* x, const float* w, const float* b,
                          i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad) {
  const ConvShape s(C, H, W, K, R, S, pad);
  for (i64 n = 0; n < N; ++n)
    for (i64 k = 0; k < K; ++k)
      for (i64 oh = 0; oh < s.Ho; ++oh)
        for (i64 ow = 0; ow < s.Wo; ++ow) {
          float sum = b[k];
          for (i64 c = 0; c < C; ++c)
            for (i64 r = 0; r < R; ++r)
              for (i64 q = 0; q < S; ++q) {
                const i64 ih = oh + r - pad, iw = ow + q - pad;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                  sum += w[((k * C + c) * R + r) * S + q] * x[((n * C + c) * H + ih) * W + iw];
              }
          y[((n * K + k) * s.Ho + oh) * s.Wo + ow] = sum;
        }
}

}  // namespace cnnfast
