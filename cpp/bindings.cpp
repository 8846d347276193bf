// pybind11 bindings: the private module cnnfast._core.
//
// Every argument is checked here, once: numpy array, dtype (TypeError), number of dimensions,
// C-contiguity, shape agreement and value ranges (ValueError naming the argument). Outputs are
// allocated here. The kernels then run with the GIL released and trust their inputs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "gemm.hpp"
#include "kernels.hpp"
#include "parallel.hpp"

namespace py = pybind11;
using namespace cnnfast;

namespace {

constexpr i64 kMaxPadding = 1 << 16;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

template <typename T>
const char* dtype_name();
template <>
const char* dtype_name<float>() {
  return "float32";
}
template <>
const char* dtype_name<std::int32_t>() {
  return "int32";
}
template <>
const char* dtype_name<std::int64_t>() {
  return "int64";
}
template <>
const char* dtype_name<std::uint8_t>() {
  return "uint8";
}

// `obj` as a C-contiguous numpy array of T with `ndim` dimensions (any if ndim < 0).
// `layout` names the dimensions for the error message, e.g. "[N, C, H, W]".
template <typename T>
py::array_t<T> checked(py::handle obj, const char* name, int ndim = -1, const char* layout = "") {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray of " + dtype_name<T>() + ", got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!py::isinstance<py::array_t<T>>(a))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " +
                         std::string(py::str(a.dtype())) + " (convert with " + name + ".astype(np." + dtype_name<T>() +
                         "))");
  if (ndim >= 0 && a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must have " + std::to_string(ndim) + " dimensions " + layout +
                          ", got shape " + shape_str(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous; pass np.ascontiguousarray(" + name + ")");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) +
                          " is not aligned to its dtype (a view at an odd byte "
                          "offset); pass " +
                          name + ".copy()");
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

template <typename T>
py::array_t<T> writable(py::handle obj, const char* name) {
  auto a = checked<T>(obj, name);
  if (!a.writeable()) throw py::value_error(std::string(name) + " is read-only; it is updated in place");
  return a;
}

// ValueError(message) unless ok; the message (often built from shapes) is made only then, not on
// every call (a single image's five kernel calls spent about a microsecond building messages)
#define CNNFAST_EXPECT(ok, ...)                                 \
  do {                                                          \
    if (!(ok)) throw py::value_error(std::string(__VA_ARGS__)); \
  } while (0)

// h * w fits int32 (argmax indexes a plane with int32), without computing a product that could
// overflow: a zero-size batch lets numpy accept planes of any size.
bool plane_fits_int32(i64 h, i64 w) {
  return h >= 0 && w >= 0 && (h == 0 || w <= std::numeric_limits<std::int32_t>::max() / h);
}

// In-place updates read one array while writing another: they must not share memory
// (the same array passed twice is fine: each element is read before it is written).
void expect_no_overlap(const py::array& a, const char* a_name, const py::array& b, const char* b_name) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  const bool overlap = a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
  CNNFAST_EXPECT(!overlap || (a0 == b0 && a.nbytes() == b.nbytes()),
                 std::string(a_name) + " and " + b_name + " overlap in memory; pass a copy of one");
}

std::string dims(std::initializer_list<i64> d) {
  std::string s = "(";
  bool first = true;
  for (i64 v : d) {
    s += (first ? "" : ", ") + std::to_string(v);
    first = false;
  }
  return s + ")";
}

void expect_same_shape(const py::array& a, const char* a_name, const py::array& b, const char* b_name) {
  bool same = a.ndim() == b.ndim();
  for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == b.shape(d);
  CNNFAST_EXPECT(
      same, std::string(b_name) + " must have the shape of " + a_name + " " + shape_str(a) + ", got " + shape_str(b));
}

template <typename T>
py::array_t<T> empty(std::vector<py::ssize_t> shape) {
  return py::array_t<T>(shape);
}

struct Conv {
  i64 N, C, H, W, K, R, S, pad, stride, Ho, Wo;
};

Conv conv_shape(const py::array_t<float>& x, const py::array_t<float>& w, i64 padding, i64 stride = 1) {
  Conv c{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), w.shape(2), w.shape(3), padding, stride, 0, 0};
  CNNFAST_EXPECT(padding >= 0 && padding <= kMaxPadding,
                 "padding must be between 0 and " + std::to_string(kMaxPadding) + ", got " + std::to_string(padding));
  CNNFAST_EXPECT(stride >= 1 && stride <= kMaxPadding,
                 "stride must be between 1 and " + std::to_string(kMaxPadding) + ", got " + std::to_string(stride));
  CNNFAST_EXPECT(w.shape(1) == c.C, "w must have shape (K, " + std::to_string(c.C) +
                                        ", R, S) to match the channels of x " + shape_str(x) + ", got " + shape_str(w));
  CNNFAST_EXPECT(c.R >= 1 && c.S >= 1, "w must have a kernel of at least 1x1, got shape " + shape_str(w));
  CNNFAST_EXPECT(c.H + 2 * padding >= c.R && c.W + 2 * padding >= c.S,
                 "kernel " + dims({c.R, c.S}) + " of w is larger than the padded input " +
                     dims({c.H + 2 * padding, c.W + 2 * padding}) + " of x");
  c.Ho = (c.H + 2 * padding - c.R) / stride + 1;
  c.Wo = (c.W + 2 * padding - c.S) / stride + 1;
  return c;
}

// ---------------------------------------------------------------- conv2d
py::array_t<float> conv2d(py::handle x_, py::handle w_, py::handle b_, i64 padding, i64 stride) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  auto w = checked<float>(w_, "w", 4, "[K, C, R, S]");
  auto b = checked<float>(b_, "b", 1, "[K]");
  const Conv c = conv_shape(x, w, padding, stride);
  CNNFAST_EXPECT(b.shape(0) == c.K, "b must have shape (" + std::to_string(c.K) + ",), got " + shape_str(b));
  auto y = empty<float>({c.N, c.K, c.Ho, c.Wo});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    conv2d_forward(yp, x.data(), w.data(), b.data(), c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.pad, c.stride);
  }
  return y;
}

py::array_t<float> conv2d_naive(py::handle x_, py::handle w_, py::handle b_, i64 padding, i64 stride) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  auto w = checked<float>(w_, "w", 4, "[K, C, R, S]");
  auto b = checked<float>(b_, "b", 1, "[K]");
  const Conv c = conv_shape(x, w, padding, stride);
  CNNFAST_EXPECT(b.shape(0) == c.K, "b must have shape (" + std::to_string(c.K) + ",), got " + shape_str(b));
  auto y = empty<float>({c.N, c.K, c.Ho, c.Wo});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    conv2d_forward_naive(yp, x.data(), w.data(), b.data(), c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.pad, c.stride);
  }
  return y;
}

py::tuple conv2d_grad(py::handle x_, py::handle w_, py::handle dy_, i64 padding, bool input_grad, i64 stride) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  auto w = checked<float>(w_, "w", 4, "[K, C, R, S]");
  auto dy = checked<float>(dy_, "dy", 4, "[N, K, Ho, Wo]");
  const Conv c = conv_shape(x, w, padding, stride);
  CNNFAST_EXPECT(
      dy.shape(0) == c.N && dy.shape(1) == c.K && dy.shape(2) == c.Ho && dy.shape(3) == c.Wo,
      "dy must have the shape of conv2d's output " + dims({c.N, c.K, c.Ho, c.Wo}) + ", got " + shape_str(dy));
  auto dx = empty<float>(input_grad ? std::vector<py::ssize_t>{c.N, c.C, c.H, c.W} : std::vector<py::ssize_t>{0});
  auto dw = empty<float>({c.K, c.C, c.R, c.S});
  auto db = empty<float>({c.K});
  float *dxp = dx.mutable_data(), *dwp = dw.mutable_data(), *dbp = db.mutable_data();
  {
    py::gil_scoped_release nogil;
    conv2d_backward(input_grad ? dxp : nullptr, dwp, dbp, x.data(), w.data(), dy.data(), c.N, c.C, c.H, c.W, c.K, c.R,
                    c.S, c.pad, c.stride);
  }
  return py::make_tuple(input_grad ? py::object(dx) : py::object(py::none()), dw, db);
}

