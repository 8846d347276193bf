// conv2d: stride 1, zero padding, PyTorch weight layout [K, C, R, S].
//
// Fast path (im2col + GEMM): for one image, gather every receptive field into a matrix
// col[C*R*S, Ho*Wo] (padding becomes zeros), then the convolution is one matrix product
// y_n[K, Ho*Wo] = w[K, C*R*S] col. Each thread works on whole images, with its own col buffer.
#include "gemm.hpp"

#include <algorithm>
#include <cstring>
#include <vector>
#include <omp.h>

namespace cnnfast {
namespace {

struct ConvShape {
  i64 C, H, W, K, R, S, pad, Ho, Wo;
  ConvShape(i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad)
      : C(C), H(H), W(W), K(K), R(R), S(S), pad(pad), Ho(H + 2 * pad - R + 1), Wo(W + 2 * pad - S + 1) {}
  i64 P() const { return Ho * Wo; }        // output pixels per channel
  i64 CRS() const { return C * R * S; }    // taps per output pixel
};

// x_n: [C, H, W] -> col: [C*R*S, Ho*Wo], col[(c*R + r)*S + s][oh*Wo + ow] = x[c][oh+r-pad][ow+s-pad]
// Rows of col are `ld` floats apart (ld = Ho*Wo for one image; more when images sit side by side).
void im2col(float* col, const float* x, const ConvShape& s, i64 ld) {
  for (i64 c = 0; c < s.C; ++c)
    for (i64 r = 0; r < s.R; ++r)
      for (i64 q = 0; q < s.S; ++q) {
        float* row = col + ((c * s.R + r) * s.S + q) * ld;
        // output columns whose input column ow+q-pad lies inside [0, W)
        const i64 ow_lo = std::clamp<i64>(s.pad - q, 0, s.Wo), ow_hi = std::clamp<i64>(s.W + s.pad - q, ow_lo, s.Wo);
        for (i64 oh = 0; oh < s.Ho; ++oh) {
          float* out = row + oh * s.Wo;
          const i64 ih = oh + r - s.pad;
          if (ih < 0 || ih >= s.H) { std::fill(out, out + s.Wo, 0.0f); continue; }
          const float* in = x + (c * s.H + ih) * s.W;  // input column of output column ow: ow+q-pad
          std::fill(out, out + ow_lo, 0.0f);
          std::copy(in + (ow_lo + q - s.pad), in + (ow_hi + q - s.pad), out + ow_lo);
          std::fill(out + ow_hi, out + s.Wo, 0.0f);
        }
      }
}

// The adjoint of im2col: dx_n[c][ih][iw] = sum of every col entry that was gathered from it.
void col2im(float* dx, const float* col, const ConvShape& s) {
  std::fill(dx, dx + s.C * s.H * s.W, 0.0f);
  for (i64 c = 0; c < s.C; ++c)
    for (i64 r = 0; r < s.R; ++r)
      for (i64 q = 0; q < s.S; ++q) {
        const float* row = col + ((c * s.R + r) * s.S + q) * s.P();
        const i64 ow_lo = std::clamp<i64>(s.pad - q, 0, s.Wo), ow_hi = std::clamp<i64>(s.W + s.pad - q, ow_lo, s.Wo);
        for (i64 oh = 0; oh < s.Ho; ++oh) {
          const i64 ih = oh + r - s.pad;
          if (ih < 0 || ih >= s.H) continue;
          float* out = dx + (c * s.H + ih) * s.W;
          const float* in = row + oh * s.Wo;
          for (i64 ow = ow_lo; ow < ow_hi; ++ow) out[ow + q - s.pad] += in[ow];
        }
      }
}

}  // namespace

// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y: [N, K, Ho, Wo]
void conv2d_forward(float* y, const float* x, const float* w, const float* b,
                    i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad) {
  const ConvShape s(C, H, W, K, R, S, pad);
  const i64 P = s.P(), CRS = s.CRS();
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * CRS), int(std::max<i64>(N, 1))));
  std::vector<float> cols(size_t(nt) * CRS * P);  // one im2col buffer per thread
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* col = cols.data() + size_t(omp_get_thread_num()) * CRS * P;
    float* yn = y + n * K * P;
    im2col(col, x + n * C * H * W, s, P);
    for (i64 k = 0; k < K; ++k) std::fill(yn + k * P, yn + (k + 1) * P, b[k]);
    sgemm(false, false, K, P, CRS, w, CRS, col, P, yn, P, /*accumulate=*/true);
  }
}

