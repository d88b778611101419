// Multi-threaded CPU kernels for the PiT ops whose Paddle CPU kernels run on one thread and dominate CPU time
// after the matmuls: a fused multi-head attention (forward and backward, no N x N matrix kept), softmax over
// the last axis, LayerNorm (whose backward is the slow part), the Linear (bias and its gradient), fc1's bias
// add with exact GELU, the residual add (with a drop path's per-sample scale), the token/map transposes, the
// patch-embedding and depthwise pooling convolutions, and one AdamP or AdamW step per parameter. Same math as
// paddle.nn.functional's scaled_dot_product_attention / softmax / layer_norm / linear / gelu / conv2d and
// optim.AdamP / paddle.optimizer.AdamW; built on first use by cpu_kernels.py.
// OpenMP here is paddle's own libiomp5 (linked by cpu_kernels.py), so it shares MKL's thread pool and count.
#include <algorithm>
#include <cmath>
#include <omp.h>
#include <string>
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

// ---------------------------------------------------------------- shape functions

std::vector<std::vector<int64_t>> SameShapeAsFirst(const std::vector<int64_t>& x_shape, const std::vector<int64_t>&) {
  return {x_shape};
}

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

// ---------------------------------------------------------------- residual add of a drop-path branch

// out = x + y * scale[b] for sample b (scale [B]: 0 for a dropped sample, 1 / keep_prob for a kept one), the
// residual add and the drop path's multiply in one pass. dX = dOut, dY = dOut * scale[b]; the scale (a random
// draw) takes no gradient.
namespace {

// out[b, i] = (a ? a[b, i] : 0) + y[b, i] * scale[b] over [samples, per_sample] rows.
void scaled_rows(const float* a, const float* y, const float* scale, float* out, int64_t samples,
                 int64_t per_sample) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < samples; ++b) {
    const float k = scale[b];
    const int64_t first = b * per_sample;
    if (a) {
#pragma omp simd
      for (int64_t i = first; i < first + per_sample; ++i) out[i] = a[i] + y[i] * k;
    } else {
#pragma omp simd
      for (int64_t i = first; i < first + per_sample; ++i) out[i] = y[i] * k;
    }
  }
}

}  // namespace

std::vector<paddle::Tensor> AddScaledForward(const paddle::Tensor& x, const paddle::Tensor& y,
                                             const paddle::Tensor& scale) {
  check_cpu_float(x, "pit_add_scaled input");
  check_cpu_float(y, "pit_add_scaled input");
  check_cpu_float(scale, "pit_add_scaled scale");
  PD_CHECK(x.shape() == y.shape(), "pit_add_scaled inputs must have the same shape");
  PD_CHECK(scale.numel() == x.shape()[0], "pit_add_scaled scale must have one value per sample");
  auto out = paddle::empty_like(x);
  scaled_rows(x.data<float>(), y.data<float>(), scale.data<float>(), out.data<float>(), x.shape()[0],
              x.numel() / std::max<int64_t>(x.shape()[0], 1));
  return {out};
}

std::vector<paddle::Tensor> AddScaledBackward(const paddle::Tensor& scale, const paddle::Tensor& grad_out) {
  auto grad_y = paddle::empty_like(grad_out);
  scaled_rows(nullptr, grad_out.data<float>(), scale.data<float>(), grad_y.data<float>(), grad_out.shape()[0],
              grad_out.numel() / std::max<int64_t>(grad_out.shape()[0], 1));
  return {grad_out, grad_y};
}

PD_BUILD_OP(pit_add_scaled)
    .Inputs({"X", "Y", "Scale"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(AddScaledForward));

PD_BUILD_GRAD_OP(pit_add_scaled)
    .Inputs({"Scale", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Y")})
    .SetKernelFn(PD_KERNEL(AddScaledBackward));

// ---------------------------------------------------------------- fc1's bias add and exact GELU

// gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); gelu'(x) = Phi(x) + x * phi(x).
constexpr float kSqrtHalf = 0.70710678118654752f;

// GELU of a Linear's output plus its bias, y = gelu(h + bias) (the MLP's fc1 and activation): one pass instead of
// the bias add's and GELU's, in both directions. The backward recomputes h + bias and sums the bias gradient
// per chunk of rows (sum_chunks), as LinearBackward does.
std::vector<paddle::Tensor> BiasGeluForward(const paddle::Tensor& h, const paddle::Tensor& bias) {
  check_cpu_float(h, "pit_bias_gelu input");
  check_cpu_float(bias, "pit_bias_gelu bias");
  const int64_t cols = h.shape().back();
  const int64_t rows = rows_of(h);
  PD_CHECK(bias.numel() == cols, "pit_bias_gelu bias must have ", cols, " elements");
  auto out = paddle::empty_like(h);
  const float* in = h.data<float>();
  const float* b = bias.data<float>();
  float* y = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const float x = in[r * cols + c] + b[c];
      y[r * cols + c] = 0.5f * x * (1.f + std::erf(x * kSqrtHalf));
    }
  }
  return {out};
}

std::vector<paddle::Tensor> BiasGeluBackward(const paddle::Tensor& h, const paddle::Tensor& bias,
                                             const paddle::Tensor& grad_out) {
  check_cpu_float(grad_out, "pit_bias_gelu gradient");
  const int64_t cols = h.shape().back();
  const int64_t rows = rows_of(h);
  auto grad_h = paddle::empty_like(h);
  const float* in = h.data<float>();
  const float* b = bias.data<float>();
  const float* dy = grad_out.data<float>();
  float* dh = grad_h.data<float>();
  std::vector<float> partial(kChunks * cols, 0.f);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < kChunks; ++k) {
    float* p = partial.data() + k * cols;
    for (int64_t r = chunk_begin(rows, k); r < chunk_begin(rows, k + 1); ++r) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) {
        const float x = in[r * cols + c] + b[c];
        const float cdf = 0.5f * (1.f + std::erf(x * kSqrtHalf));
        const float pdf = 0.39894228040143268f * std::exp(-0.5f * x * x);
        const float d = dy[r * cols + c] * (cdf + x * pdf);
        dh[r * cols + c] = d;
        p[c] += d;
      }
    }
  }
  return {grad_h, sum_chunks(partial, cols)};
}