// ---------------------------------------------------------------- conv2d + ReLU + max_pool2d
// The pooled shape of conv2d's output: checks k against it
std::pair<i64, i64> pooled_shape(const Conv& c, i64 k) {
  CNNFAST_EXPECT(k >= 1, "k must be at least 1, got " + std::to_string(k));
  CNNFAST_EXPECT(k <= c.Ho && k <= c.Wo,
                 "window k=" + std::to_string(k) + " is larger than the convolution's output " + dims({c.Ho, c.Wo}));
  CNNFAST_EXPECT(plane_fits_int32(c.Ho, c.Wo),
                 "the convolution's output planes " + dims({c.Ho, c.Wo}) + " are too large for int32 argmax");
  return {c.Ho / k, c.Wo / k};
}

void check_argmax_values(const py::array_t<std::int32_t>& argmax, i64 plane) {
  const std::int32_t* ap = argmax.data();
  const i64 n = argmax.size();
  std::int32_t lo, hi;  // one vectorised pass; the culprit is looked for only on failure
  int32_range(ap, n, &lo, &hi);
  if (lo >= -1 && hi < plane) return;
  for (i64 i = 0; i < n; ++i)
    if (ap[i] < -1 || ap[i] >= plane)
      throw py::value_error("argmax holds " + std::to_string(ap[i]) + ", outside the plane of " +
                            std::to_string(plane) + " pixels (or -1: no gradient)");
}

// (y, argmax), or y alone with return_argmax false (the kernel then skips the argmax)
py::object conv2d_relu_max_pool2d(py::handle x_, py::handle w_, py::handle b_, i64 k, i64 padding, bool return_argmax,
                                  i64 stride) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  auto w = checked<float>(w_, "w", 4, "[K, C, R, S]");
  auto b = checked<float>(b_, "b", 1, "[K]");
  const Conv c = conv_shape(x, w, padding, stride);
  CNNFAST_EXPECT(b.shape(0) == c.K, "b must have shape (" + std::to_string(c.K) + ",), got " + shape_str(b));
  const auto [Hq, Wq] = pooled_shape(c, k);
  auto y = empty<float>({c.N, c.K, Hq, Wq});
  auto argmax = empty<std::int32_t>({return_argmax ? c.N : 0, c.K, Hq, Wq});
  float* yp = y.mutable_data();
  std::int32_t* ap = return_argmax ? argmax.mutable_data() : nullptr;
  {
    py::gil_scoped_release nogil;
    conv2d_relu_max_pool2d_forward(yp, ap, x.data(), w.data(), b.data(), c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.pad, k,
                                   c.stride);
  }
  if (!return_argmax) return std::move(y);
  return py::make_tuple(y, argmax);
}

py::tuple conv2d_relu_max_pool2d_grad(py::handle x_, py::handle w_, py::handle dy_, py::handle argmax_, i64 k,
                                      i64 padding, bool input_grad, i64 stride) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  auto w = checked<float>(w_, "w", 4, "[K, C, R, S]");
  auto dy = checked<float>(dy_, "dy", 4, "[N, K, Ho/k, Wo/k]");
  auto argmax = checked<std::int32_t>(argmax_, "argmax", 4, "[N, K, Ho/k, Wo/k]");
  const Conv c = conv_shape(x, w, padding, stride);
  const auto [Hq, Wq] = pooled_shape(c, k);
  CNNFAST_EXPECT(dy.shape(0) == c.N && dy.shape(1) == c.K && dy.shape(2) == Hq && dy.shape(3) == Wq,
                 "dy must have the shape of the pooled output " + dims({c.N, c.K, Hq, Wq}) + ", got " + shape_str(dy));
  expect_same_shape(dy, "dy", argmax, "argmax");
  check_argmax_values(argmax, c.Ho * c.Wo);
  auto dx = empty<float>(input_grad ? std::vector<py::ssize_t>{c.N, c.C, c.H, c.W} : std::vector<py::ssize_t>{0});
  auto dw = empty<float>({c.K, c.C, c.R, c.S});
  auto db = empty<float>({c.K});
  float *dxp = dx.mutable_data(), *dwp = dw.mutable_data(), *dbp = db.mutable_data();
  {
    py::gil_scoped_release nogil;
    conv2d_relu_max_pool2d_backward(input_grad ? dxp : nullptr, dwp, dbp, x.data(), w.data(), dy.data(), argmax.data(),
                                    c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.pad, k, c.stride);
  }
  return py::make_tuple(input_grad ? py::object(dx) : py::object(py::none()), dw, db);
}

// ---------------------------------------------------------------- relu
py::array_t<float> relu(py::handle x_) {
  auto x = checked<float>(x_, "x");
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  auto y = empty<float>(shape);
  float* yp = y.mutable_data();
  const i64 n = x.size();
  {
    py::gil_scoped_release nogil;
    relu_forward(yp, x.data(), n);
  }
  return y;
}

py::array_t<float> relu_grad(py::handle x_, py::handle dy_) {
  auto x = checked<float>(x_, "x");
  auto dy = checked<float>(dy_, "dy");
  expect_same_shape(x, "x", dy, "dy");
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  auto dx = empty<float>(shape);
  float* dxp = dx.mutable_data();
  const i64 n = x.size();
  {
    py::gil_scoped_release nogil;
    relu_backward(dxp, x.data(), dy.data(), n);
  }
  return dx;
}

// ---------------------------------------------------------------- max_pool2d
py::tuple max_pool2d(py::handle x_, i64 k, bool relu) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  const i64 N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  CNNFAST_EXPECT(k >= 1, "k must be at least 1, got " + std::to_string(k));
  CNNFAST_EXPECT(k <= H && k <= W, "window k=" + std::to_string(k) + " is larger than the input's " + dims({H, W}) +
                                       " (x has shape " + shape_str(x) + ")");
  CNNFAST_EXPECT(plane_fits_int32(H, W), "x planes " + dims({H, W}) + " are too large for int32 argmax");
  auto y = empty<float>({N, C, H / k, W / k});
  auto argmax = empty<std::int32_t>({N, C, H / k, W / k});
  float* yp = y.mutable_data();
  std::int32_t* ap = argmax.mutable_data();
  {
    py::gil_scoped_release nogil;
    max_pool2d_forward(yp, ap, x.data(), N, C, H, W, k, relu);
  }
  return py::make_tuple(y, argmax);
}

