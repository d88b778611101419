// Multi-threaded CPU kernels for the PiT ops whose Paddle CPU kernels run on one thread and dominate CPU time
// after the matmuls: a fused multi-head attention (forward and backward, no N x N matrix kept), softmax over
// the last axis, LayerNorm (whose backward is the slow part), the Linear bias add, exact GELU and the residual
// add. Same math as paddle.nn.functional's scaled_dot_product_attention / softmax / layer_norm / gelu / add;
// built on first use by cpu_kernels.py.
// OpenMP here is paddle's own libiomp5 (linked by cpu_kernels.py), so it shares MKL's thread pool and count.
#include <algorithm>
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

// b = softmax(a) over cols elements (a and b may be the same row); returns the row's log-sum-exp.
float softmax_row(const float* a, float* b, int64_t cols) {
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
  return row_max + std::log(sum);
}

// A new tensor shaped like `like` with element i = f(i), filled on all threads.
template <typename F>
paddle::Tensor map_elements(const paddle::Tensor& like, F f) {
  auto out = paddle::empty_like(like);
  float* y = out.data<float>();
  const int64_t n = like.numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = f(i);
  return out;
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
  for (int64_t r = 0; r < rows; ++r) softmax_row(in + r * cols, y + r * cols, cols);
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

// ---------------------------------------------------------------- residual add

std::vector<paddle::Tensor> AddForward(const paddle::Tensor& x, const paddle::Tensor& y) {
  check_cpu_float(x, "pit_add input");
  check_cpu_float(y, "pit_add input");
  PD_CHECK(x.shape() == y.shape(), "pit_add inputs must have the same shape");
  const float* a = x.data<float>();
  const float* b = y.data<float>();
  return {map_elements(x, [a, b](int64_t i) { return a[i] + b[i]; })};
}

// Both gradients are the output's, shared as paddle's own add shares them.
std::vector<paddle::Tensor> AddBackward(const paddle::Tensor& grad_out) { return {grad_out, grad_out}; }

PD_BUILD_OP(pit_add)
    .Inputs({"X", "Y"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(AddForward));

PD_BUILD_GRAD_OP(pit_add)
    .Inputs({paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Y")})
    .SetKernelFn(PD_KERNEL(AddBackward));

// ---------------------------------------------------------------- exact GELU

// y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); dy/dx = Phi(x) + x * phi(x).
constexpr float kSqrtHalf = 0.70710678118654752f;

std::vector<paddle::Tensor> GeluForward(const paddle::Tensor& x) {
  check_cpu_float(x, "pit_gelu input");
  const float* in = x.data<float>();
  return {map_elements(x, [in](int64_t i) { return 0.5f * in[i] * (1.f + std::erf(in[i] * kSqrtHalf)); })};
}

std::vector<paddle::Tensor> GeluBackward(const paddle::Tensor& x, const paddle::Tensor& grad_out) {
  check_cpu_float(grad_out, "pit_gelu gradient");
  const float* in = x.data<float>();
  const float* dy = grad_out.data<float>();
  return {map_elements(x, [in, dy](int64_t i) {
    const float cdf = 0.5f * (1.f + std::erf(in[i] * kSqrtHalf));
    const float pdf = 0.39894228040143268f * std::exp(-0.5f * in[i] * in[i]);
    return dy[i] * (cdf + in[i] * pdf);
  })};
}

PD_BUILD_OP(pit_gelu)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(GeluForward));

PD_BUILD_GRAD_OP(pit_gelu)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(GeluBackward));

// ---------------------------------------------------------------- fused multi-head self-attention

// softmax(scale * q k^T) v for every head, read straight from the qkv Linear's output [B, N, 3, heads, head_dim]
// and written as [B, N, heads, head_dim] = [B, N, C], so no transpose runs on either side. Each task is one
// block of kQueryRows queries of one (batch, head): its [rows, N] scores live in a per-thread buffer and are
// turned into probabilities in place (the whole row fits, so the softmax is exact in one pass: no running
// rescale of the output as in a key-tiled flash attention). No [N, N] matrix is kept: the forward saves the
// log-sum-exp of each row, from which the backward recomputes the probabilities.
// The gemms are MKL's cblas_sgemm (paddle's libmklml_intel, linked by cpu_kernels.py), one thread each: the
// parallelism is over tasks, which keeps each thread's operands in its own cache.

extern "C" {
void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc);
int MKL_Set_Num_Threads_Local(int num_threads);  // the C entry point (mkl_set_num_threads_local is Fortran's)
}

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
constexpr int64_t kQueryRows = 64;

// C = alpha * op(A) op(B) + beta * C, row-major, op(X) = X^T where trans_x.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, alpha, a, lda, b, ldb,
              beta, c, ldc);
}

