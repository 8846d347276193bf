// The direct path's inner loops (conv2d_direct.cpp drives them), in portable vector code compiled
// once per instruction set: with so few taps per output (<= 32) each element of y or dy meets too
// few weights to pay for packing GEMM operands, so col[T, P] (im2col, an image's T shifted copies,
// in L1) is combined row by row. Vectors of 16 floats whatever the ISA (one zmm, two ymm, four
// xmm or q registers): each element's sum runs in the same order on every ISA.
#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

typedef float v16 __attribute__((vector_size(64)));

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
// ld apart, ld a multiple of 192 >= P, so whole blocks of 64 or 48 pixels never read past a row)
// Blocking: 64 pixels of one output channel live in four 16-float accumulators for the whole
// tap loop; each tap is one broadcast weight, four loads of col (in L1) and four multiply-adds,
// and y is written once (the plain loop re-read and re-wrote y for every tap: 0.52 -> 0.38 ms
// for conv1 at batch 128; two channels at once, eight accumulators, measured slower).
void direct_forward(float* y, const float* col, const float* w, const float* b, i64 K, i64 T, i64 P, i64 ld) {
  if (T == 9) return direct_forward_taps<9>(y, col, w, b, K, P, ld);
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

// dw[k][t] = sum_p dy[k][p] col[t][p], each sum in 16 interleaved lanes (one vector), added up
// lane by lane at the end. Blocking: a block of NB taps (NB = T when T <= 12: conv1's 9) keeps NB
// vector accumulators while one pass over the row dy[k] loads each 16 pixels of it once (the
// plain loop re-read the row for every tap and kept a single dependent chain).
template <int NB>
inline void weight_grad_block(float* dw, const float* d, const float* col, i64 P) {
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

}  // namespace

void direct_forward_kernel(float* y, const float* col, const float* w, const float* b, i64 K, i64 T, i64 P, i64 ld) {
  direct_forward(y, col, w, b, K, T, P, ld);
}

void direct_weight_grad_kernel(float* dw, const float* dy, const float* col, i64 K, i64 T, i64 P) {
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

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
