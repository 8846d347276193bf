// activations: LeakyReLU, tanh and sigmoid, elementwise, any shape (n elements). Memory-bound
// (tanh and sigmoid less so): threads only for large arrays, as relu.cpp.
#include <cmath>

#include "kernels.hpp"

namespace cnnfast {

// x: [n] -> y: [n], y = x > 0 ? x : slope * x (NaN stays NaN)
void leaky_relu_forward(float* y, const float* x, i64 n, float slope) {
#pragma omp parallel for num_threads(threads_for(n / 16.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : slope * x[i];
}

// x, dy: [n] -> dx: [n], dx = dy where x > 0, else slope * dy (PyTorch's rule: slope at x = 0)
void leaky_relu_backward(float* dx, const float* x, const float* dy, i64 n, float slope) {
#pragma omp parallel for num_threads(threads_for(n / 16.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) {
    const float g = dy[i];  // loaded unconditionally, so the select vectorises
    dx[i] = x[i] > 0.0f ? g : slope * g;
  }
}

// x: [n] -> y: [n] = tanh(x)
void tanh_forward(float* y, const float* x, i64 n) {
#pragma omp parallel for num_threads(threads_for(n)) schedule(static)
  for (i64 i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}

// y (tanh's output), dy: [n] -> dx: [n] = dy * (1 - y^2)
void tanh_backward(float* dx, const float* y, const float* dy, i64 n) {
#pragma omp parallel for num_threads(threads_for(n / 16.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

// x: [n] -> y: [n] = 1 / (1 + exp(-x)), from exp(-|x|) <= 1 so that no exp overflows:
// x >= 0: 1 / (1 + e), x < 0: e / (1 + e), e = exp(-|x|) (exact 0 and 1 at the far ends)
void sigmoid_forward(float* y, const float* x, i64 n) {
#pragma omp parallel for num_threads(threads_for(n)) schedule(static)
  for (i64 i = 0; i < n; ++i) {
    const float e = std::exp(-std::fabs(x[i]));
    const float r = 1.0f / (1.0f + e);
    y[i] = x[i] >= 0.0f ? r : e * r;
  }
}

// y (sigmoid's output), dy: [n] -> dx: [n] = dy * y * (1 - y)
void sigmoid_backward(float* dx, const float* y, const float* dy, i64 n) {
#pragma omp parallel for num_threads(threads_for(n / 16.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}

}  // namespace cnnfast
