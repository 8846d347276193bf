// activations: LeakyReLU, tanh and sigmoid, elementwise, any shape (n elements). Memory-bound
// (tanh and sigmoid less so): threads only for large arrays, as relu.cpp.
#include "isa.hpp"
#include "parallel.hpp"

namespace cnnfast {
namespace {

// block(y, x, n) over the threads, each one contiguous range (about 20 operations an element)
void by_blocks(void (*block)(float*, const float*, i64), float* y, const float* x, i64 n) {
  const int nt = threads_for(n * 4.0);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), parts = omp_get_num_threads();
    const i64 first = n * t / parts, last = n * (t + 1) / parts;
    block(y + first, x + first, last - first);
  }
}

}  // namespace

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

// x: [n] -> y: [n] = tanh(x), through the instruction set's block (activations_kernels.cpp),
// each thread one contiguous range
void tanh_forward(float* y, const float* x, i64 n) { by_blocks(active_isa().tanh_block, y, x, n); }

// y (tanh's output), dy: [n] -> dx: [n] = dy * (1 - y^2)
void tanh_backward(float* dx, const float* y, const float* dy, i64 n) {
#pragma omp parallel for num_threads(threads_for(n / 16.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

// x: [n] -> y: [n] = 1 / (1 + exp(-x)), from exp(-|x|) <= 1 so that no exp overflows (exact 0
// and 1 at the far ends), through the instruction set's block (activations_kernels.cpp)
void sigmoid_forward(float* y, const float* x, i64 n) { by_blocks(active_isa().sigmoid_block, y, x, n); }

// y (sigmoid's output), dy: [n] -> dx: [n] = dy * y * (1 - y)
void sigmoid_backward(float* dx, const float* y, const float* dy, i64 n) {
#pragma omp parallel for num_threads(threads_for(n / 16.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}

}  // namespace cnnfast
