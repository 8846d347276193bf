// relu: elementwise, any shape (n elements). Memory-bound: threads only for large arrays.
#include "kernels.hpp"

namespace cnnfast {

// x: [n] -> y: [n], y = x > 0 ? x : 0, and NaN stays NaN (as in PyTorch)
void relu_forward(float* y, const float* x, i64 n) {
#pragma omp parallel for num_threads(threads_for(n / 16.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) y[i] = x[i] <= 0.0f ? 0.0f : x[i];
}

// x, dy: [n] -> dx: [n], dx = dy where x > 0, else 0
void relu_backward(float* dx, const float* x, const float* dy, i64 n) {
#pragma omp parallel for num_threads(threads_for(n / 16.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) {
    const float g = dy[i];  // loaded unconditionally, so the select vectorises
    dx[i] = x[i] > 0.0f ? g : 0.0f;
  }
}

}  // namespace cnnfast
