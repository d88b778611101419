// Multi-threaded CPU kernels for the PiT ops whose Paddle CPU kernels run on one thread and dominate CPU time
// after the matmuls: softmax over the last axis (the attention weights), LayerNorm (whose backward is the slow
// part), the Linear bias add and exact GELU. Same math as paddle.nn.functional's softmax / layer_norm / gelu;
// built on first use by cpu_kernels.py.
// OpenMP here is paddle's own libiomp5 (linked by cpu_kernels.py), so it shares MKL's thread pool and count.
#include <cmath>
#include <vector>

#include "paddle/extension.h"

namespace {

void check_cpu_float(const paddle::Tensor& t, const char* what) {
  PD_CHECK(t.is_cpu(), what, " must be a CPU tensor");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, what, " must be float32");
}

// Rows of t seen as a [rows, cols] matrix, cols its last axis.
int64_t rows_of(const paddle::Tensor& t) {
  const int64_t cols = t.shape().back();
  return cols > 0 ? t.numel() / cols : 0;
}

// Column sums over rows are taken per chunk of rows (chunk k: rows [chunk_begin(k), chunk_begin(k + 1))), then
// the chunks are added in order. The number of chunks is fixed, so the sums do not depend on the thread count.
constexpr int64_t kChunks = 64;

int64_t chunk_begin(int64_t rows, int64_t k) { return rows * k / kChunks; }

// The [cols] tensor of the partial column sums partial[k * cols + c], added in chunk order.
paddle::Tensor sum_chunks(const std::vector<float>& partial, int64_t cols) {
  auto total = paddle::empty({cols}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* t = total.data<float>();
  for (int64_t c = 0; c < cols; ++c) t[c] = 0.f;
  for (int64_t k = 0; k < kChunks; ++k)
    for (int64_t c = 0; c < cols; ++c) t[c] += partial[k * cols + c];
  return total;
}

}  // namespace

// ---------------------------------------------------------------- softmax over the last axis

std::vector<paddle::Tensor> SoftmaxForward(const paddle::Tensor& x) {
  check_cpu_float(x, "pit_softmax input");
  auto out = paddle::empty_like(x);
  const int64_t cols = x.shape().back();
  const int64_t rows = rows_of(x);
  const float* in = x.data<float>();
  float* y = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = in + r * cols;
    float* b = y + r * cols;
    float row_max = a[0];
    for (int64_t c = 1; c < cols; ++c) row_max = std::fmax(row_max, a[c]);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < cols; ++c) {
      b[c] = std::exp(a[c] - row_max);
      sum += b[c];
    }
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) b[c] *= inv;
  }
  return {out};
}

// dx = y * (dy - sum(dy * y)) per row.
std::vector<paddle::Tensor> SoftmaxBackward(const paddle::Tensor& out, const paddle::Tensor& grad_out) {
  check_cpu_float(grad_out, "pit_softmax gradient");
  auto grad_x = paddle::empty_like(out);
  const int64_t cols = out.shape().back();
  const int64_t rows = rows_of(out);
  const float* y = out.data<float>();
  const float* dy = grad_out.data<float>();
  float* dx = grad_x.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * cols;
    const float* dyr = dy + r * cols;
    float* dxr = dx + r * cols;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < cols; ++c) dot += yr[c] * dyr[c];
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) dxr[c] = yr[c] * (dyr[c] - dot);
  }
  return {grad_x};
}

PD_BUILD_OP(pit_softmax)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(SoftmaxForward));

PD_BUILD_GRAD_OP(pit_softmax)
    .Inputs({"Out", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(SoftmaxBackward));

// ---------------------------------------------------------------- LayerNorm over the last axis

// y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps), var the biased variance; also returns
// mean and rstd per row for the backward.
std::vector<paddle::Tensor> LayerNormForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& bias, float epsilon) {
  check_cpu_float(x, "pit_layer_norm input");
  const int64_t cols = x.shape().back();
  const int64_t rows = rows_of(x);
  PD_CHECK(weight.numel() == cols && bias.numel() == cols, "pit_layer_norm weight/bias must have ", cols,
           " elements");
  auto out = paddle::empty_like(x);
  auto mean = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto rstd = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  float* y = out.data<float>();
  float* m = mean.data<float>();
  float* s = rstd.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = in + r * cols;
    float* o = y + r * cols;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < cols; ++c) sum += a[c];
    const float mu = sum / cols;
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < cols; ++c) sq += (a[c] - mu) * (a[c] - mu);
    const float inv = 1.f / std::sqrt(sq / cols + epsilon);
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) o[c] = (a[c] - mu) * inv * w[c] + b[c];
    m[r] = mu;
    s[r] = inv;
  }
  return {out, mean, rstd};
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight; dweight = sum(dy * xhat),
// dbias = sum(dy) over rows (sum_chunks).
std::vector<paddle::Tensor> LayerNormBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& mean, const paddle::Tensor& rstd,
                                              const paddle::Tensor& grad_out) {
  check_cpu_float(grad_out, "pit_layer_norm gradient");
  const int64_t cols = x.shape().back();
  const int64_t rows = rows_of(x);
  auto grad_x = paddle::empty_like(x);
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  const float* m = mean.data<float>();
  const float* s = rstd.data<float>();
  const float* dy = grad_out.data<float>();
  float* dx = grad_x.data<float>();
  std::vector<float> partial_w(kChunks * cols, 0.f), partial_b(kChunks * cols, 0.f);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < kChunks; ++k) {
    float* pw = partial_w.data() + k * cols;
    float* pb = partial_b.data() + k * cols;
    std::vector<float> g(cols), xhat(cols);
    for (int64_t r = chunk_begin(rows, k); r < chunk_begin(rows, k + 1); ++r) {
      const float* a = in + r * cols;
      const float* dyr = dy + r * cols;
      float* dxr = dx + r * cols;
      float sum_g = 0.f, sum_gx = 0.f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t c = 0; c < cols; ++c) {
        xhat[c] = (a[c] - m[r]) * s[r];
        g[c] = dyr[c] * w[c];
        sum_g += g[c];
        sum_gx += g[c] * xhat[c];
        pw[c] += dyr[c] * xhat[c];
        pb[c] += dyr[c];
      }
      const float mean_g = sum_g / cols, mean_gx = sum_gx / cols;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) dxr[c] = s[r] * (g[c] - mean_g - xhat[c] * mean_gx);
    }
  }
  return {grad_x, sum_chunks(partial_w, cols), sum_chunks(partial_b, cols)};
}