// Shapes of one attention call: qkv [batch, tokens, 3 * width], width = heads * head_dim.
struct AttentionShape {
  int64_t batch, tokens, heads, head_dim, width;

  AttentionShape(const paddle::Tensor& qkv, int64_t num_heads) {
    PD_CHECK(qkv.shape().size() == 3 && qkv.shape()[2] % (3 * num_heads) == 0,
             "pit_attention input must be [B, N, 3 * heads * head_dim]");
    batch = qkv.shape()[0];
    tokens = qkv.shape()[1];
    heads = num_heads;
    width = qkv.shape()[2] / 3;
    head_dim = width / heads;
  }
  // Offset of token 0 of head h of batch b, part 0/1/2 (q/k/v) in qkv, or in a [B, N, width] tensor (part 0).
  int64_t qkv_offset(int64_t b, int64_t h, int64_t part) const {
    return b * tokens * 3 * width + part * width + h * head_dim;
  }
  int64_t out_offset(int64_t b, int64_t h) const { return b * tokens * width + h * head_dim; }
};

// MKL would start its own threads inside each gemm; here every OpenMP thread runs its gemms alone. Restores
// the thread's previous MKL setting when it ends.
struct SequentialGemms {
  int previous;
  SequentialGemms() : previous(MKL_Set_Num_Threads_Local(1)) {}
  ~SequentialGemms() { MKL_Set_Num_Threads_Local(previous); }
};

// p[r, :] = exp(p[r, :] - lse[r]) for rows r < rows of a [rows, cols] buffer.
void exp_shifted(float* p, const float* lse, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = p + r * cols;
    const float shift = lse[r];
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) row[c] = std::exp(row[c] - shift);
  }
}

}  // namespace