PD_BUILD_OP(pit_bias_gelu)
    .Inputs({"H", "Bias"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(BiasGeluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShapeAsFirst));

PD_BUILD_GRAD_OP(pit_bias_gelu)
    .Inputs({"H", "Bias", paddle::Grad("Out")})
    .Outputs({paddle::Grad("H"), paddle::Grad("Bias")})
    .SetKernelFn(PD_KERNEL(BiasGeluBackward));

// ---------------------------------------------------------------- fused multi-head self-attention

// softmax(scale * q k^T) v for every head, read straight from the qkv Linear's output [B, N, 3, heads, head_dim]
// and written as [B, N, heads, head_dim] = [B, N, C], so no transpose runs on either side. Each task is one
// block of kQueryRows queries of one (batch, head): its [rows, N] scores live in a per-thread buffer and are
// exponentiated in place (the whole row fits, so the softmax is exact in one pass: no running rescale of the
// output as in a key-tiled flash attention); the output rows, not the probabilities, are divided by the sums.
// No [N, N] matrix is kept: the forward saves the log-sum-exp of each row, from which the backward recomputes the
// probabilities.
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

// row = exp(row - max(row)) in place, the unnormalised probabilities; *inv_sum = 1 / their sum. Returns the
// row's log-sum-exp.
float exp_row(float* row, int64_t cols, float* inv_sum) {
  float row_max = row[0];
  for (int64_t c = 1; c < cols; ++c) row_max = std::fmax(row_max, row[c]);
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < cols; ++c) {
    row[c] = std::exp(row[c] - row_max);
    sum += row[c];
  }
  *inv_sum = 1.f / sum;
  return row_max + std::log(sum);
}

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
    std::vector<float> scores(kQueryRows * n), inv_sum(kQueryRows);
    float* p = scores.data();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < s.batch * s.heads * blocks; ++task) {
      const int64_t b = task / (s.heads * blocks), h = task / blocks % s.heads, first = task % blocks * kQueryRows;
      const int64_t rows = std::min(kQueryRows, n - first);
      const float* q = in + s.qkv_offset(b, h, 0) + first * ld;
      gemm(false, true, rows, n, s.head_dim, scale, q, ld, in + s.qkv_offset(b, h, 1), ld, 0.f, p, n);
      float* row_lse = l + (b * s.heads + h) * n + first;
      for (int64_t r = 0; r < rows; ++r) row_lse[r] = exp_row(p + r * n, n, &inv_sum[r]);
      float* orow = o + s.out_offset(b, h) + first * s.width;
      gemm(false, false, rows, s.head_dim, n, 1.f, p, n, in + s.qkv_offset(b, h, 2), ld, 0.f, orow, s.width);
      for (int64_t r = 0; r < rows; ++r) {  // normalise the head_dim outputs, not the N probabilities
#pragma omp simd
        for (int64_t c = 0; c < s.head_dim; ++c) orow[r * s.width + c] *= inv_sum[r];
      }
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

// ---------------------------------------------------------------- convolutions: patch embedding and pooling

// Paddle's CPU conv2d runs its im2col on one thread and its depthwise conv2d on one thread, forward and
// backward: about 100 ms of a pit_ti training step at batch 32. Both are NCHW, with a bias, dilation 1.

namespace {

// The sizes of a conv, checked so that no kernel reads outside its tensors: a (padded) input at least one kernel
// wide on both axes (C++ division truncates toward zero, so a smaller one would give an output row of 1 whose
// taps run past the input), and, for a backward, an output gradient of exactly the output's shape.
struct ConvShape {
  int64_t batch, in_channels, height, width, out_channels, kernel, stride, padding, out_h, out_w;

  ConvShape(const paddle::Tensor& x, const paddle::Tensor& weight, int64_t stride_, int64_t padding_,
            const char* op) {
    PD_CHECK(x.shape().size() == 4 && weight.shape().size() == 4, op, " input and weight must be 4-D (NCHW)");
    batch = x.shape()[0];
    in_channels = x.shape()[1];
    height = x.shape()[2];
    width = x.shape()[3];
    out_channels = weight.shape()[0];
    kernel = weight.shape()[2];
    stride = stride_;
    padding = padding_;
    PD_CHECK(weight.shape()[3] == kernel && kernel > 0, op, " kernel must be square and not empty");
    PD_CHECK(stride > 0 && padding >= 0, op, " stride must be > 0 and padding >= 0, got ", stride, " and ", padding);
    PD_CHECK(height + 2 * padding >= kernel && width + 2 * padding >= kernel, op, " input of ", height, "x", width,
             " pixels (padding ", padding, ") is smaller than its ", kernel, "x", kernel, " kernel");
    out_h = (height + 2 * padding - kernel) / stride + 1;
    out_w = (width + 2 * padding - kernel) / stride + 1;
  }
  int64_t in_plane() const { return height * width; }
  int64_t out_plane() const { return out_h * out_w; }
  void check_grad(const paddle::Tensor& grad_out, const char* op) const {
    PD_CHECK(grad_out.shape() == std::vector<int64_t>({batch, out_channels, out_h, out_w}), op,
             " gradient must have the output's shape [", batch, ", ", out_channels, ", ", out_h, ", ", out_w, "]");
  }
};

// A dense conv of a patch embedding (padding 0): the weight [out_channels, in_channels, k, k].
struct PatchShape : ConvShape {
  PatchShape(const paddle::Tensor& x, const paddle::Tensor& weight, int64_t stride)
      : ConvShape(x, weight, stride, 0, "pit_patch_conv") {
    PD_CHECK(weight.shape()[1] == in_channels, "pit_patch_conv weight must be [out, ", in_channels, ", k, k]");
  }
};

// cols [in_channels * kernel^2, out_h * out_w] of one image (padding 0): row (c, ki, kj), column (i, j) holds
// x[c, i * stride + ki, j * stride + kj]. Rows [row_begin, row_end).
void im2col(const ConvShape& s, const float* x, float* cols, int64_t row_begin, int64_t row_end) {
  const int64_t k2 = s.kernel * s.kernel, plane = s.out_plane();
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t c = row / k2, ki = row % k2 / s.kernel, kj = row % s.kernel;
    float* dst = cols + row * plane;
    for (int64_t i = 0; i < s.out_h; ++i) {
      const float* src = x + (c * s.height + i * s.stride + ki) * s.width + kj;
      for (int64_t j = 0; j < s.out_w; ++j) dst[i * s.out_w + j] = src[j * s.stride];
    }
  }
}

// out [out_channels, plane] of one image = weight [out_channels, K] cols [K, plane] + bias.
void conv_gemm(const ConvShape& s, const float* weight, const float* bias, const float* cols, float* out) {
  const int64_t plane = s.out_plane(), depth = s.in_channels * s.kernel * s.kernel;
  for (int64_t o = 0; o < s.out_channels; ++o) std::fill(out + o * plane, out + (o + 1) * plane, bias[o]);
  gemm(false, false, s.out_channels, plane, depth, 1.f, weight, depth, cols, plane, 1.f, out, plane);
}

// Images [image_begin(k), image_begin(k + 1)) of chunk k of kConvChunks; weight and bias gradients are summed
// per chunk, then over chunks in order (independent of the thread count).
constexpr int64_t kConvChunks = 8;

}  // namespace