std::vector<std::vector<int64_t>> LayerNormInferShape(const std::vector<int64_t>& x_shape,
                                                      const std::vector<int64_t>& weight_shape,
                                                      const std::vector<int64_t>& bias_shape) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x_shape.size(); ++i) rows *= x_shape[i];
  return {x_shape, {rows}, {rows}};
}

std::vector<paddle::DataType> LayerNormInferDtype(const paddle::DataType& x_dtype, const paddle::DataType&,
                                                  const paddle::DataType&) {
  return {x_dtype, paddle::DataType::FLOAT32, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(pit_layer_norm)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out", "Mean", "Rstd"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(LayerNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LayerNormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LayerNormInferDtype));

PD_BUILD_GRAD_OP(pit_layer_norm)
    .Inputs({"X", "Weight", "Mean", "Rstd", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .SetKernelFn(PD_KERNEL(LayerNormBackward));

// ---------------------------------------------------------------- bias add over the last axis

std::vector<paddle::Tensor> BiasAddForward(const paddle::Tensor& x, const paddle::Tensor& bias) {
  check_cpu_float(x, "pit_bias_add input");
  const int64_t cols = x.shape().back();
  const int64_t rows = rows_of(x);
  PD_CHECK(bias.numel() == cols, "pit_bias_add bias must have ", cols, " elements");
  auto out = paddle::empty_like(x);
  const float* in = x.data<float>();
  const float* b = bias.data<float>();
  float* y = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = in[r * cols + c] + b[c];
  }
  return {out};
}

// dx = dy; dbias = sum of dy over rows (sum_chunks).
std::vector<paddle::Tensor> BiasAddBackward(const paddle::Tensor& grad_out) {
  const int64_t cols = grad_out.shape().back();
  const int64_t rows = rows_of(grad_out);
  const float* dy = grad_out.data<float>();
  std::vector<float> partial(kChunks * cols, 0.f);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < kChunks; ++k) {
    float* p = partial.data() + k * cols;
    for (int64_t r = chunk_begin(rows, k); r < chunk_begin(rows, k + 1); ++r) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) p[c] += dy[r * cols + c];
    }
  }
  return {grad_out, sum_chunks(partial, cols)};
}

std::vector<std::vector<int64_t>> BiasAddInferShape(const std::vector<int64_t>& x_shape,
                                                    const std::vector<int64_t>&) {
  return {x_shape};
}

PD_BUILD_OP(pit_bias_add)
    .Inputs({"X", "Bias"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(BiasAddForward))
    .SetInferShapeFn(PD_INFER_SHAPE(BiasAddInferShape));

PD_BUILD_GRAD_OP(pit_bias_add)
    .Inputs({paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Bias")})
    .SetKernelFn(PD_KERNEL(BiasAddBackward));

// ---------------------------------------------------------------- exact GELU

// y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); dy/dx = Phi(x) + x * phi(x).
std::vector<paddle::Tensor> GeluForward(const paddle::Tensor& x) {
  check_cpu_float(x, "pit_gelu input");
  auto out = paddle::empty_like(x);
  const int64_t n = x.numel();
  const float* in = x.data<float>();
  float* y = out.data<float>();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * in[i] * (1.f + std::erf(in[i] * 0.70710678118654752f));
  return {out};
}

std::vector<paddle::Tensor> GeluBackward(const paddle::Tensor& x, const paddle::Tensor& grad_out) {
  check_cpu_float(grad_out, "pit_gelu gradient");
  auto grad_x = paddle::empty_like(x);
  const int64_t n = x.numel();
  const float* in = x.data<float>();
  const float* dy = grad_out.data<float>();
  float* dx = grad_x.data<float>();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float cdf = 0.5f * (1.f + std::erf(in[i] * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * std::exp(-0.5f * in[i] * in[i]);
    dx[i] = dy[i] * (cdf + in[i] * pdf);
  }
  return {grad_x};
}

PD_BUILD_OP(pit_gelu)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(GeluForward));

PD_BUILD_GRAD_OP(pit_gelu)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(GeluBackward));
