// Batch normalisation over the channels of [N, C, L] (L = H*W for BatchNorm2d, 1 for BatchNorm1d
// on [N, C]), with PyTorch's rules. Memory-bound: plain C++, one thread per channel (each
// channel's statistics are summed in one fixed order, so results do not depend on the thread
// count). Each row of L values is summed in kLanes float partial sums (independent chains that
// the compiler vectorises), and the rows' sums in double.
#include "kernels.hpp"

#include <algorithm>
#include <cmath>

namespace cnnfast {

namespace {

constexpr int kLanes = 16;

// term(0) + ... + term(L-1) in a fixed order: kLanes float partial sums, added up in double
// (short rows, as BatchNorm1d's L = 1, straight in double)
template <typename Term>
inline double row_sum(i64 L, Term term) {
  double sum = 0.0;
  i64 l = 0;
  if (L >= kLanes) {
    float lanes[kLanes] = {};
    for (; l + kLanes <= L; l += kLanes)
      for (int j = 0; j < kLanes; ++j) lanes[j] += term(l + j);
    for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  }
  for (; l < L; ++l) sum += term(l);
  return sum;
}

// The mean and biased variance of channel c over its N*L values (two passes: no cancellation).
void channel_moments(const float* x, i64 N, i64 C, i64 L, i64 c, double* mean, double* var) {
  double sum = 0.0;
  for (i64 n = 0; n < N; ++n) {
    const float* p = x + (n * C + c) * L;
    sum += row_sum(L, [p](i64 l) { return p[l]; });
  }
  const double m = sum / double(N * L);
  const float mf = float(m);
  double squares = 0.0;  // around mf: E[(x - mf)^2] - (m - mf)^2 is the variance around m
  for (i64 n = 0; n < N; ++n) {
    const float* p = x + (n * C + c) * L;
    squares += row_sum(L, [p, mf](i64 l) {
      const float d = p[l] - mf;
      return d * d;
    });
  }
  *mean = m;
  *var = std::max(0.0, squares / double(N * L) - (m - double(mf)) * (m - double(mf)));
}

// y[n, c, :] = (x[n, c, :] - mean) * scale + shift for every n (x - mean first: no cancellation
// when the mean is large beside the spread). The mean in two floats, hi + lo: x - hi is exact
// for x near hi, and lo keeps what a float mean would lose (a mean of 1000 is a float only to
// 3e-5: over a spread of 1e-2, 3e-3 of y)
void normalize(float* y, const float* x, i64 N, i64 C, i64 L, i64 c, double mean, float scale, float shift) {
  const float hi = float(mean), lo = float(mean - double(hi));
  for (i64 n = 0; n < N; ++n) {
    const float* p = x + (n * C + c) * L;
    float* q = y + (n * C + c) * L;
    for (i64 l = 0; l < L; ++l) q[l] = ((p[l] - hi) - lo) * scale + shift;
  }
}

}  // namespace

// x: [N, C, L], gamma, beta: [C] -> y: [N, C, L], save_mean, save_invstd: [C] (for backward);
// running_mean, running_var: [C] updated in place with `momentum` (N*L >= 2).
void batch_norm_forward_train(float* y, float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                              const float* x, const float* gamma, const float* beta, i64 N, i64 C, i64 L, float eps,
                              float momentum) {
  const i64 M = N * L;
#pragma omp parallel for num_threads(threads_for(double(M) * C)) schedule(static)
  for (i64 c = 0; c < C; ++c) {
    double mean, var;
    channel_moments(x, N, C, L, c, &mean, &var);
    const double invstd = 1.0 / std::sqrt(var + double(eps));
    save_mean[c] = float(mean);
    save_invstd[c] = float(invstd);
    const double unbiased = var * double(M) / double(M - 1);
    running_mean[c] = float((1.0 - double(momentum)) * running_mean[c] + double(momentum) * mean);
    running_var[c] = float((1.0 - double(momentum)) * running_var[c] + double(momentum) * unbiased);
    normalize(y, x, N, C, L, c, mean, float(double(gamma[c]) * invstd), beta[c]);
  }
}

// x: [N, C, L], gamma, beta, running_mean, running_var: [C] -> y: [N, C, L]
// y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta
void batch_norm_forward_eval(float* y, const float* x, const float* gamma, const float* beta, const float* running_mean,
                             const float* running_var, i64 N, i64 C, i64 L, float eps) {
#pragma omp parallel for num_threads(threads_for(double(N) * C * L / 4.0)) schedule(static)
  for (i64 c = 0; c < C; ++c) {
    const double invstd = 1.0 / std::sqrt(double(running_var[c]) + double(eps));
    normalize(y, x, N, C, L, c, double(running_mean[c]), float(double(gamma[c]) * invstd), beta[c]);
  }
}

// x, dy: [N, C, L], gamma, save_mean, save_invstd: [C] (from the training forward) ->
// dx: [N, C, L], dgamma, dbeta: [C]. With xhat = (x - mean) * invstd and M = N*L:
// dbeta = sum dy, dgamma = sum dy * xhat, dx = gamma * invstd / M * (M dy - dbeta - xhat dgamma).
void batch_norm_backward(float* dx, float* dgamma, float* dbeta, const float* x, const float* gamma, const float* dy,
                         const float* save_mean, const float* save_invstd, i64 N, i64 C, i64 L) {
  const i64 M = N * L;
#pragma omp parallel for num_threads(threads_for(double(M) * C)) schedule(static)
  for (i64 c = 0; c < C; ++c) {
    const double mean = save_mean[c], invstd = save_invstd[c];
    const float mean_f = float(mean);
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (i64 n = 0; n < N; ++n) {
      const float* xp = x + (n * C + c) * L;
      const float* dyp = dy + (n * C + c) * L;
      sum_dy += row_sum(L, [dyp](i64 l) { return dyp[l]; });
      sum_dy_xhat += row_sum(L, [xp, dyp, mean_f](i64 l) { return dyp[l] * (xp[l] - mean_f); });
    }
    sum_dy_xhat *= invstd;
    dbeta[c] = float(sum_dy);
    dgamma[c] = float(sum_dy_xhat);
    if (dx == nullptr) continue;
    // dx = a * dy + b * (x - mean) + k, folding the per-channel constants
    const double g = double(gamma[c]) * invstd;
    const float a = float(g);
    const float b = float(-g * invstd * sum_dy_xhat / double(M));
    const float k = float(-g * sum_dy / double(M));
    for (i64 n = 0; n < N; ++n) {
      const float* xp = x + (n * C + c) * L;
      const float* dyp = dy + (n * C + c) * L;
      float* dxp = dx + (n * C + c) * L;
      for (i64 l = 0; l < L; ++l) dxp[l] = a * dyp[l] + b * (xp[l] - mean_f) + k;
    }
  }
}

}  // namespace cnnfast
