// softmax cross-entropy, fused with its gradient.
#include "kernels.hpp"

#include <cmath>
#include <vector>

namespace cnnfast {

// logits: [N, K], labels: [N] -> mean over n of -sum_k t_nk log softmax(logits_n)_k with the target
// t_n = (1-e) onehot(label_n) + e/K (e = label_smoothing; e = 0: -log softmax(logits_n)[label_n]);
// dlogits: [N, K] = (softmax(logits) - t) / N.
// Stable for large logits: everything is computed from logits - max(logits_n).
template <typename Label>
double softmax_cross_entropy(float* dlogits, const float* logits, const Label* labels, i64 N, i64 K,
                             float label_smoothing) {
  const double smooth = double(label_smoothing), uniform = smooth / double(K);
  std::vector<double> losses(size_t(N > 0 ? N : 0));
#pragma omp parallel for num_threads(threads_for(double(N) * K * 4.0)) schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const float* z = logits + n * K;
    float* dz = dlogits + n * K;
    float zmax = z[0];
    for (i64 k = 1; k < K; ++k) zmax = z[k] > zmax || z[k] != z[k] ? z[k] : zmax;
    double sum = 0.0;
    for (i64 k = 0; k < K; ++k) sum += std::exp(double(z[k]) - zmax);
    const double log_sum = std::log(sum);
    const i64 y = i64(labels[n]);
    if (smooth == 0.0) {
      for (i64 k = 0; k < K; ++k) dz[k] = float(std::exp(double(z[k]) - zmax - log_sum) / double(N));
      dz[y] -= float(1.0 / double(N));
      losses[size_t(n)] = log_sum - (double(z[y]) - zmax);
    } else {  // -sum_k t_k log p_k = (1-e)(-log p_y) + e/K sum_k (-log p_k), -log p_k = log_sum - (z_k - zmax)
      double neg_log_sum = 0.0;
      for (i64 k = 0; k < K; ++k) {
        const double neg_log_p = log_sum - (double(z[k]) - zmax);
        neg_log_sum += neg_log_p;
        dz[k] = float((std::exp(-neg_log_p) - uniform - (k == y ? 1.0 - smooth : 0.0)) / double(N));
      }
      losses[size_t(n)] = (1.0 - smooth) * (log_sum - (double(z[y]) - zmax)) + uniform * neg_log_sum;
    }
  }
  double total = 0.0;  // summed in order: the same for any thread count
  for (double l : losses) total += l;
  return N > 0 ? total / double(N) : 0.0;
}

template double softmax_cross_entropy<std::int32_t>(float*, const float*, const std::int32_t*, i64, i64, float);
template double softmax_cross_entropy<std::int64_t>(float*, const float*, const std::int64_t*, i64, i64, float);

}  // namespace cnnfast