py::array_t<float> max_pool2d_grad(py::handle dy_, py::handle argmax_, std::vector<i64> x_shape) {
  auto dy = checked<float>(dy_, "dy", 4, "[N, C, Ho, Wo]");
  auto argmax = checked<std::int32_t>(argmax_, "argmax", 4, "[N, C, Ho, Wo]");
  expect_same_shape(dy, "dy", argmax, "argmax");
  CNNFAST_EXPECT(x_shape.size() == 4,
                 "x_shape must have 4 entries (N, C, H, W), got " + std::to_string(x_shape.size()));
  const i64 N = x_shape[0], C = x_shape[1], H = x_shape[2], W = x_shape[3];
  const i64 Ho = dy.shape(2), Wo = dy.shape(3);
  constexpr i64 kMaxPlane = std::numeric_limits<std::int32_t>::max();
  CNNFAST_EXPECT(H >= 0 && W >= 0 && H <= kMaxPlane && W <= kMaxPlane && (H == 0 || W <= kMaxPlane / H),
                 "x_shape " + dims({N, C, H, W}) + " has planes too large for int32 argmax");
  CNNFAST_EXPECT(N == dy.shape(0) && C == dy.shape(1) && H >= 0 && W >= 0 && Ho <= H && Wo <= W,
                 "x_shape " + dims({N, C, H, W}) + " does not fit dy " + shape_str(dy) +
                     ": need the same N and C and a plane at least as large");
  check_argmax_values(argmax, H * W);
  const std::int32_t* ap = argmax.data();
  auto dx = empty<float>({N, C, H, W});
  float* dxp = dx.mutable_data();
  {
    py::gil_scoped_release nogil;
    max_pool2d_backward(dxp, ap, dy.data(), N, C, H, W, Ho, Wo);
  }
  return dx;
}

// ---------------------------------------------------------------- dropout
py::tuple dropout(py::handle x_, double p, std::uint64_t seed) {
  auto x = checked<float>(x_, "x");
  CNNFAST_EXPECT(p >= 0.0 && p <= 1.0, "p must be a probability in [0, 1], got " + std::to_string(p));
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  auto y = empty<float>(shape);
  auto mask = empty<std::uint8_t>(shape);
  float* yp = y.mutable_data();
  std::uint8_t* mp = mask.mutable_data();
  const i64 n = x.size();
  {
    py::gil_scoped_release nogil;
    dropout_forward(yp, mp, x.data(), n, float(p), seed);
  }
  return py::make_tuple(y, mask);
}

py::array_t<float> dropout_grad(py::handle dy_, py::handle mask_, double p) {
  auto dy = checked<float>(dy_, "dy");
  auto mask = checked<std::uint8_t>(mask_, "mask");
  expect_same_shape(dy, "dy", mask, "mask");
  CNNFAST_EXPECT(p >= 0.0 && p <= 1.0, "p must be a probability in [0, 1], got " + std::to_string(p));
  CNNFAST_EXPECT(p == 1.0 || float(p) < 1.0f,
                 "p = " + std::to_string(p) + " rounds to 1 in float32; use p <= 1 - 6e-8 or 1");
  std::vector<py::ssize_t> shape(dy.shape(), dy.shape() + dy.ndim());
  auto dx = empty<float>(shape);
  float* dxp = dx.mutable_data();
  const i64 n = dy.size();
  {
    py::gil_scoped_release nogil;
    dropout_backward(dxp, mask.data(), dy.data(), n, float(p));
  }
  return dx;
}

// ---------------------------------------------------------------- linear
void linear_shapes(const py::array_t<float>& x, const py::array_t<float>& w) {
  CNNFAST_EXPECT(w.shape(1) == x.shape(1), "w must have shape (O, " + std::to_string(x.shape(1)) + ") to match x " +
                                               shape_str(x) + ", got " + shape_str(w));
}

py::array_t<float> linear(py::handle x_, py::handle w_, py::handle b_) {
  auto x = checked<float>(x_, "x", 2, "[N, I]");
  auto w = checked<float>(w_, "w", 2, "[O, I]");
  auto b = checked<float>(b_, "b", 1, "[O]");
  linear_shapes(x, w);
  const i64 N = x.shape(0), I = x.shape(1), O = w.shape(0);
  CNNFAST_EXPECT(b.shape(0) == O, "b must have shape (" + std::to_string(O) + ",), got " + shape_str(b));
  auto y = empty<float>({N, O});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    linear_forward(yp, x.data(), w.data(), b.data(), N, I, O);
  }
  return y;
}

py::tuple linear_grad(py::handle x_, py::handle w_, py::handle dy_) {
  auto x = checked<float>(x_, "x", 2, "[N, I]");
  auto w = checked<float>(w_, "w", 2, "[O, I]");
  auto dy = checked<float>(dy_, "dy", 2, "[N, O]");
  linear_shapes(x, w);
  const i64 N = x.shape(0), I = x.shape(1), O = w.shape(0);
  CNNFAST_EXPECT(dy.shape(0) == N && dy.shape(1) == O, "dy must have shape " + dims({N, O}) + ", got " + shape_str(dy));
  auto dx = empty<float>({N, I});
  auto dw = empty<float>({O, I});
  auto db = empty<float>({O});
  float *dxp = dx.mutable_data(), *dwp = dw.mutable_data(), *dbp = db.mutable_data();
  {
    py::gil_scoped_release nogil;
    linear_backward(dxp, dwp, dbp, x.data(), w.data(), dy.data(), N, I, O);
  }
  return py::make_tuple(dx, dw, db);
}

// ---------------------------------------------------------------- cross entropy
template <typename Label>
py::tuple cross_entropy_typed(const py::array_t<float>& logits, py::handle labels_, double label_smoothing) {
  auto labels = checked<Label>(labels_, "labels", 1, "[N]");
  const i64 N = logits.shape(0), K = logits.shape(1);
  CNNFAST_EXPECT(labels.shape(0) == N, "labels must have shape (" + std::to_string(N) + ",) to match logits " +
                                           shape_str(logits) + ", got " + shape_str(labels));
  const Label* lp = labels.data();
  for (i64 n = 0; n < N; ++n)
    if (lp[n] < 0 || i64(lp[n]) >= K)
      throw py::value_error("labels[" + std::to_string(n) + "] = " + std::to_string(lp[n]) + " is outside 0.." +
                            std::to_string(K - 1));
  auto dlogits = empty<float>({N, K});
  float* dp = dlogits.mutable_data();
  double loss;
  {
    py::gil_scoped_release nogil;
    loss = softmax_cross_entropy<Label>(dp, logits.data(), lp, N, K, float(label_smoothing));
  }
  return py::make_tuple(loss, dlogits);
}

py::tuple cross_entropy(py::handle logits_, py::handle labels_, double label_smoothing) {
  auto logits = checked<float>(logits_, "logits", 2, "[N, K]");
  CNNFAST_EXPECT(label_smoothing >= 0.0 && label_smoothing <= 1.0,
                 "label_smoothing must be in [0, 1], got " + std::to_string(label_smoothing));
  CNNFAST_EXPECT(logits.shape(0) >= 1, "logits is an empty batch: the mean loss of no samples is undefined");
  CNNFAST_EXPECT(logits.shape(1) >= 1, "logits must have at least one class, got shape " + shape_str(logits));
  if (py::isinstance<py::array_t<std::int64_t>>(labels_))
    return cross_entropy_typed<std::int64_t>(logits, labels_, label_smoothing);
  if (py::isinstance<py::array_t<std::int32_t>>(labels_))
    return cross_entropy_typed<std::int32_t>(logits, labels_, label_smoothing);
  if (!py::isinstance<py::array>(labels_))
    throw py::type_error("labels must be a numpy.ndarray of int32 or int64, got " +
                         std::string(py::str(py::type::of(labels_).attr("__name__"))));
  throw py::type_error("labels must have dtype int32 or int64, got " +
                       std::string(py::str(py::reinterpret_borrow<py::array>(labels_).dtype())));
}