std::vector<paddle::Tensor> AttentionForward(const paddle::Tensor& qkv, int num_heads, float scale) {
  check_cpu_float(qkv, "pit_attention input");
  const AttentionShape s(qkv, num_heads);
  auto out = paddle::empty({s.batch, s.tokens, s.width}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto lse = paddle::empty({s.batch, s.heads, s.tokens}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* in = qkv.data<float>();
  float* o = out.data<float>();
  float* l = lse.data<float>();
  const int64_t blocks = (s.tokens + kQueryRows - 1) / kQueryRows;
  const int64_t ld = 3 * s.width, n = s.tokens;
#pragma omp parallel
  {
    SequentialGemms sequential;
    std::vector<float> scores(kQueryRows * n);
    float* p = scores.data();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < s.batch * s.heads * blocks; ++task) {
      const int64_t b = task / (s.heads * blocks), h = task / blocks % s.heads, first = task % blocks * kQueryRows;
      const int64_t rows = std::min(kQueryRows, n - first);
      const float* q = in + s.qkv_offset(b, h, 0) + first * ld;
      gemm(false, true, rows, n, s.head_dim, scale, q, ld, in + s.qkv_offset(b, h, 1), ld, 0.f, p, n);
      float* row_lse = l + (b * s.heads + h) * n + first;
      for (int64_t r = 0; r < rows; ++r) row_lse[r] = softmax_row(p + r * n, p + r * n, n);
      gemm(false, false, rows, s.head_dim, n, 1.f, p, n, in + s.qkv_offset(b, h, 2), ld, 0.f,
           o + s.out_offset(b, h) + first * s.width, s.width);
    }
  }
  return {out, lse};
}

// With P the probabilities (recomputed from lse), dO the output gradient and delta = rowsum(dO * O):
// dV = P^T dO, dP = dO V^T, dS = P * (dP - delta), dQ = scale * dS K, dK = scale * dS^T Q. One task per
// (batch, head), which owns its slices of dK and dV and adds every query block's part to them in order.
std::vector<paddle::Tensor> AttentionBackward(const paddle::Tensor& qkv, const paddle::Tensor& out,
                                              const paddle::Tensor& lse, const paddle::Tensor& grad_out,
                                              int num_heads, float scale) {
  check_cpu_float(grad_out, "pit_attention gradient");
  const AttentionShape s(qkv, num_heads);
  auto grad_qkv = paddle::empty_like(qkv);
  const float* in = qkv.data<float>();
  const float* o = out.data<float>();
  const float* l = lse.data<float>();
  const float* dout = grad_out.data<float>();
  float* dqkv = grad_qkv.data<float>();
  const int64_t ld = 3 * s.width, n = s.tokens, d = s.head_dim;
#pragma omp parallel
  {
    SequentialGemms sequential;
    std::vector<float> probs(kQueryRows * n), grads(kQueryRows * n), delta(kQueryRows);
    float* p = probs.data();
    float* dp = grads.data();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < s.batch * s.heads; ++task) {
      const int64_t b = task / s.heads, h = task % s.heads;
      const float* k = in + s.qkv_offset(b, h, 1);
      const float* v = in + s.qkv_offset(b, h, 2);
      float* dk = dqkv + s.qkv_offset(b, h, 1);
      float* dv = dqkv + s.qkv_offset(b, h, 2);
      for (int64_t first = 0; first < n; first += kQueryRows) {
        const int64_t rows = std::min(kQueryRows, n - first);
        const float* q = in + s.qkv_offset(b, h, 0) + first * ld;
        const float* dor = dout + s.out_offset(b, h) + first * s.width;
        const float* orow = o + s.out_offset(b, h) + first * s.width;
        const float beta = first == 0 ? 0.f : 1.f;  // the first block writes dK and dV, the others add to them
        gemm(false, true, rows, n, d, scale, q, ld, k, ld, 0.f, p, n);
        exp_shifted(p, l + (b * s.heads + h) * n + first, rows, n);
        gemm(true, false, n, d, rows, 1.f, p, n, dor, s.width, beta, dv, ld);
        gemm(false, true, rows, n, d, 1.f, dor, s.width, v, ld, 0.f, dp, n);
        for (int64_t r = 0; r < rows; ++r) {
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t c = 0; c < d; ++c) dot += dor[r * s.width + c] * orow[r * s.width + c];
          delta[r] = dot;
        }
        for (int64_t r = 0; r < rows; ++r) {
          float* pr = p + r * n;
          const float* dpr = dp + r * n;
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) pr[c] *= dpr[c] - delta[r];
        }
        gemm(false, false, rows, d, n, scale, p, n, k, ld, 0.f, dqkv + s.qkv_offset(b, h, 0) + first * ld, ld);
        gemm(true, false, n, d, rows, scale, p, n, q, ld, beta, dk, ld);
      }
    }
  }
  return {grad_qkv};
}

std::vector<std::vector<int64_t>> AttentionInferShape(const std::vector<int64_t>& qkv_shape, const int& num_heads,
                                                      const float&) {
  return {{qkv_shape[0], qkv_shape[1], qkv_shape[2] / 3}, {qkv_shape[0], num_heads, qkv_shape[1]}};
}

std::vector<paddle::DataType> AttentionInferDtype(const paddle::DataType& qkv_dtype) {
  return {qkv_dtype, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(pit_attention)
    .Inputs({"QKV"})
    .Outputs({"Out", "LSE"})
    .Attrs({"num_heads: int", "scale: float"})
    .SetKernelFn(PD_KERNEL(AttentionForward))
    .SetInferShapeFn(PD_INFER_SHAPE(AttentionInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(AttentionInferDtype));

PD_BUILD_GRAD_OP(pit_attention)
    .Inputs({"QKV", "Out", "LSE", paddle::Grad("Out")})
    .Outputs({paddle::Grad("QKV")})
    .Attrs({"num_heads: int", "scale: float"})
    .SetKernelFn(PD_KERNEL(AttentionBackward));
