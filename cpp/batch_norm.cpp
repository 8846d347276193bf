// Batch normalisation over the channels of [N, C, L] (L = H*W for BatchNorm2d, 1 for BatchNorm1d
// on [N, C]), with PyTorch's rules. Memory-bound: plain C++, one thread per channel (each
// channel's statistics are summed in one fixed order, so results do not depend on the thread
// count). Statistics are accumulated in double.
#include "kernels.hpp"

#include <cmath>

namespace cnnfast {

namespace {

// The mean and biased variance of channel c over its N*L values (two passes: no cancellation).
void channel_moments(const float* x, i64 N, i64 C, i64 L, i64 c, double* mean, double* var) {
  double sum = 0.0;
  for (i64 n = 0; n < N; ++n) {
    const float* p = x + (n * C + c) * L;
    for (i64 l = 0; l < L; ++l) sum += p[l];
  }
  const double m = sum / double(N * L);
  double squares = 0.0;
  for (i64 n = 0; n < N; ++n) {
    const float* p = x + (n * C + c) * L;
    for (i64 l = 0; l < L; ++l) {
      const double d = double(p[l]) - m;
      squares += d * d;
    }
  }
  *mean = m;
  *var = squares / double(N * L);
}

// y[n, c, :] = (x[n, c, :] - mean) * scale + shift for every n (x - mean first: no cancellation
// when the mean is large beside the spread)
void normalize(float* y, const float* x, i64 N, i64 C, i64 L, i64 c, float mean, float scale, float shift) {
  for (i64 n = 0; n < N; ++n) {
    const float* p = x + (n * C + c) * L;
    float* q = y + (n * C + c) * L;
    for (i64 l = 0; l < L; ++l) q[l] = (p[l] - mean) * scale + shift;
  }
}

}  // namespace

// x: [N, C, L], gamma, beta: [C] -> y: [N, C, L], save_mean, save_invstd: [C] (for backward);
// running_mean, running_var: [C] updated in place with `momentum` (N*L >= 2).
void batch_norm_forward_train(float* y, float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                              const float* x, const float* gamma, const float* beta, i64 N, i64 C, i64 L, float eps,
                              float momentum) {
  const i64 M = N * L;
#pragma omp parallel for num_threads(threads_for(double(M) * C * 4.0)) schedule(static)
  for (i64 c = 0; c < C; ++c) {
    double mean, var;
    channel_moments(x, N, C, L, c, &mean, &var);
    const double invstd = 1.0 / std::sqrt(var + double(eps));
    save_mean[c] = float(mean);
    save_invstd[c] = float(invstd);
    const double unbiased = var * double(M) / double(M - 1);
    running_mean[c] = float((1.0 - double(momentum)) * running_mean[c] + double(momentum) * mean);
    running_var[c] = float((1.0 - double(momentum)) * running_var[c] + double(momentum) * unbiased);
    normalize(y, x, N, C, L, c, float(mean), float(double(gamma[c]) * invstd), beta[c]);
  }
}

// x: [N, C, L], gamma, beta, running_mean, running_var: [C] -> y: [N, C, L]
// y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta
void batch_norm_forward_eval(float* y, const float* x, const float* gamma, const float* beta, const float* running_mean,
                             const float* running_var, i64 N, i64 C, i64 L, float eps) {
#pragma omp parallel for num_threads(threads_for(double(N) * C * L)) schedule(static)
  for (i64 c = 0; c < C; ++c) {
    const double invstd = 1.0 / std::sqrt(double(running_var[c]) + double(eps));
    normalize(y, x, N, C, L, c, running_mean[c], float(double(gamma[c]) * invstd), beta[c]);
  }
}

// x, dy: [N, C, L], gamma, save_mean, save_invstd: [C] (from the training forward) ->
// dx: [N, C, L], dgamma, dbeta: [C]. With xhat = (x - mean) * invstd and M = N*L:
// dbeta = sum dy, dgamma = sum dy * xhat, dx = gamma * invstd / M * (M dy - dbeta - xhat dgamma).
void batch_norm_backward(float* dx, float* dgamma, float* dbeta, const float* x, const float* gamma, const float* dy,
                         const float* save_mean, const float* save_invstd, i64 N, i64 C, i64 L) {
  const i64 M = N * L;
#pragma omp parallel for num_threads(threads_for(double(M) * C * 6.0)) schedule(static)
  for (i64 c = 0; c < C; ++c) {
    const double mean = save_mean[c], invstd = save_invstd[c];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (i64 n = 0; n < N; ++n) {
      const float* xp = x + (n * C + c) * L;
      const float* dyp = dy + (n * C + c) * L;
      for (i64 l = 0; l < L; ++l) {
        sum_dy += dyp[l];
        sum_dy_xhat += double(dyp[l]) * (double(xp[l]) - mean);
      }
    }
    sum_dy_xhat *= invstd;
    dbeta[c] = float(sum_dy);
    dgamma[c] = float(sum_dy_xhat);
    if (dx == nullptr) continue;
    // dx = a * dy + b * (x - mean) + k, folding the per-channel constants
    const double g = double(gamma[c]) * invstd;
    const float a = float(g), mean_f = float(mean);
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