// ---------------------------------------------------------------- optimizers
void sgd(py::handle param_, py::handle grad_, py::handle velocity_, double lr, double momentum, double weight_decay) {
  auto param = writable<float>(param_, "param");
  auto grad = checked<float>(grad_, "grad");
  auto velocity = writable<float>(velocity_, "velocity");
  expect_same_shape(param, "param", grad, "grad");
  expect_same_shape(param, "param", velocity, "velocity");
  expect_no_overlap(param, "param", grad, "grad");
  expect_no_overlap(param, "param", velocity, "velocity");
  expect_no_overlap(velocity, "velocity", grad, "grad");
  CNNFAST_EXPECT(momentum >= 0.0, "momentum must be >= 0, got " + std::to_string(momentum));
  CNNFAST_EXPECT(momentum == 0.0 || float(momentum) > 0.0f,
                 "momentum " + std::to_string(momentum) + " rounds to 0 in float32; use 0 or at least 1e-38");
  float *pp = param.mutable_data(), *vp = velocity.mutable_data();
  const i64 n = param.size();
  {
    py::gil_scoped_release nogil;
    sgd_step(pp, vp, grad.data(), n, float(lr), float(momentum), float(weight_decay));
  }
}

void adam(py::handle param_, py::handle grad_, py::handle m_, py::handle v_, i64 step, double lr, double beta1,
          double beta2, double eps, double weight_decay, bool decoupled) {
  auto param = writable<float>(param_, "param");
  auto grad = checked<float>(grad_, "grad");
  auto m = writable<float>(m_, "m");
  auto v = writable<float>(v_, "v");
  expect_same_shape(param, "param", grad, "grad");
  expect_same_shape(param, "param", m, "m");
  expect_same_shape(param, "param", v, "v");
  const std::pair<const py::array*, const char*> arrays[] = {{&param, "param"}, {&grad, "grad"}, {&m, "m"}, {&v, "v"}};
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j)
      expect_no_overlap(*arrays[i].first, arrays[i].second, *arrays[j].first, arrays[j].second);
  CNNFAST_EXPECT(step >= 1, "step must be >= 1 (the number of this update), got " + std::to_string(step));
  // Checked as the kernel sees them: rounded to float32 (1 - 1e-10 would become 1.0f).
  CNNFAST_EXPECT(beta1 >= 0.0 && float(beta1) < 1.0f,
                 "beta1 must be in [0, 1) in float32, got " + std::to_string(beta1));
  CNNFAST_EXPECT(beta2 >= 0.0 && float(beta2) < 1.0f,
                 "beta2 must be in [0, 1) in float32, got " + std::to_string(beta2));
  CNNFAST_EXPECT(float(eps) > 0.0f, "eps must be > 0 in float32 (at least ~1e-45), got " + std::to_string(eps));
  float *pp = param.mutable_data(), *mp = m.mutable_data(), *vp = v.mutable_data();
  const i64 n = param.size();
  {
    py::gil_scoped_release nogil;
    (decoupled ? adamw_step : adam_step)(pp, mp, vp, grad.data(), n, step, float(lr), float(beta1), float(beta2),
                                         float(eps), float(weight_decay));
  }
}

// ---------------------------------------------------------------- activations (activations.cpp)
// y = f(x), any shape: kernel(y, x, n)
template <class Kernel>
py::array_t<float> map_elementwise(py::handle x_, const Kernel& kernel) {
  auto x = checked<float>(x_, "x");
  auto y = empty<float>(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  float* yp = y.mutable_data();
  const i64 n = x.size();
  {
    py::gil_scoped_release nogil;
    kernel(yp, x.data(), n);
  }
  return y;
}

// dx = g(a, dy) with a (the forward's input or output, as named) and dy of one shape: kernel(dx, a, dy, n)
template <class Kernel>
py::array_t<float> map_elementwise_grad(py::handle a_, py::handle dy_, const char* a_name, const Kernel& kernel) {
  auto a = checked<float>(a_, a_name);
  auto dy = checked<float>(dy_, "dy");
  expect_same_shape(a, a_name, dy, "dy");
  auto dx = empty<float>(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
  float* dxp = dx.mutable_data();
  const i64 n = a.size();
  {
    py::gil_scoped_release nogil;
    kernel(dxp, a.data(), dy.data(), n);
  }
  return dx;
}

template <void (*kernel)(float*, const float*, i64)>
py::array_t<float> elementwise(py::handle x_) {
  return map_elementwise(x_, kernel);
}

template <void (*kernel)(float*, const float*, const float*, i64)>
py::array_t<float> elementwise_grad(py::handle a_, py::handle dy_, const char* a_name) {
  return map_elementwise_grad(a_, dy_, a_name, kernel);
}

// (finite in float32, as the kernels use it: 1e39 is finite as a double and inf as a float)
float checked_slope(double negative_slope) {
  const float slope = float(negative_slope);
  CNNFAST_EXPECT(std::isfinite(slope), "negative_slope must be a finite number in float32 (|slope| < 3.4e38), got " +
                                           std::to_string(negative_slope));
  return slope;
}

py::array_t<float> leaky_relu(py::handle x_, double negative_slope) {
  const float slope = checked_slope(negative_slope);
  return map_elementwise(x_, [slope](float* y, const float* x, i64 n) { leaky_relu_forward(y, x, n, slope); });
}

py::array_t<float> leaky_relu_grad(py::handle x_, py::handle dy_, double negative_slope) {
  const float slope = checked_slope(negative_slope);
  return map_elementwise_grad(x_, dy_, "x", [slope](float* dx, const float* x, const float* dy, i64 n) {
    leaky_relu_backward(dx, x, dy, n, slope);
  });
}

// ---------------------------------------------------------------- pooling windows (max_pool2d_window.cpp,
// avg_pool2d.cpp) The window (kh, kw), stride (sh, sw), padding (ph, pw) checked against planes H x W: the sizes
// PyTorch accepts (padding at most half the window), and at least one output pixel
PoolWindow pool_window(i64 H, i64 W, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw) {
  // (an empty plane would leave windows with no pixel: the kernels read the plane's first one)
  CNNFAST_EXPECT(H >= 1 && W >= 1, "x must have planes of at least 1x1 to pool, got " + dims({H, W}));
  constexpr i64 kMaxWindow = i64(1) << 20;  // (the sizes model files take; kh * kw and 2 * ph stay far from overflow)
  CNNFAST_EXPECT(
      kh >= 1 && kw >= 1 && kh <= kMaxWindow && kw <= kMaxWindow,
      "kernel_size must be at least 1 and at most " + std::to_string(kMaxWindow) + ", got " + dims({kh, kw}));
  CNNFAST_EXPECT(sh >= 1 && sw >= 1 && sh <= kMaxWindow && sw <= kMaxWindow,
                 "stride must be at least 1 and at most " + std::to_string(kMaxWindow) + ", got " + dims({sh, sw}));
  CNNFAST_EXPECT(ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw,
                 "padding must be between 0 and half the kernel size " + dims({kh, kw}) + ", got " + dims({ph, pw}));
  CNNFAST_EXPECT(kh <= H + 2 * ph && kw <= W + 2 * pw,
                 "kernel " + dims({kh, kw}) + " is larger than the padded input " + dims({H + 2 * ph, W + 2 * pw}));
  return PoolWindow{kh, kw, sh, sw, ph, pw};
}

py::tuple max_pool2d_window(py::handle x_, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  const i64 N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  const PoolWindow p = pool_window(H, W, kh, kw, sh, sw, ph, pw);
  CNNFAST_EXPECT(plane_fits_int32(H, W), "x planes " + dims({H, W}) + " are too large for int32 argmax");
  const i64 Ho = p.out_height(H), Wo = p.out_width(W);
  auto y = empty<float>({N, C, Ho, Wo});
  auto argmax = empty<std::int32_t>({N, C, Ho, Wo});
  float* yp = y.mutable_data();
  std::int32_t* ap = argmax.mutable_data();
  {
    py::gil_scoped_release nogil;
    max_pool2d_window_forward(yp, ap, x.data(), N, C, H, W, p);
  }
  return py::make_tuple(y, argmax);
}

// x_shape: (N, C, H, W) of non-negative sizes whose planes fit int32 indices
std::vector<i64> checked_x_shape(const std::vector<i64>& x_shape) {
  CNNFAST_EXPECT(x_shape.size() == 4,
                 "x_shape must have 4 entries (N, C, H, W), got " + std::to_string(x_shape.size()));
  for (i64 d : x_shape) CNNFAST_EXPECT(d >= 0, "x_shape must not hold negative sizes");
  CNNFAST_EXPECT(
      plane_fits_int32(x_shape[2], x_shape[3]),
      "x_shape " + dims({x_shape[0], x_shape[1], x_shape[2], x_shape[3]}) + " has planes too large for int32");
  return x_shape;
}

py::array_t<float> max_pool2d_window_grad(py::handle dy_, py::handle argmax_, std::vector<i64> x_shape) {
  auto dy = checked<float>(dy_, "dy", 4, "[N, C, Ho, Wo]");
  auto argmax = checked<std::int32_t>(argmax_, "argmax", 4, "[N, C, Ho, Wo]");
  expect_same_shape(dy, "dy", argmax, "argmax");
  const auto s = checked_x_shape(x_shape);
  const i64 N = s[0], C = s[1], H = s[2], W = s[3];
  CNNFAST_EXPECT(N == dy.shape(0) && C == dy.shape(1),
                 "x_shape " + dims({N, C, H, W}) + " does not fit dy " + shape_str(dy) + ": need the same N and C");
  check_argmax_values(argmax, H * W);
  auto dx = empty<float>({N, C, H, W});
  float* dxp = dx.mutable_data();
  {
    py::gil_scoped_release nogil;
    max_pool2d_window_backward(dxp, argmax.data(), dy.data(), N, C, H, W, dy.shape(2), dy.shape(3));
  }
  return dx;
}

py::array_t<float> avg_pool2d(py::handle x_, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw, bool count_include_pad) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  const i64 N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  const PoolWindow p = pool_window(H, W, kh, kw, sh, sw, ph, pw);
  auto y = empty<float>({N, C, p.out_height(H), p.out_width(W)});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    avg_pool2d_forward(yp, x.data(), N, C, H, W, p, count_include_pad);
  }
  return y;
}