// Dense conv, padding 0 (the patch embedding), on all threads: per image an im2col into a per-thread buffer and
// one MKL gemm. Its input is the images, which need no gradient: the backward gives the weight and bias
// gradients only (cpu_kernels.py uses this op only for inputs that do not require a gradient), recomputing
// each image's columns instead of keeping them.
std::vector<paddle::Tensor> PatchConvForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& bias, int stride) {
  check_cpu_float(x, "pit_patch_conv input");
  check_cpu_float(weight, "pit_patch_conv weight");
  check_cpu_float(bias, "pit_patch_conv bias");
  const PatchShape s(x, weight, stride);
  PD_CHECK(bias.numel() == s.out_channels, "pit_patch_conv bias must be [out]");
  auto out = paddle::empty({s.batch, s.out_channels, s.out_h, s.out_w}, paddle::DataType::FLOAT32,
                           paddle::CPUPlace());
  const int64_t depth = s.in_channels * s.kernel * s.kernel, plane = s.out_plane();
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  float* y = out.data<float>();
  if (s.batch >= omp_get_max_threads()) {  // one image per task, each thread's gemms on that thread
#pragma omp parallel
    {
      SequentialGemms sequential;
      std::vector<float> cols(depth * plane);
#pragma omp for schedule(static)
      for (int64_t image = 0; image < s.batch; ++image) {
        im2col(s, in + image * s.in_channels * s.in_plane(), cols.data(), 0, depth);
        conv_gemm(s, w, b, cols.data(), y + image * s.out_channels * plane);
      }
    }
  } else {  // fewer images than threads (batch-1 latency): the columns on all threads, then MKL's threaded gemm
    std::vector<float> cols(depth * plane);
    for (int64_t image = 0; image < s.batch; ++image) {
#pragma omp parallel for schedule(static)
      for (int64_t row = 0; row < depth; ++row)
        im2col(s, in + image * s.in_channels * s.in_plane(), cols.data(), row, row + 1);
      conv_gemm(s, w, b, cols.data(), y + image * s.out_channels * plane);
    }
  }
  return {out};
}

