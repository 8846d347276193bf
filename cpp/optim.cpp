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

namespace {

// The Adam update of adam_step and adamw_step: `decay` scales the parameter first (AdamW's
// decoupled weight decay, 1 for Adam), `weight_decay` is added to the gradient (Adam's L2 term).
void adam_update(float* param, float* m, float* v, const float* grad, i64 n, i64 step, float lr, float beta1,
                 float beta2, float eps, float weight_decay, float decay) {
  const double bias1 = 1.0 - std::pow(double(beta1), double(step));
  const double bias2 = 1.0 - std::pow(double(beta2), double(step));
  const float step_size = float(double(lr) / bias1);
  const float bias2_sqrt = float(std::sqrt(bias2));
#pragma omp parallel for num_threads(threads_for(n / 4.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) {
    if (decay != 1.0f) param[i] *= decay;
    const float g = grad[i] + weight_decay * param[i];
    m[i] = beta1 * m[i] + (1.0f - beta1) * g;
    v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
    const float denom = std::sqrt(v[i]) / bias2_sqrt + eps;
    param[i] -= step_size * m[i] / denom;
  }
}

}  // namespace

void adam_step(float* param, float* m, float* v, const float* grad, i64 n, i64 step, float lr, float beta1, float beta2,
               float eps, float weight_decay) {
  adam_update(param, m, v, grad, n, step, lr, beta1, beta2, eps, weight_decay, 1.0f);
}

// AdamW (PyTorch's rule): param *= 1 - lr*wd, then Adam's update with the plain gradient.
void adamw_step(float* param, float* m, float* v, const float* grad, i64 n, i64 step, float lr, float beta1,
                float beta2, float eps, float weight_decay) {
  const float decay = float(1.0 - double(lr) * double(weight_decay));
  adam_update(param, m, v, grad, n, step, lr, beta1, beta2, eps, 0.0f, decay);
}

}  // namespace cnnfast