py::array_t<float> avg_pool2d_grad(py::handle dy_, std::vector<i64> x_shape, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph,
                                   i64 pw, bool count_include_pad) {
  auto dy = checked<float>(dy_, "dy", 4, "[N, C, Ho, Wo]");
  const auto s = checked_x_shape(x_shape);
  const i64 N = s[0], C = s[1], H = s[2], W = s[3];
  const PoolWindow p = pool_window(H, W, kh, kw, sh, sw, ph, pw);
  const i64 Ho = p.out_height(H), Wo = p.out_width(W);
  CNNFAST_EXPECT(dy.shape(0) == N && dy.shape(1) == C && dy.shape(2) == Ho && dy.shape(3) == Wo,
                 "dy must have the shape of avg_pool2d's output " + dims({N, C, Ho, Wo}) + ", got " + shape_str(dy));
  auto dx = empty<float>({N, C, H, W});
  float* dxp = dx.mutable_data();
  {
    py::gil_scoped_release nogil;
    avg_pool2d_backward(dxp, dy.data(), N, C, H, W, Ho, Wo, p, count_include_pad);
  }
  return dx;
}

py::array_t<float> global_avg_pool2d(py::handle x_) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  const i64 N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  CNNFAST_EXPECT(H >= 1 && W >= 1, "x must have planes of at least 1x1 to average, got shape " + shape_str(x));
  auto y = empty<float>({N, C, 1, 1});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    global_avg_pool2d_forward(yp, x.data(), N * C, H * W);
  }
  return y;
}

py::array_t<float> global_avg_pool2d_grad(py::handle dy_, std::vector<i64> x_shape) {
  auto dy = checked<float>(dy_, "dy", 4, "[N, C, 1, 1]");
  const auto s = checked_x_shape(x_shape);
  const i64 N = s[0], C = s[1], H = s[2], W = s[3];
  CNNFAST_EXPECT(
      dy.shape(0) == N && dy.shape(1) == C && dy.shape(2) == 1 && dy.shape(3) == 1,
      "dy must have shape " + dims({N, C, 1, 1}) + " for x_shape " + dims({N, C, H, W}) + ", got " + shape_str(dy));
  auto dx = empty<float>({N, C, H, W});
  float* dxp = dx.mutable_data();
  {
    py::gil_scoped_release nogil;
    global_avg_pool2d_backward(dxp, dy.data(), N * C, H * W);
  }
  return dx;
}

// ---------------------------------------------------------------- batch norm
struct BatchNormShape {
  i64 N, C, L;
};

// x: [N, C], [N, C, L] or [N, C, H, W]; every per-channel array [C]
BatchNormShape batch_norm_shape(const py::array_t<float>& x,
                                std::initializer_list<std::pair<const py::array*, const char*>> per_channel) {
  CNNFAST_EXPECT(x.ndim() >= 2 && x.ndim() <= 4,
                 "x must have 2 to 4 dimensions ([N, C], [N, C, L] or [N, C, H, W]), got shape " + shape_str(x));
  BatchNormShape s{x.shape(0), x.shape(1), 1};
  for (py::ssize_t d = 2; d < x.ndim(); ++d) s.L *= x.shape(d);
  for (const auto& [a, name] : per_channel)
    CNNFAST_EXPECT(a->ndim() == 1 && a->shape(0) == s.C, std::string(name) + " must have shape (" +
                                                             std::to_string(s.C) + ",), one value per channel of x " +
                                                             shape_str(x) + ", got " + shape_str(*a));
  return s;
}

// An array written in place may share no memory with any other argument.
void expect_disjoint(const py::array& a, const char* a_name, const py::array& b, const char* b_name) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  CNNFAST_EXPECT(!(a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes()),
                 std::string(a_name) + " and " + b_name + " share memory; pass a copy of one");
}

void expect_batch_norm_eps(double eps) {
  CNNFAST_EXPECT(std::isfinite(eps) && float(eps) > 0.0f, "eps must be > 0 in float32, got " + std::to_string(eps));
}

py::tuple batch_norm_train(py::handle x_, py::handle weight_, py::handle bias_, py::handle running_mean_,
                           py::handle running_var_, double momentum, double eps) {
  auto x = checked<float>(x_, "x");
  auto weight = checked<float>(weight_, "weight");
  auto bias = checked<float>(bias_, "bias");
  auto running_mean = writable<float>(running_mean_, "running_mean");
  auto running_var = writable<float>(running_var_, "running_var");
  const BatchNormShape s = batch_norm_shape(
      x, {{&weight, "weight"}, {&bias, "bias"}, {&running_mean, "running_mean"}, {&running_var, "running_var"}});
  CNNFAST_EXPECT(s.N * s.L >= 2, "x has " + std::to_string(s.N * s.L) +
                                     " value(s) per channel; training needs at least 2 (a batch of 2, or an image of 2 "
                                     "pixels) to estimate a variance");
  CNNFAST_EXPECT(momentum >= 0.0 && momentum <= 1.0, "momentum must be in [0, 1], got " + std::to_string(momentum));
  expect_batch_norm_eps(eps);
  const std::pair<const py::array*, const char*> read[] = {
      {&x, "x"}, {&weight, "weight"}, {&bias, "bias"}, {&running_var, "running_var"}};
  for (const auto& [a, name] : read) expect_disjoint(running_mean, "running_mean", *a, name);
  for (int i = 0; i < 3; ++i) expect_disjoint(running_var, "running_var", *read[i].first, read[i].second);
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  auto y = empty<float>(shape);
  auto mean = empty<float>({s.C});
  auto invstd = empty<float>({s.C});
  float *yp = y.mutable_data(), *mp = mean.mutable_data(), *ip = invstd.mutable_data();
  float *rm = running_mean.mutable_data(), *rv = running_var.mutable_data();
  {
    py::gil_scoped_release nogil;
    batch_norm_forward_train(yp, mp, ip, rm, rv, x.data(), weight.data(), bias.data(), s.N, s.C, s.L, float(eps),
                             float(momentum));
  }
  return py::make_tuple(y, mean, invstd);
}