std::vector<paddle::Tensor> PatchConvBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& grad_out, int stride) {
  check_cpu_float(grad_out, "pit_patch_conv gradient");
  const PatchShape s(x, weight, stride);
  s.check_grad(grad_out, "pit_patch_conv");
  const int64_t depth = s.in_channels * s.kernel * s.kernel, plane = s.out_plane();
  const int64_t chunks = std::min(kConvChunks, s.batch);
  std::vector<float> grad_w(chunks * s.out_channels * depth, 0.f), grad_b(chunks * s.out_channels, 0.f);
  const float* in = x.data<float>();
  const float* g = grad_out.data<float>();
#pragma omp parallel
  {
    SequentialGemms sequential;
    std::vector<float> cols(depth * plane);
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      float* gw = grad_w.data() + chunk * s.out_channels * depth;
      float* gb = grad_b.data() + chunk * s.out_channels;
      for (int64_t image = s.batch * chunk / chunks; image < s.batch * (chunk + 1) / chunks; ++image) {
        const float* gi = g + image * s.out_channels * plane;
        im2col(s, in + image * s.in_channels * s.in_plane(), cols.data(), 0, depth);
        gemm(false, true, s.out_channels, depth, plane, 1.f, gi, plane, cols.data(), plane, 1.f, gw, depth);
        for (int64_t o = 0; o < s.out_channels; ++o) {
          float sum = 0.f;
#pragma omp simd reduction(+ : sum)
          for (int64_t l = 0; l < plane; ++l) sum += gi[o * plane + l];
          gb[o] += sum;
        }
      }
    }
  }
  auto dweight = paddle::empty_like(weight);
  auto dbias = paddle::empty({s.out_channels}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* dw = dweight.data<float>();
  float* db = dbias.data<float>();
  const int64_t wsize = s.out_channels * depth;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < wsize; ++i) {
    float sum = 0.f;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += grad_w[chunk * wsize + i];
    dw[i] = sum;
  }
  for (int64_t o = 0; o < s.out_channels; ++o) {
    float sum = 0.f;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += grad_b[chunk * s.out_channels + o];
    db[o] = sum;
  }
  return {dweight, dbias};
}

std::vector<std::vector<int64_t>> PatchConvInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                      const std::vector<int64_t>&, const int& stride) {
  return {{x[0], w[0], (x[2] - w[2]) / stride + 1, (x[3] - w[3]) / stride + 1}};
}

PD_BUILD_OP(pit_patch_conv)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"stride: int"})
    .SetKernelFn(PD_KERNEL(PatchConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(PatchConvInferShape));

PD_BUILD_GRAD_OP(pit_patch_conv)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"stride: int"})
    .SetKernelFn(PD_KERNEL(PatchConvBackward));

// Depthwise conv (groups = in_channels, out_channels = multiplier * in_channels; output channel o reads input
// channel o / multiplier), any kernel, stride and padding: the pooling between PiT's stages (k 3, s 2, p 1).
// Forward: one task per (image, output channel). Backward: the input gradient one task per (image, input
// channel), which owns its plane; the weight and bias gradients one task per output channel, over the images
// in order.

namespace {

struct DepthwiseShape : ConvShape {
  int64_t multiplier;

  DepthwiseShape(const paddle::Tensor& x, const paddle::Tensor& weight, int64_t stride, int64_t padding)
      : ConvShape(x, weight, stride, padding, "pit_depthwise_conv") {
    PD_CHECK(weight.shape()[1] == 1 && in_channels > 0 && out_channels % in_channels == 0,
             "pit_depthwise_conv weight must be [multiplier * in_channels, 1, k, k]");
    multiplier = out_channels / in_channels;
  }
  // Kernel taps [first, last) that land inside the input for output index i along an axis of `size` pixels.
  void taps(int64_t i, int64_t size, int64_t* first, int64_t* last) const {
    const int64_t start = i * stride - padding;
    *first = std::max<int64_t>(0, -start);
    *last = std::min<int64_t>(kernel, size - start);
  }
};

}  // namespace

