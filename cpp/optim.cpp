// Optimizer steps, in place on flat float32 arrays, with PyTorch's update rules.
#include "kernels.hpp"

#include <cmath>

namespace cnnfast {

void sgd_step(float* param, float* velocity, const float* grad, i64 n, float lr, float momentum, float weight_decay) {
#pragma omp parallel for num_threads(threads_for(n / 8.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) {
    float g = grad[i] + weight_decay * param[i];
    if (momentum != 0.0f) {
      velocity[i] = momentum * velocity[i] + g;
      g = velocity[i];
    }
    param[i] -= lr * g;
  }
}

void adam_step(float* param, float* m, float* v, const float* grad, i64 n, i64 step, float lr, float beta1, float beta2,
               float eps, float weight_decay) {
  const double bias1 = 1.0 - std::pow(double(beta1), double(step));
  const double bias2 = 1.0 - std::pow(double(beta2), double(step));
  const float step_size = float(double(lr) / bias1);
  const float bias2_sqrt = float(std::sqrt(bias2));
#pragma omp parallel for num_threads(threads_for(n / 4.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) {
    const float g = grad[i] + weight_decay * param[i];
    m[i] = beta1 * m[i] + (1.0f - beta1) * g;
    v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
    const float denom = std::sqrt(v[i]) / bias2_sqrt + eps;
    param[i] -= step_size * m[i] / denom;
  }
}

}  // namespace cnnfast