py::array_t<float> batch_norm_eval(py::handle x_, py::handle weight_, py::handle bias_, py::handle running_mean_,
                                   py::handle running_var_, double eps) {
  auto x = checked<float>(x_, "x");
  auto weight = checked<float>(weight_, "weight");
  auto bias = checked<float>(bias_, "bias");
  auto running_mean = checked<float>(running_mean_, "running_mean");
  auto running_var = checked<float>(running_var_, "running_var");
  const BatchNormShape s = batch_norm_shape(
      x, {{&weight, "weight"}, {&bias, "bias"}, {&running_mean, "running_mean"}, {&running_var, "running_var"}});
  expect_batch_norm_eps(eps);
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  auto y = empty<float>(shape);
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    batch_norm_forward_eval(yp, x.data(), weight.data(), bias.data(), running_mean.data(), running_var.data(), s.N, s.C,
                            s.L, float(eps));
  }
  return y;
}

py::tuple batch_norm_grad(py::handle x_, py::handle weight_, py::handle dy_, py::handle mean_, py::handle invstd_,
                          bool input_grad) {
  auto x = checked<float>(x_, "x");
  auto weight = checked<float>(weight_, "weight");
  auto dy = checked<float>(dy_, "dy");
  auto mean = checked<float>(mean_, "mean");
  auto invstd = checked<float>(invstd_, "invstd");
  const BatchNormShape s = batch_norm_shape(x, {{&weight, "weight"}, {&mean, "mean"}, {&invstd, "invstd"}});
  expect_same_shape(x, "x", dy, "dy");
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  py::object dx = py::none();
  float* dxp = nullptr;
  if (input_grad) {
    auto dx_array = empty<float>(shape);
    dxp = dx_array.mutable_data();
    dx = dx_array;
  }
  auto dweight = empty<float>({s.C});
  auto dbias = empty<float>({s.C});
  float *dwp = dweight.mutable_data(), *dbp = dbias.mutable_data();
  {
    py::gil_scoped_release nogil;
    batch_norm_backward(dxp, dwp, dbp, x.data(), weight.data(), dy.data(), mean.data(), invstd.data(), s.N, s.C, s.L);
  }
  return py::make_tuple(dx, dweight, dbias);
}

// ---------------------------------------------------------------- GEMM (for tests and benchmarks)
py::array_t<float> matmul(py::handle a_, py::handle b_, bool trans_a, bool trans_b, bool naive) {
  auto a = checked<float>(a_, "a", 2, "[M, K] (or [K, M] with trans_a)");
  auto b = checked<float>(b_, "b", 2, "[K, N] (or [N, K] with trans_b)");
  const i64 M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
  const i64 Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
  CNNFAST_EXPECT(K == Kb, "a and b do not multiply: op(a) is " + dims({M, K}) + ", op(b) is " + dims({Kb, N}));
  auto c = empty<float>({M, N});
  float* cp = c.mutable_data();
  {
    py::gil_scoped_release nogil;
    (naive ? sgemm_naive : sgemm_parallel)(trans_a, trans_b, M, N, K, a.data(), a.shape(1), b.data(), b.shape(1), cp, N,
                                           false);
  }
  return c;
}

// ---------------------------------------------------------------- augment
constexpr i64 kMaxAugmentSide = i64(1) << 24;  // pixel coordinates stay exact in float32

std::string num(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

AugmentRanges augment_ranges(double rotation, std::pair<double, double> scale, double shear, double translate,
                             double alpha, double sigma) {
  CNNFAST_EXPECT(rotation >= 0.0 && rotation <= 180.0,
                 "rotation must be an angle in degrees in [0, 180], got " + num(rotation));
  CNNFAST_EXPECT(scale.first > 0.0 && scale.first <= scale.second && scale.second <= 1e6,
                 "scale must be (low, high) with 0 < low <= high <= 1e6, got (" + num(scale.first) + ", " +
                     num(scale.second) + ")");
  CNNFAST_EXPECT(shear >= 0.0 && shear <= 80.0, "shear must be an angle in degrees in [0, 80], got " + num(shear));
  CNNFAST_EXPECT(translate >= 0.0 && translate <= 1.0,
                 "translate must be a fraction of the image size in [0, 1], got " + num(translate));
  CNNFAST_EXPECT(alpha >= 0.0 && alpha <= 1e6, "elastic_alpha must be in [0, 1e6] pixels, got " + num(alpha));
  CNNFAST_EXPECT(sigma > 0.0 && sigma <= 1000.0, "elastic_sigma must be in (0, 1000] pixels, got " + num(sigma));
  return AugmentRanges{float(rotation),  float(scale.first), float(scale.second), float(shear),
                       float(translate), float(alpha),       float(sigma)};
}

void expect_side(i64 H, i64 W, const std::string& what) {
  CNNFAST_EXPECT(H >= 1 && W >= 1 && H <= kMaxAugmentSide && W <= kMaxAugmentSide && plane_fits_int32(H, W),
                 what + " must be between 1 and " + std::to_string(kMaxAugmentSide) +
                     " pixels, with at most 2^31 - 1 pixels in all, got " + dims({H, W}));
}

py::array_t<float> augment(py::handle x_, std::uint64_t seed, std::uint64_t step, double rotation,
                           std::pair<double, double> scale, double shear, double translate, double elastic_alpha,
                           double elastic_sigma, double fill) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  const i64 N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  expect_side(H, W, "the images of x");
  const AugmentRanges r = augment_ranges(rotation, scale, shear, translate, elastic_alpha, elastic_sigma);
  CNNFAST_EXPECT(std::isfinite(fill), "fill must be a finite number, got " + num(fill));
  auto y = empty<float>({N, C, H, W});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    augment_forward(yp, x.data(), N, C, H, W, float(fill), seed, step, r);
  }
  return y;
}

py::tuple augment_params(i64 n, i64 height, i64 width, std::uint64_t seed, std::uint64_t step, double rotation,
                         std::pair<double, double> scale, double shear, double translate, double elastic_alpha,
                         double elastic_sigma) {
  CNNFAST_EXPECT(n >= 0, "n must be >= 0, got " + std::to_string(n));
  expect_side(height, width, "height and width");
  const AugmentRanges r = augment_ranges(rotation, scale, shear, translate, elastic_alpha, elastic_sigma);
  auto affine = empty<float>({n, 2, 3});
  float* ap = affine.mutable_data();
  const bool elastic = r.alpha > 0.0f;
  py::object field = py::none();
  float* fp = nullptr;
  if (elastic) {
    auto f = empty<float>({n, 2, height, width});
    fp = f.mutable_data();
    field = f;
  }
  {
    py::gil_scoped_release nogil;
    augment_draw(ap, fp, n, height, width, seed, step, r);
  }
  return py::make_tuple(affine, field);
}