std::vector<paddle::Tensor> DepthwiseConvForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                 const paddle::Tensor& bias, int stride, int padding) {
  check_cpu_float(x, "pit_depthwise_conv input");
  check_cpu_float(weight, "pit_depthwise_conv weight");
  check_cpu_float(bias, "pit_depthwise_conv bias");
  const DepthwiseShape s(x, weight, stride, padding);
  PD_CHECK(bias.numel() == s.out_channels, "pit_depthwise_conv bias must be [out_channels]");
  auto out = paddle::empty({s.batch, s.out_channels, s.out_h, s.out_w}, paddle::DataType::FLOAT32,
                           paddle::CPUPlace());
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  float* y = out.data<float>();
  const int64_t k = s.kernel;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < s.batch * s.out_channels; ++task) {
    const int64_t image = task / s.out_channels, o = task % s.out_channels;
    const float* plane = in + (image * s.in_channels + o / s.multiplier) * s.in_plane();
    const float* wo = w + o * k * k;
    float* yo = y + task * s.out_plane();
    for (int64_t i = 0; i < s.out_h; ++i) {
      int64_t ki0, ki1;
      s.taps(i, s.height, &ki0, &ki1);
      for (int64_t j = 0; j < s.out_w; ++j) {
        int64_t kj0, kj1;
        s.taps(j, s.width, &kj0, &kj1);
        const int64_t col = j * s.stride - s.padding;
        float acc = b[o];
        for (int64_t ki = ki0; ki < ki1; ++ki) {
          const float* row = plane + (i * s.stride - s.padding + ki) * s.width;
          for (int64_t kj = kj0; kj < kj1; ++kj) acc += row[col + kj] * wo[ki * k + kj];
        }
        yo[i * s.out_w + j] = acc;
      }
    }
  }
  return {out};
}

std::vector<paddle::Tensor> DepthwiseConvBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                  const paddle::Tensor& grad_out, int stride, int padding) {
  check_cpu_float(grad_out, "pit_depthwise_conv gradient");
  const DepthwiseShape s(x, weight, stride, padding);
  s.check_grad(grad_out, "pit_depthwise_conv");
  auto dx = paddle::empty_like(x);
  auto dweight = paddle::empty_like(weight);
  auto dbias = paddle::empty({s.out_channels}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  const float* g = grad_out.data<float>();
  float* gx = dx.data<float>();
  float* gw = dweight.data<float>();
  float* gb = dbias.data<float>();
  const int64_t k = s.kernel;
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
    for (int64_t task = 0; task < s.batch * s.in_channels; ++task) {
      const int64_t image = task / s.in_channels, c = task % s.in_channels;
      float* plane = gx + task * s.in_plane();
      std::fill(plane, plane + s.in_plane(), 0.f);
      for (int64_t o = c * s.multiplier; o < (c + 1) * s.multiplier; ++o) {
        const float* go = g + (image * s.out_channels + o) * s.out_plane();
        const float* wo = w + o * k * k;
        for (int64_t i = 0; i < s.out_h; ++i) {
          int64_t ki0, ki1;
          s.taps(i, s.height, &ki0, &ki1);
          for (int64_t j = 0; j < s.out_w; ++j) {
            int64_t kj0, kj1;
            s.taps(j, s.width, &kj0, &kj1);
            const int64_t col = j * s.stride - s.padding;
            const float d = go[i * s.out_w + j];
            for (int64_t ki = ki0; ki < ki1; ++ki) {
              float* row = plane + (i * s.stride - s.padding + ki) * s.width;
              for (int64_t kj = kj0; kj < kj1; ++kj) row[col + kj] += d * wo[ki * k + kj];
            }
          }
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t o = 0; o < s.out_channels; ++o) {
      std::vector<float> acc(k * k, 0.f);
      float bias_sum = 0.f;
      for (int64_t image = 0; image < s.batch; ++image) {
        const float* plane = in + (image * s.in_channels + o / s.multiplier) * s.in_plane();
        const float* go = g + (image * s.out_channels + o) * s.out_plane();
        for (int64_t i = 0; i < s.out_h; ++i) {
          int64_t ki0, ki1;
          s.taps(i, s.height, &ki0, &ki1);
          for (int64_t j = 0; j < s.out_w; ++j) {
            int64_t kj0, kj1;
            s.taps(j, s.width, &kj0, &kj1);
            const int64_t col = j * s.stride - s.padding;
            const float d = go[i * s.out_w + j];
            bias_sum += d;
            for (int64_t ki = ki0; ki < ki1; ++ki) {
              const float* row = plane + (i * s.stride - s.padding + ki) * s.width;
              for (int64_t kj = kj0; kj < kj1; ++kj) acc[ki * k + kj] += d * row[col + kj];
            }
          }
        }
      }
      std::copy(acc.begin(), acc.end(), gw + o * k * k);
      gb[o] = bias_sum;
    }
  }
  return {dx, dweight, dbias};
}

std::vector<std::vector<int64_t>> DepthwiseConvInferShape(const std::vector<int64_t>& x,
                                                          const std::vector<int64_t>& w,
                                                          const std::vector<int64_t>&, const int& stride,
                                                          const int& padding) {
  return {{x[0], w[0], (x[2] + 2 * padding - w[2]) / stride + 1, (x[3] + 2 * padding - w[3]) / stride + 1}};
}

PD_BUILD_OP(pit_depthwise_conv)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(DepthwiseConvInferShape));

PD_BUILD_GRAD_OP(pit_depthwise_conv)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvBackward));