// dy: [N, K, Ho, Wo], w: [K, C, R, S] -> dx: [N, C, H, W]
// dcol[C*R*S, Ho*Wo] = w^T dy_n, then col2im scatters it back onto the image.
void conv2d_backward_input(float* dx, const float* w, const float* dy,
                           i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad) {
  const ConvShape s(C, H, W, K, R, S, pad);
  const i64 P = s.P(), CRS = s.CRS();
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * CRS), int(std::max<i64>(N, 1))));
  std::vector<float> cols(size_t(nt) * CRS * P);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    float* dcol = cols.data() + size_t(omp_get_thread_num()) * CRS * P;
    sgemm(true, false, CRS, P, K, w, CRS, dy + n * K * P, P, dcol, P, false);
    col2im(dx + n * C * H * W, dcol, s);
  }
}

// x: [N, C, H, W], dy: [N, K, Ho, Wo] -> dw: [K, C, R, S], db: [K]
// dw[K, C*R*S] = sum_n dy_n[K, Ho*Wo] col_n^T: a product whose summed dimension runs over every
// pixel of every image. The batch is cut into a fixed number of chunks (set by N, never by the
// thread count, so the summation order and the result do not depend on threads); for each chunk
// the images' im2col matrices and dy rows are laid side by side, [C*R*S, n*Ho*Wo] and
// [K, n*Ho*Wo], so one long GEMM (packing each operand once) gives the chunk's partial dw.
// Threads take whole chunks; the partial sums are then added in chunk order.
void conv2d_backward_weight(float* dw, float* db, const float* x, const float* dy,
                            i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad) {
  const ConvShape s(C, H, W, K, R, S, pad);
  const i64 P = s.P(), CRS = s.CRS();
  const i64 chunks = std::max<i64>(1, std::min<i64>(N, 8));
  const i64 per_chunk = (N + chunks - 1) / chunks;
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * P * CRS), int(chunks)));
  // Rows of the product: output channels (dw as is) or taps (dw transposed), whichever wastes
  // less of the micro-kernel's tile (conv1 has 9 taps: as columns they would fill 9 of 32).
  const MicroKernel& mk = active_microkernel();
  auto padded = [](i64 v, i64 unit) { return (v + unit - 1) / unit * unit; };
  const bool taps_as_rows = padded(CRS, mk.mr) * padded(K, mk.nr) < padded(K, mk.mr) * padded(CRS, mk.nr);
  std::vector<float> partial(size_t(chunks) * K * CRS);
  const size_t scratch_per_thread = size_t(CRS + K) * per_chunk * P;
  std::vector<float> scratch(size_t(nt) * scratch_per_thread);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 chunk = 0; chunk < chunks; ++chunk) {
    const i64 n0 = chunk * per_chunk, n1 = std::min(N, n0 + per_chunk), L = (n1 - n0) * P;
    float* out = partial.data() + chunk * K * CRS;
    if (L <= 0) { std::fill(out, out + K * CRS, 0.0f); continue; }
    float* col = scratch.data() + size_t(omp_get_thread_num()) * scratch_per_thread;  // [CRS, L]
    float* dy_rows = col + CRS * L;                                                  // [K, L]
    for (i64 n = n0; n < n1; ++n) {
      im2col(col + (n - n0) * P, x + n * C * H * W, s, L);
      for (i64 k = 0; k < K; ++k)
        std::copy(dy + (n * K + k) * P, dy + (n * K + k + 1) * P, dy_rows + k * L + (n - n0) * P);
    }
    if (taps_as_rows)
      sgemm(false, true, CRS, K, L, col, L, dy_rows, L, out, K, false);   // out: [CRS, K]
    else
      sgemm(false, true, K, CRS, L, dy_rows, L, col, L, out, CRS, false);  // out: [K, CRS]
  }
  const i64 total = K * CRS;
#pragma omp parallel for num_threads(threads_for(double(total) * chunks)) schedule(static)
  for (i64 i = 0; i < total; ++i) {  // i = k*CRS + t
    const i64 at = taps_as_rows ? (i % CRS) * K + i / CRS : i;
    float sum = 0.0f;
    for (i64 chunk = 0; chunk < chunks; ++chunk) sum += partial[size_t(chunk) * total + at];
    dw[i] = sum;
  }
#pragma omp parallel for num_threads(threads_for(double(N) * K * P)) schedule(static)
  for (i64 k = 0; k < K; ++k) {  // db[k] = sum over images and pixels, in double
    double sum = 0.0;
    for (i64 n = 0; n < N; ++n) {
      const float* d = dy + (n * K + k) * P;
      for (i64 p = 0; p < P; ++p) sum += d[p];
    }
    db[k] = float(sum);
  }
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