py::array_t<float> warp(py::handle x_, py::handle affine_, py::handle field_, double fill) {
  auto x = checked<float>(x_, "x", 4, "[N, C, H, W]");
  auto affine = checked<float>(affine_, "affine", 3, "[N, 2, 3]");
  const i64 N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  expect_side(H, W, "the images of x");
  CNNFAST_EXPECT(affine.shape(0) == N && affine.shape(1) == 2 && affine.shape(2) == 3,
                 "affine must have shape (" + std::to_string(N) + ", 2, 3), got " + shape_str(affine));
  const float* a = affine.data();
  CNNFAST_EXPECT(std::all_of(a, a + affine.size(), [](float v) { return std::isfinite(v); }), "affine must be finite");
  const float* fp = nullptr;
  py::array_t<float> field;
  if (!field_.is_none()) {
    field = checked<float>(field_, "field", 4, "[N, 2, H, W]");
    CNNFAST_EXPECT(field.shape(0) == N && field.shape(1) == 2 && field.shape(2) == H && field.shape(3) == W,
                   "field must have shape " + dims({N, 2, H, W}) + ", got " + shape_str(field));
    fp = field.data();
    CNNFAST_EXPECT(std::all_of(fp, fp + field.size(), [](float v) { return std::isfinite(v); }),
                   "field must be finite");
  }
  CNNFAST_EXPECT(std::isfinite(fill), "fill must be a finite number, got " + num(fill));
  auto y = empty<float>({N, C, H, W});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    warp_bilinear(yp, x.data(), a, fp, N, C, H, W, float(fill));
  }
  return y;
}

// ---------------------------------------------------------------- build information
py::dict build_info() {
  const IsaKernels* compiled[8];
  const int n = compiled_isas(compiled, 8);
  py::list isa_compiled, isa_supported;
  for (int i = 0; i < n; ++i) {
    isa_compiled.append(compiled[i]->name);
    if (cpu_supports_isa(compiled[i]->name)) isa_supported.append(compiled[i]->name);
  }
  const IsaKernels& isa = active_isa();
  // Per operation, the implementation in use with this instruction set: "<isa>" for the ISA's
  // own kernel, "portable" for plain C++ compiled once; conv2d's paths in the order tried.
  const std::string own = isa.name;
  py::dict kernels;
  kernels["gemm"] = own + " " + std::to_string(isa.gemm->mr) + "x" + std::to_string(isa.gemm->nr);
  const char* paths[16];
  const int np = conv2d_paths(paths, 16);
  py::list conv2d;
  for (int i = 0; i < np; ++i) conv2d.append(paths[i]);
  kernels["conv2d"] = conv2d;
  kernels["conv2d_direct"] = own;
  kernels["max_pool2d"] = isa.pool2_plane ? own + " (2x2), portable (other windows)" : std::string("portable");
  kernels["linear"] = own + " (narrow layers, a few rows), gemm";
  kernels["dropout"] = own;
  kernels["relu"] = std::string("portable");
  kernels["cross_entropy"] = std::string("portable");
  kernels["optim"] = std::string("portable");
  kernels["batch_norm"] = std::string("portable");
  kernels["activations"] = own + " (tanh, sigmoid), portable (LeakyReLU)";
  kernels["pool_windows"] = std::string("portable");  // max_pool2d with other strides or padding, avg_pool2d
  kernels["augment"] = own +
                       (isa.augment_smooth ? " (sampling, noise, smoothing)" : " (sampling, noise), gemm (smoothing)") +
                       ", portable (smoothing over 64 pixels)";
  py::dict d;
  d["isa"] = isa.name;
  d["isa_compiled"] = isa_compiled;
  d["isa_supported"] = isa_supported;
  d["kernels"] = kernels;
  d["gemm_tile"] = py::make_tuple(isa.gemm->mr, isa.gemm->nr);
#if defined(_OPENMP)
  d["openmp"] = true;
  d["openmp_version"] = _OPENMP;
#else
  d["openmp"] = false;
  d["openmp_version"] = py::none();
#endif
  d["num_threads"] = get_num_threads();
  d["max_threads"] = omp_get_num_procs();
  d["compiler"] = CNNFAST_COMPILER;
  d["cxx_flags"] = CNNFAST_CXX_FLAGS;
  d["build_type"] = CNNFAST_BUILD_TYPE;
  return d;
}