// ---------------------------------------------------------------- AdamP step

namespace {

// The tensors of one Adam-family step of one parameter, checked, as the pointers the step writes in place.
struct AdamTensors {
  int64_t n;
  float *w, *m, *v, *beta1_pow, *beta2_pow;
  const float* g;

  AdamTensors(paddle::Tensor& param, paddle::Tensor& moment1, paddle::Tensor& moment2, paddle::Tensor& b1p,
              paddle::Tensor& b2p, const paddle::Tensor& grad, const char* op) {
    check_cpu_float(param, (std::string(op) + " parameter").c_str());
    check_cpu_float(grad, (std::string(op) + " gradient").c_str());
    PD_CHECK(grad.numel() == param.numel() && moment1.numel() == param.numel() && moment2.numel() == param.numel(),
             op, " moments and gradient must be shaped like the parameter");
    n = param.numel();
    w = param.data<float>();
    m = moment1.data<float>();
    v = moment2.data<float>();
    beta1_pow = b1p.data<float>();
    beta2_pow = b2p.data<float>();
    g = grad.data<float>();
  }
};

}  // namespace

// One AdamP step of one parameter, in place (optim.AdamP holds the formulas and the Python twin this equals
// to float rounding): Adam moments and bias corrections give perturb; for a parameter with channel_axis >= 0
// (0: rows of [out, ...]; 1: columns of a [in, out] Linear weight), the scale-invariance test of the channel,
// then the layer view, may remove perturb's radial part and scale the weight decay by wd_ratio; then
// w <- w * (1 - lr * weight_decay * ratio) - lr / (1 - beta1^t) * perturb. Paddle's Python form takes about
// 20 ops per parameter, each on one thread: 0.1 s of a pit_ti step, 0.4 s of a pit_s step at batch 32.
void AdamPStep(paddle::Tensor& param, paddle::Tensor& moment1, paddle::Tensor& moment2, paddle::Tensor& beta1_pow,
               paddle::Tensor& beta2_pow, const paddle::Tensor& grad, float lr, float beta1, float beta2,
               float epsilon, float weight_decay, float delta, float wd_ratio, bool nesterov, int channel_axis) {
  const AdamTensors t(param, moment1, moment2, beta1_pow, beta2_pow, grad, "pit_adamp");
  const int64_t n = t.n;
  float *w = t.w, *m = t.m, *v = t.v, *b1p = t.beta1_pow, *b2p = t.beta2_pow;
  const float* g = t.g;
  b1p[0] *= beta1;
  b2p[0] *= beta2;
  const float inv_bc2 = 1.f / std::sqrt(1.f - b2p[0]);
  const float step_size = lr / (1.f - b1p[0]);
  std::vector<float> perturb(n);
  float* p = perturb.data();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    m[i] += (1.f - beta1) * (g[i] - m[i]);
    v[i] += (1.f - beta2) * (g[i] * g[i] - v[i]);
    const float momentum = nesterov ? m[i] + (1.f - beta1) * (g[i] - m[i]) : m[i];
    p[i] = momentum / (std::sqrt(v[i]) * inv_bc2 + epsilon);
  }
  // Per channel: sums of g*w, g*g, w*w, w*perturb (double); coef[c] is the radial part's coefficient.
  const bool project = channel_axis >= 0 && param.shape().size() > 1;
  const int64_t channels = !project ? 1 : channel_axis == 0 ? param.shape()[0] : param.shape().back();
  const int64_t row_length = n / channels;
  std::vector<float> coef(channels, 0.f);
  float ratio = 1.f;
  if (project) {
    std::vector<double> sums(4 * channels, 0.0);
    if (channel_axis == 0) {  // channel c: the contiguous row [c * row_length, (c + 1) * row_length)
#pragma omp parallel for schedule(static)
      for (int64_t c = 0; c < channels; ++c) {
        double gw = 0, gg = 0, ww = 0, wp = 0;
        for (int64_t i = c * row_length; i < (c + 1) * row_length; ++i) {
          gw += g[i] * w[i]; gg += g[i] * g[i]; ww += w[i] * w[i]; wp += w[i] * p[i];
        }
        sums[4 * c] = gw; sums[4 * c + 1] = gg; sums[4 * c + 2] = ww; sums[4 * c + 3] = wp;
      }
    } else {  // channel c: column c of [row_length, channels]; per chunk of rows, then the chunks in order
      std::vector<double> partial(kChunks * 4 * channels, 0.0);
#pragma omp parallel for schedule(static)
      for (int64_t k = 0; k < kChunks; ++k) {
        double* s = partial.data() + k * 4 * channels;
        for (int64_t r = chunk_begin(row_length, k); r < chunk_begin(row_length, k + 1); ++r)
          for (int64_t c = 0; c < channels; ++c) {
            const int64_t i = r * channels + c;
            s[4 * c] += g[i] * w[i]; s[4 * c + 1] += g[i] * g[i]; s[4 * c + 2] += w[i] * w[i];
            s[4 * c + 3] += w[i] * p[i];
          }
      }
      for (int64_t k = 0; k < kChunks; ++k)
        for (int64_t j = 0; j < 4 * channels; ++j) sums[j] += partial[k * 4 * channels + j];
    }
    // max over rows of |cos(g, w)| (each norm clamped to >= eps) below delta / sqrt(row length)
    auto view_passes = [epsilon, delta](const double* s, int64_t rows, int64_t length) {
      double worst = 0;
      for (int64_t c = 0; c < rows; ++c) {
        const double cosine = std::fabs(s[4 * c]) / (std::fmax(std::sqrt(s[4 * c + 1]), epsilon) *
                                                     std::fmax(std::sqrt(s[4 * c + 2]), epsilon));
        worst = std::fmax(worst, cosine);
      }
      return worst < delta / std::sqrt(static_cast<double>(length));
    };
    std::vector<double> total(4, 0.0);
    for (int64_t c = 0; c < channels; ++c)
      for (int j = 0; j < 4; ++j) total[j] += sums[4 * c + j];
    if (view_passes(sums.data(), channels, row_length)) {
      for (int64_t c = 0; c < channels; ++c) {
        const double norm = std::sqrt(sums[4 * c + 2]) + epsilon;
        coef[c] = static_cast<float>(sums[4 * c + 3] / (norm * norm));
      }
      ratio = wd_ratio;
    } else if (view_passes(total.data(), 1, n)) {
      const double norm = std::sqrt(total[2]) + epsilon;
      std::fill(coef.begin(), coef.end(), static_cast<float>(total[3] / (norm * norm)));
      ratio = wd_ratio;
    }
  }
  const float decay = 1.f - lr * weight_decay * ratio;
  const float* k = coef.data();
  const int64_t inner = channel_axis == 0 ? row_length : 1;  // i -> channel: i / inner (axis 0), i % channels
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = !project ? 0 : channel_axis == 0 ? i / inner : i % channels;
    w[i] = w[i] * decay - step_size * (p[i] - w[i] * k[c]);
  }
}

PD_BUILD_OP(pit_adamp)
    .Inputs({"Param", "Moment1", "Moment2", "Beta1Pow", "Beta2Pow", "Grad"})
    .Outputs({"ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut"})
    .SetInplaceMap({{"Param", "ParamOut"}, {"Moment1", "Moment1Out"}, {"Moment2", "Moment2Out"},
                    {"Beta1Pow", "Beta1PowOut"}, {"Beta2Pow", "Beta2PowOut"}})
    .Attrs({"lr: float", "beta1: float", "beta2: float", "epsilon: float", "weight_decay: float", "delta: float",
            "wd_ratio: float", "nesterov: bool", "channel_axis: int"})
    .SetKernelFn(PD_KERNEL(AdamPStep));

// ---------------------------------------------------------------- Linear

// y = x @ weight + bias, weight [in, out] (paddle's layout), x [..., in]: the bias is written first and MKL's gemm
// (all threads) adds the product to it, so no separate pass adds the bias. Backward: dX = dY W^T, dW = X^T dY
// (MKL gemms), dBias = column sums of dY (sum_chunks).
std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                          const paddle::Tensor& bias) {
  check_cpu_float(x, "pit_linear input");
  check_cpu_float(weight, "pit_linear weight");
  check_cpu_float(bias, "pit_linear bias");
  const int64_t in = x.shape().back(), rows = rows_of(x);
  PD_CHECK(weight.shape().size() == 2 && weight.shape()[0] == in, "pit_linear weight must be [", in, ", out]");
  const int64_t out_features = weight.shape()[1];
  PD_CHECK(bias.numel() == out_features, "pit_linear bias must have ", out_features, " elements");
  std::vector<int64_t> shape = x.shape();
  shape.back() = out_features;
  auto out = paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* b = bias.data<float>();
  float* y = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) std::copy(b, b + out_features, y + r * out_features);
  gemm(false, false, rows, out_features, in, 1.f, x.data<float>(), in, weight.data<float>(), out_features, 1.f, y,
       out_features);
  return {out};
}

std::vector<paddle::Tensor> LinearBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                           const paddle::Tensor& grad_out) {
  check_cpu_float(grad_out, "pit_linear gradient");
  const int64_t in = x.shape().back(), rows = rows_of(x), out_features = weight.shape()[1];
  auto grad_x = paddle::empty_like(x);
  auto grad_w = paddle::empty_like(weight);
  const float* dy = grad_out.data<float>();
  gemm(false, true, rows, in, out_features, 1.f, dy, out_features, weight.data<float>(), out_features, 0.f,
       grad_x.data<float>(), in);
  gemm(true, false, in, out_features, rows, 1.f, x.data<float>(), in, dy, out_features, 0.f, grad_w.data<float>(),
       out_features);
  std::vector<float> partial(kChunks * out_features, 0.f);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < kChunks; ++k) {
    float* p = partial.data() + k * out_features;
    for (int64_t r = chunk_begin(rows, k); r < chunk_begin(rows, k + 1); ++r) {
#pragma omp simd
      for (int64_t c = 0; c < out_features; ++c) p[c] += dy[r * out_features + c];
    }
  }
  return {grad_x, grad_w, sum_chunks(partial, out_features)};
}