// Training allocates the same large activation arrays (up to ~11 MB) at every step. glibc serves
// blocks over 128 KiB with mmap and unmaps them on free, so every step would fault in and zero tens
// of MB afresh (about a fifth of a step). Serving them from the heap, and not trimming it, lets
// each step reuse the memory the previous step freed. Process-wide, so only on request (the
// training command asks; importing cnnfast changes nothing). False where the C library is not glibc.
bool freed_memory_reused = false;
bool reuse_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  freed_memory_reused = true;
#endif
  return freed_memory_reused;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "cnnfast's compiled kernels (private: use cnnfast.functional)";
  using namespace pybind11::literals;

  m.def("reuse_freed_memory", &reuse_freed_memory,
        "Keep large freed blocks in the heap for reuse (glibc's mallopt; process-wide). True if done.");
  m.def("freed_memory_reused", [] { return freed_memory_reused; });
  m.def("conv2d", &conv2d, "x"_a, "w"_a, "b"_a, "padding"_a = 0, "stride"_a = 1);
  m.def("conv2d_naive", &conv2d_naive, "x"_a, "w"_a, "b"_a, "padding"_a = 0, "stride"_a = 1);
  m.def("conv2d_backward", &conv2d_grad, "x"_a, "w"_a, "dy"_a, "padding"_a = 0, "input_grad"_a = true, "stride"_a = 1);
  m.def("conv2d_relu_max_pool2d", &conv2d_relu_max_pool2d, "x"_a, "w"_a, "b"_a, "k"_a, "padding"_a = 0,
        "return_argmax"_a = true, "stride"_a = 1);
  m.def("conv2d_relu_max_pool2d_backward", &conv2d_relu_max_pool2d_grad, "x"_a, "w"_a, "dy"_a, "argmax"_a, "k"_a,
        "padding"_a = 0, "input_grad"_a = true, "stride"_a = 1);
  m.def("relu", &relu, "x"_a);
  m.def("relu_backward", &relu_grad, "x"_a, "dy"_a);
  m.def("max_pool2d", &max_pool2d, "x"_a, "k"_a, "relu"_a = false);
  m.def("max_pool2d_backward", &max_pool2d_grad, "dy"_a, "argmax"_a, "x_shape"_a);
  m.def("dropout", &dropout, "x"_a, "p"_a, "seed"_a);
  m.def("dropout_backward", &dropout_grad, "dy"_a, "mask"_a, "p"_a);
  m.def("linear", &linear, "x"_a, "w"_a, "b"_a);
  m.def("linear_backward", &linear_grad, "x"_a, "w"_a, "dy"_a);
  m.def("softmax_cross_entropy", &cross_entropy, "logits"_a, "labels"_a, "label_smoothing"_a = 0.0);
  m.def("sgd_step", &sgd, "param"_a, "grad"_a, "velocity"_a, "lr"_a, "momentum"_a = 0.0, "weight_decay"_a = 0.0);
  m.def(
      "adam_step",
      [](py::handle param, py::handle grad, py::handle m, py::handle v, i64 step, double lr, double beta1, double beta2,
         double eps,
         double weight_decay) { adam(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, false); },
      "param"_a, "grad"_a, "m"_a, "v"_a, "step"_a, "lr"_a = 1e-3, "beta1"_a = 0.9, "beta2"_a = 0.999, "eps"_a = 1e-8,
      "weight_decay"_a = 0.0);
  m.def(
      "adamw_step",
      [](py::handle param, py::handle grad, py::handle m, py::handle v, i64 step, double lr, double beta1, double beta2,
         double eps, double weight_decay) { adam(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, true); },
      "param"_a, "grad"_a, "m"_a, "v"_a, "step"_a, "lr"_a = 1e-3, "beta1"_a = 0.9, "beta2"_a = 0.999, "eps"_a = 1e-8,
      "weight_decay"_a = 1e-2);
  m.def("batch_norm_train", &batch_norm_train, "x"_a, "weight"_a, "bias"_a, "running_mean"_a, "running_var"_a,
        "momentum"_a = 0.1, "eps"_a = 1e-5);
  m.def("batch_norm_eval", &batch_norm_eval, "x"_a, "weight"_a, "bias"_a, "running_mean"_a, "running_var"_a,
        "eps"_a = 1e-5);
  m.def("batch_norm_backward", &batch_norm_grad, "x"_a, "weight"_a, "dy"_a, "mean"_a, "invstd"_a,
        "input_grad"_a = true);
  m.def("augment", &augment, "x"_a, "seed"_a, "step"_a = 0, "rotation"_a = 0.0,
        "scale"_a = std::pair<double, double>(1.0, 1.0), "shear"_a = 0.0, "translate"_a = 0.0, "elastic_alpha"_a = 0.0,
        "elastic_sigma"_a = 4.0, "fill"_a = 0.0);
  m.def("augment_params", &augment_params, "n"_a, "height"_a, "width"_a, "seed"_a, "step"_a = 0, "rotation"_a = 0.0,
        "scale"_a = std::pair<double, double>(1.0, 1.0), "shear"_a = 0.0, "translate"_a = 0.0, "elastic_alpha"_a = 0.0,
        "elastic_sigma"_a = 4.0);
  m.def("warp_bilinear", &warp, "x"_a, "affine"_a, "field"_a = py::none(), "fill"_a = 0.0);
  m.def("matmul", &matmul, "a"_a, "b"_a, "trans_a"_a = false, "trans_b"_a = false, "naive"_a = false);

  // activations and pooling windows (activations.cpp, max_pool2d_window.cpp, avg_pool2d.cpp)
  m.def("leaky_relu", &leaky_relu, "x"_a, "negative_slope"_a = 0.01);
  m.def("leaky_relu_backward", &leaky_relu_grad, "x"_a, "dy"_a, "negative_slope"_a = 0.01);
  m.def("tanh", &elementwise<tanh_forward>, "x"_a);
  m.def(
      "tanh_backward", [](py::handle y, py::handle dy) { return elementwise_grad<tanh_backward>(y, dy, "y"); }, "y"_a,
      "dy"_a);
  m.def("sigmoid", &elementwise<sigmoid_forward>, "x"_a);
  m.def(
      "sigmoid_backward", [](py::handle y, py::handle dy) { return elementwise_grad<sigmoid_backward>(y, dy, "y"); },
      "y"_a, "dy"_a);
  m.def("max_pool2d_window", &max_pool2d_window, "x"_a, "kh"_a, "kw"_a, "sh"_a, "sw"_a, "ph"_a, "pw"_a);
  m.def("max_pool2d_window_backward", &max_pool2d_window_grad, "dy"_a, "argmax"_a, "x_shape"_a);
  m.def("avg_pool2d", &avg_pool2d, "x"_a, "kh"_a, "kw"_a, "sh"_a, "sw"_a, "ph"_a, "pw"_a, "count_include_pad"_a = true);
  m.def("avg_pool2d_backward", &avg_pool2d_grad, "dy"_a, "x_shape"_a, "kh"_a, "kw"_a, "sh"_a, "sw"_a, "ph"_a, "pw"_a,
        "count_include_pad"_a = true);
  m.def("global_avg_pool2d", &global_avg_pool2d, "x"_a);
  m.def("global_avg_pool2d_backward", &global_avg_pool2d_grad, "dy"_a, "x_shape"_a);

  m.def(
      "set_num_threads",
      [](int n) {
        CNNFAST_EXPECT(n >= 1, "set_num_threads needs n >= 1, got " + std::to_string(n));
        cnnfast::set_num_threads(n);
      },
      "n"_a);
  m.def("get_num_threads", &cnnfast::get_num_threads);
  m.def(
      "set_isa",
      [](const std::string& name) {
        if (!cnnfast::set_isa(name.c_str())) {
          const IsaKernels* compiled[8];
          const int n = compiled_isas(compiled, 8);
          std::string available;
          for (int i = 0; i < n; ++i)
            if (cpu_supports_isa(compiled[i]->name))
              available += std::string(available.empty() ? "" : ", ") + compiled[i]->name;
          throw py::value_error("instruction set '" + name + "' is not available here; choose one of: " + available);
        }
      },
      "name"_a);
  m.def("build_info", &build_info);
  m.def(
      "conv2d_path",
      [](py::tuple x_shape, py::tuple w_shape, i64 padding, i64 pool, bool backward, bool input_grad, i64 stride) {
        CNNFAST_EXPECT(x_shape.size() == 4 && w_shape.size() == 4,
                       "x_shape and w_shape must be 4-tuples (N, C, H, W), (K, C, R, S)");
        const i64 N = x_shape[0].cast<i64>(), C = x_shape[1].cast<i64>(), H = x_shape[2].cast<i64>(),
                  W = x_shape[3].cast<i64>();
        const i64 K = w_shape[0].cast<i64>(), R = w_shape[2].cast<i64>(), S = w_shape[3].cast<i64>();
        CNNFAST_EXPECT(w_shape[1].cast<i64>() == C, "w_shape's C differs from x_shape's");
        CNNFAST_EXPECT(N >= 0 && C >= 0 && K >= 0 && R >= 1 && S >= 1 && padding >= 0 && pool >= 0 && stride >= 1,
                       "negative or empty sizes");
        CNNFAST_EXPECT(H + 2 * padding >= R && W + 2 * padding >= S, "the kernel is larger than the padded image");
        return std::string(conv2d_path(N, C, H, W, K, R, S, padding, pool, backward, input_grad, stride));
      },
      "x_shape"_a, "w_shape"_a, "padding"_a = 0, "pool"_a = 0, "backward"_a = false, "input_grad"_a = true,
      "stride"_a = 1,
      "Which of conv2d's paths (cpp/conv2d.cpp's list) runs for this layer with the instruction set in use "
      "(\"panels, dx direct\": the panels' backward with dx by the direct path's forward of dy)");
  m.def(
      "set_few_pixels_limit",
      [](i64 pixels) {
        CNNFAST_EXPECT(pixels >= 0, "pixels must be >= 0");
        return set_few_pixels_limit(pixels);
      },
      "pixels"_a,
      "The most output pixels in a batch (N*Ho*Wo) that conv2d's few_pixels path takes (0: none; for the tests "
      "and benchmarks that run a layer both ways); returns the limit before");
  m.def(
      "set_winograd_tile_limit",
      [](int tile) {
        CNNFAST_EXPECT(tile == 2 || tile == 4, "tile must be 2 or 4");
        return set_winograd_tile_limit(tile);
      },
      "tile"_a,
      "The largest m of Winograd's F(m x m, 3x3) that conv2d's winograd path may choose (4: F(4x4) where it "
      "takes the layer, 2: always F(2x2); for the tests and benchmarks that run a layer both ways); returns the "
      "limit before");
}