std::vector<std::vector<int64_t>> LinearInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                   const std::vector<int64_t>&) {
  std::vector<int64_t> shape = x;
  shape.back() = w[1];
  return {shape};
}

PD_BUILD_OP(pit_linear)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearInferShape));

PD_BUILD_GRAD_OP(pit_linear)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .SetKernelFn(PD_KERNEL(LinearBackward));

// ---------------------------------------------------------------- [B, A, C] -> [B, C, A]

// The transposes between a stage's map [B, C, H * W] and its tokens [B, H * W, C], on all threads, in tiles
// that stay in cache. Its gradient is the same transpose of the output's gradient.
namespace {

paddle::Tensor swap_last_two(const paddle::Tensor& x) {
  check_cpu_float(x, "pit_swap_last2 input");
  PD_CHECK(x.shape().size() == 3, "pit_swap_last2 input must be [B, A, C]");
  const int64_t batch = x.shape()[0], rows = x.shape()[1], cols = x.shape()[2];
  auto out = paddle::empty({batch, cols, rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* in = x.data<float>();
  float* y = out.data<float>();
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t tile = 0; tile < row_tiles * col_tiles; ++tile) {
      const int64_t r0 = tile / col_tiles * kTile, c0 = tile % col_tiles * kTile;
      const float* src = in + b * rows * cols;
      float* dst = y + b * rows * cols;
      for (int64_t c = c0; c < std::min(c0 + kTile, cols); ++c)
        for (int64_t r = r0; r < std::min(r0 + kTile, rows); ++r) dst[c * rows + r] = src[r * cols + c];
    }
  return out;
}

}  // namespace

std::vector<paddle::Tensor> SwapForward(const paddle::Tensor& x) { return {swap_last_two(x)}; }

std::vector<paddle::Tensor> SwapBackward(const paddle::Tensor& grad_out) { return {swap_last_two(grad_out)}; }

std::vector<std::vector<int64_t>> SwapInferShape(const std::vector<int64_t>& x) { return {{x[0], x[2], x[1]}}; }

PD_BUILD_OP(pit_swap_last2)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(SwapForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SwapInferShape));

PD_BUILD_GRAD_OP(pit_swap_last2)
    .Inputs({paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(SwapBackward));

// ---------------------------------------------------------------- AdamW step

// One step of paddle.optimizer.AdamW for one parameter, in place, on all threads (Paddle's CPU op runs on one
// thread per parameter): w <- w * (1 - lr * coeff); Adam moments; w <- w - lr_t * m / (sqrt(v) + eps_t) with
// lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t), eps_t = eps sqrt(1 - beta2^t). Paddle's beta-power accumulators
// already hold beta^t when the step starts (they start at beta) and advance after it, as its kernel does.
void AdamWStep(paddle::Tensor& param, paddle::Tensor& moment1, paddle::Tensor& moment2, paddle::Tensor& beta1_pow,
               paddle::Tensor& beta2_pow, const paddle::Tensor& grad, float lr, float beta1, float beta2,
               float epsilon, float coeff) {
  const AdamTensors t(param, moment1, moment2, beta1_pow, beta2_pow, grad, "pit_adamw");
  const int64_t n = t.n;
  float *w = t.w, *m = t.m, *v = t.v, *b1p = t.beta1_pow, *b2p = t.beta2_pow;
  const float* g = t.g;
  const float correction2 = std::sqrt(1.f - b2p[0]);
  const float lr_t = lr * correction2 / (1.f - b1p[0]), eps_t = epsilon * correction2;
  const float decay = 1.f - lr * coeff;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    m[i] = beta1 * m[i] + (1.f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.f - beta2) * g[i] * g[i];
    w[i] = w[i] * decay - lr_t * m[i] / (std::sqrt(v[i]) + eps_t);
  }
  b1p[0] *= beta1;
  b2p[0] *= beta2;
}

PD_BUILD_OP(pit_adamw)
    .Inputs({"Param", "Moment1", "Moment2", "Beta1Pow", "Beta2Pow", "Grad"})
    .Outputs({"ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut"})
    .SetInplaceMap({{"Param", "ParamOut"}, {"Moment1", "Moment1Out"}, {"Moment2", "Moment2Out"},
                    {"Beta1Pow", "Beta1PowOut"}, {"Beta2Pow", "Beta2PowOut"}})
    .Attrs({"lr: float", "beta1: float", "beta2: float", "epsilon: float", "coeff: float"})
    .SetKernelFn(PD_KERNEL(AdamWStep));
