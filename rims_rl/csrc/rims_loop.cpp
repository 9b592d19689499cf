// The fused RIMs time loop (rims_rl/loop.py) for CPU tensors, compiled on first use.
//
// Same arithmetic as rims_rl.step.rims_step and step_backward, in the same step-major layouts, for one input
// row per step (keys (T, B, H, dk): the null row implicit, its key and value zero) or an input set (keys
// (T, B, R, H, dk) and values (T B R, H dv), the null row first among the R rows). At recurrent
// PPO's minibatch shapes (a few sequences of 128 steps) a step is a few rows through each unit's
// weights: the per-unit products are memory- and latency-bound, not arithmetic-bound. So each step's
// work is split by unit across threads (ATen's parallel_for, a few phases per step), the products
// stream repacked weights through a register-blocked kernel, and sigmoid and tanh are vectorised here:
// a step makes no ATen calls at all.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

// Work is split across threads by unit: within a phase of a step each unit reads only its own rows and
// weights, so the units' matmuls (memory-bound at a few rows) stream their weights on every core.
template <typename F>
void each_unit(int64_t units, const F& f) {
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) f(k);
  });
}

// A dot product with four running sums: the loop vectorises and is not bound by one sum's latency.
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// Per-unit weights (units, rows, N), any strides (the backward passes transposed views), read in panels
// of kPanel columns. For a long loop every panel is repacked once per call into (rows, kPanel) blocks, so
// that each step's row-times-matrix products read their weights in one sequential stream; for a step or
// two (acting) a contiguous weight's full panels are read in place with a row stride of N and only the
// ragged last one is packed (zero-padded).
constexpr int64_t kPanel = 32;

template <typename T>
struct Panels {
  const T* dense = nullptr;
  std::vector<T> packed;  // (units, panels - first_packed, rows, kPanel)
  int64_t rows = 0, N = 0, panels = 0, first_packed = 0;
  const T* at(int64_t k, int64_t p, int64_t& stride) const {
    if (p < first_packed) {
      stride = N;
      return dense + k * rows * N + p * kPanel;
    }
    stride = kPanel;
    return packed.data() + ((k * (panels - first_packed)) + p - first_packed) * rows * kPanel;
  }
};

template <typename T>
Panels<T> panels_of(const Tensor& weight, bool pack_all) {
  Panels<T> w;
  if (!weight.defined() || weight.numel() == 0) return w;
  const int64_t units = weight.size(0);
  w.dense = weight.data_ptr<T>();
  w.rows = weight.size(1);
  w.N = weight.size(2);
  w.panels = (w.N + kPanel - 1) / kPanel;
  w.first_packed = pack_all || !weight.is_contiguous() ? 0 : w.N / kPanel;
  const int64_t stored = w.panels - w.first_packed;
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1), s2 = weight.stride(2);
  w.packed.assign(units * stored * w.rows * kPanel, T(0));
  for (int64_t k = 0; k < units; ++k)
    for (int64_t p = w.first_packed; p < w.panels; ++p)
      for (int64_t r = 0; r < w.rows; ++r) {
        const int64_t n0 = p * kPanel, width = std::min(kPanel, w.N - n0);
        T* to = w.packed.data() + ((k * stored + p - w.first_packed) * w.rows + r) * kPanel;
        for (int64_t j = 0; j < width; ++j) to[j] = w.dense[k * s0 + r * s1 + (n0 + j) * s2];
      }
  return w;
}

// Packing pays for itself over a few steps.
constexpr int64_t kPackFrom = 4;

// The float kernels below are written with GCC/Clang vector types, compiled twice on x86-64: for the
// baseline and for AVX2 with FMA, taken where the CPU has them (checked once).
#define RIMS_INLINE inline __attribute__((always_inline))

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

RIMS_INLINE v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
RIMS_INLINE void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }
RIMS_INLINE v8 splat(float x) { return v8{} + x; }

// exp by range reduction (x = n ln2 + r, |r| <= ln2 / 2) and a degree-6 polynomial: within 2 ulp.
RIMS_INLINE v8 exp8(v8 x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const v8 shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const v8 t = x * 1.44269504088896341f + shifter;
  const v8 n = t - shifter;
  const v8 r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  v8 poly = splat(1.9875691500e-4f);
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = (poly * r) * r + r + 1.0f;
  v8i bits;
  std::memcpy(&bits, &t, sizeof(bits));
  const v8i scale = (bits - 0x4B400000 + 127) << 23;
  v8 factor;
  std::memcpy(&factor, &scale, sizeof(factor));
  return poly * factor;
}

RIMS_INLINE void sigmoid_body(float* out, const float* in, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, splat(1.0f) / (splat(1.0f) + exp8(-load8(in + i))));
  for (; i < n; ++i) out[i] = 1.0f / (1.0f + std::exp(-in[i]));
}

RIMS_INLINE void tanh_body(float* out, const float* in, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8 x = load8(in + i);
    // tanh x = 1 - 2 / (exp(2x) + 1), with |x| small taken as x (cancellation in the difference)
    const v8 big = splat(1.0f) - splat(2.0f) / (exp8(x + x) + 1.0f);
    const v8 x2 = x * x;
    const v8 small = x + x * x2 * (splat(-1.0f / 3) + x2 * (splat(2.0f / 15) + x2 * splat(-17.0f / 315)));
    store8(out + i, (x * x) < splat(0.0625f) ? small : big);
  }
  for (; i < n; ++i) out[i] = std::tanh(in[i]);
}

// R rows of y (stride N) = init + x (stride Kd) @ one panel of packed weights, columns [n0, n0 + width).
template <int R>
RIMS_INLINE void panel_rows(const float* x, int64_t Kd, const float* panel, int64_t stride, const float* init,
                            int64_t init_ld, float* y, int64_t N, int64_t n0, int64_t width) {
  v8 acc[R][4] = {};
  for (int64_t k = 0; k < Kd; ++k) {
    const float* w = panel + k * stride;
    v8 xs[R];
    for (int r = 0; r < R; ++r) xs[r] = splat(x[r * Kd + k]);
    for (int j = 0; j < 4; ++j) {
      const v8 wj = load8(w + 8 * j);
      for (int r = 0; r < R; ++r) acc[r][j] += wj * xs[r];
    }
  }
  float row[kPanel];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < 4; ++j) store8(row + 8 * j, acc[r][j]);
    float* out = y + r * N + n0;
    const float* add = init ? init + r * init_ld + n0 : nullptr;
    for (int64_t j = 0; j < width; ++j) out[j] = add ? row[j] + add[j] : row[j];
  }
}

// y[:, n0 : n0 + width] (B rows, stride N) = init + x (B, Kd) @ one panel (Kd rows, given stride).
RIMS_INLINE void panel_body(const float* x, int64_t B, int64_t Kd, const float* panel, int64_t stride,
                            const float* init, int64_t init_ld, float* y, int64_t N, int64_t n0, int64_t width) {
  int64_t b = 0;
  auto rows_at = [&](int64_t first) { return init ? init + first * init_ld : nullptr; };
  // Three rows at a time fill AVX2's 16 registers (12 sums, 3 broadcasts, one weight vector).
  for (; b + 3 <= B; b += 3) panel_rows<3>(x + b * Kd, Kd, panel, stride, rows_at(b), init_ld, y + b * N, N, n0, width);
  if (b + 2 <= B)
    panel_rows<2>(x + b * Kd, Kd, panel, stride, rows_at(b), init_ld, y + b * N, N, n0, width);
  else if (b < B)
    panel_rows<1>(x + b * Kd, Kd, panel, stride, rows_at(b), init_ld, y + b * N, N, n0, width);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define RIMS_AVX2 __attribute__((target("avx2,fma")))
const bool kAvx2 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}();
#else
#define RIMS_AVX2
const bool kAvx2 = false;
#endif
RIMS_AVX2 void sigmoid_avx2(float* out, const float* in, int64_t n) { sigmoid_body(out, in, n); }
RIMS_AVX2 void tanh_avx2(float* out, const float* in, int64_t n) { tanh_body(out, in, n); }
RIMS_AVX2 void panel_avx2(const float* x, int64_t B, int64_t Kd, const float* panel, int64_t stride,
                          const float* init, int64_t init_ld, float* y, int64_t N, int64_t n0, int64_t width) {
  panel_body(x, B, Kd, panel, stride, init, init_ld, y, N, n0, width);
}

// y (B, N) = init + x (B, Kd) @ unit k's W (Kd, N); init null (zeros), one row for all (init_ld 0) or
// B rows with stride init_ld.
template <typename T>
void gemm(const T* x, int64_t B, const Panels<T>& w, int64_t unit, const T* init, int64_t init_ld, T* y) {
  for (int64_t p = 0; p < w.panels; ++p) {
    int64_t stride = 0;
    const T* panel = w.at(unit, p, stride);
    const int64_t n0 = p * kPanel, width = std::min(kPanel, w.N - n0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < width; ++j) {
        T sum = 0;
        for (int64_t k = 0; k < w.rows; ++k) sum += x[b * w.rows + k] * panel[k * stride + j];
        y[b * w.N + n0 + j] = init ? sum + init[b * init_ld + n0 + j] : sum;
      }
  }
}

template <>
void gemm<float>(const float* x, int64_t B, const Panels<float>& w, int64_t unit, const float* init, int64_t init_ld,
                 float* y) {
  for (int64_t p = 0; p < w.panels; ++p) {
    int64_t stride = 0;
    const float* panel = w.at(unit, p, stride);
    const int64_t n0 = p * kPanel, width = std::min(kPanel, w.N - n0);
    if (kAvx2)
      panel_avx2(x, B, w.rows, panel, stride, init, init_ld, y, w.N, n0, width);
    else
      panel_body(x, B, w.rows, panel, stride, init, init_ld, y, w.N, n0, width);
  }
}

// An input set's attention for one unit and batch entry, forward and backward, over R rows (the null row's
// zero key and value among them): the per-step work a set adds. Written once over vdot / vaxpy, which are
// eight-wide vector code for float and plain loops for double; the float bodies get an AVX2 clone.
RIMS_INLINE float vdot(const float* a, const float* b, int64_t n) {
  v8 acc = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc += load8(a + i) * load8(b + i);
  float lanes[8];
  store8(lanes, acc);
  float sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}
RIMS_INLINE double vdot(const double* a, const double* b, int64_t n) { return dot(a, b, n); }

// y += a x
RIMS_INLINE void vaxpy(float* y, float a, const float* x, int64_t n) {
  const v8 scale = splat(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(y + i, load8(y + i) + scale * load8(x + i));
  for (; i < n; ++i) y[i] += a * x[i];
}
RIMS_INLINE void vaxpy(double* y, double a, const double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Forward: each head's softmax over the rows' scores (query . key) into att (H, R), and the attention-weighted
// values into read (H dv). keys (R, H, dk), values (R, H dv).
template <typename T>
RIMS_INLINE void set_read_body(const T* query, const T* keys, const T* values, int64_t R, int64_t H, int64_t dk,
                               int64_t dv, T* att, T* read) {
  const int64_t HV = H * dv;
  std::fill(read, read + HV, T(0));
  for (int64_t h = 0; h < H; ++h) {
    T* a = att + h * R;
    T top = -std::numeric_limits<T>::infinity();
    for (int64_t n = 0; n < R; ++n) {
      a[n] = vdot(query + h * dk, keys + (n * H + h) * dk, dk);
      top = std::max(top, a[n]);
    }
    T total = 0;
    for (int64_t n = 0; n < R; ++n) {
      a[n] = std::exp(a[n] - top);
      total += a[n];
    }
    for (int64_t n = 0; n < R; ++n) {
      a[n] /= total;
      vaxpy(read + h * dv, a[n], values + n * HV + h * dv, dv);
    }
  }
}

// Backward: from the read-out's gradient d_read (H dv), the scores' gradients ds (H, R) through each head's
// softmax, and the query's gradient d_query (H dk) over the rows' keys.
template <typename T>
RIMS_INLINE void set_read_backward_body(const T* d_read, const T* att, const T* keys, const T* values, int64_t R,
                                        int64_t H, int64_t dk, int64_t dv, T* ds, T* d_query) {
  const int64_t HV = H * dv;
  for (int64_t h = 0; h < H; ++h) {
    const T* a = att + h * R;
    T* d = ds + h * R;
    T weighted = 0;
    for (int64_t n = 0; n < R; ++n) {
      d[n] = vdot(d_read + h * dv, values + n * HV + h * dv, dv);
      weighted += a[n] * d[n];
    }
    T* dq = d_query + h * dk;
    std::fill(dq, dq + dk, T(0));
    for (int64_t n = 0; n < R; ++n) {
      d[n] = a[n] * (d[n] - weighted);
      vaxpy(dq, d[n], keys + (n * H + h) * dk, dk);
    }
  }
}

RIMS_AVX2 void set_read_avx2(const float* query, const float* keys, const float* values, int64_t R, int64_t H,
                             int64_t dk, int64_t dv, float* att, float* read) {
  set_read_body(query, keys, values, R, H, dk, dv, att, read);
}
RIMS_AVX2 void set_read_backward_avx2(const float* d_read, const float* att, const float* keys, const float* values,
                                      int64_t R, int64_t H, int64_t dk, int64_t dv, float* ds, float* d_query) {
  set_read_backward_body(d_read, att, keys, values, R, H, dk, dv, ds, d_query);
}

template <typename T>
void set_read(const T* query, const T* keys, const T* values, int64_t R, int64_t H, int64_t dk, int64_t dv, T* att,
              T* read) {
  if constexpr (std::is_same_v<T, float>) {
    if (kAvx2) return set_read_avx2(query, keys, values, R, H, dk, dv, att, read);
  }
  set_read_body(query, keys, values, R, H, dk, dv, att, read);
}

template <typename T>
void set_read_backward(const T* d_read, const T* att, const T* keys, const T* values, int64_t R, int64_t H,
                       int64_t dk, int64_t dv, T* ds, T* d_query) {
  if constexpr (std::is_same_v<T, float>) {
    if (kAvx2) return set_read_backward_avx2(d_read, att, keys, values, R, H, dk, dv, ds, d_query);
  }
  set_read_backward_body(d_read, att, keys, values, R, H, dk, dv, ds, d_query);
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
void sigmoid_n(T* out, const T* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = sigmoid(in[i]);
}
template <>
void sigmoid_n<float>(float* out, const float* in, int64_t n) {
  kAvx2 ? sigmoid_avx2(out, in, n) : sigmoid_body(out, in, n);
}
template <typename T>
void tanh_n(T* out, const T* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::tanh(in[i]);
}
template <>
void tanh_n<float>(float* out, const float* in, int64_t n) {
  kAvx2 ? tanh_avx2(out, in, n) : tanh_body(out, in, n);
}

struct Sizes {
  int64_t T, B, K, U, G, H, dk, HV, NP, Hc, ck, cv, QKV, k_active;
  int64_t R;  // rows of an input set, the null row included; 1 for one row (its null row is implicit)
  bool comm, select, set;
};

Sizes sizes(const Tensor& keys, const Tensor& h0, const Tensor& hidden_weight, int64_t k_active, int64_t comm_heads,
            int64_t comm_key, int64_t comm_value, bool comm) {
  Sizes s{};
  TORCH_CHECK(keys.dim() == 4 || keys.dim() == 5, "rims_loop: keys must be (T, B, H, dk) or (T, B, R, H, dk)");
  s.set = keys.dim() == 5;
  s.T = keys.size(0);
  s.B = keys.size(1);
  s.R = s.set ? keys.size(2) : 1;
  s.H = keys.size(-2);
  s.dk = keys.size(-1);
  s.K = h0.size(0);
  s.U = h0.size(2);
  s.G = 4 * s.U;
  s.NP = hidden_weight.size(2);
  TORCH_CHECK(s.NP == s.G + s.H * s.dk, "rims_loop: hidden weight width ", s.NP, " != 4U + H dk");
  s.Hc = comm_heads;
  s.ck = comm_key;
  s.cv = comm_value;
  s.QKV = comm_heads * (2 * comm_key + comm_value);
  s.k_active = k_active;
  s.comm = comm;
  s.select = k_active < s.K;
  return s;
}

// values are (rows >= T B R, H dv), the padded input projection; weight_ih (K, H dv, G) in any strides (the
// backward passes its transpose, (K, G, H dv)).
void check_input_side(const Tensor& values, const Tensor& weight_ih, bool transposed, Sizes& s) {
  s.HV = values.size(1);
  const int64_t rows = weight_ih.size(transposed ? 2 : 1), cols = weight_ih.size(transposed ? 1 : 2);
  TORCH_CHECK(values.dim() == 2 && values.size(0) >= s.T * s.B * s.R && s.HV % s.H == 0 && weight_ih.dim() == 3 &&
                  weight_ih.size(0) == s.K && rows == s.HV && cols == s.G,
              "rims_loop: values must be (rows >= T B R, H dv) and weight_ih (K, H dv, 4U)");
}

template <typename scalar_t>
std::vector<Tensor> forward_impl(const Tensor& keys, const Tensor& values, const Tensor& weight_ih, const Tensor& h0,
                                 const Tensor& c0, const Tensor& hidden_weight, const Tensor& hidden_bias,
                                 const Tensor& qkv_weight, const Tensor& out_weight, const Tensor& out_bias,
                                 const Tensor& keep, const std::vector<bool>& reset, const Sizes& s, bool save) {
  using T = scalar_t;
  const int64_t steps = s.T, B = s.B, K = s.K, U = s.U, G = s.G, H = s.H, dk = s.dk, NP = s.NP, R = s.R;
  const int64_t HV = s.HV, dv = s.HV / s.H;
  const int64_t KB = K * B, KBU = K * B * U;
  const int64_t Hc = s.Hc, ck = s.ck, cv = s.cv, QKV = s.QKV, Hv = s.Hc * s.cv;
  // p: one row, each head's attention on the row, (K, B, H); a set, each head's attention over the rows
  // (K, B, H, R), the null row first.
  const int64_t HP = s.set ? H * R : H;
  auto opts = h0.options();
  auto stack = [&](std::initializer_list<int64_t> per_step) {
    std::vector<int64_t> shape{save ? steps : 1};
    shape.insert(shape.end(), per_step);
    return at::empty(shape, opts);
  };
  // With save, each buffer holds every step (the backward's inputs); without, one step, reused.
  Tensor outputs = at::empty({steps, K, B, U}, opts);
  Tensor h_in = stack({K, B, U}), q = stack({K, B, H * dk}), readout = stack({K, B, HV});
  Tensor p = s.set ? stack({K, B, H, R}) : stack({K, B, H});
  Tensor h_mix = stack({K, B, U});
  Tensor qkv, attention, read;
  if (s.comm) {
    qkv = stack({K, B, QKV});
    attention = stack({K, K, B, Hc, 1});
    read = stack({K, B, Hv});
  }
  // With save, the local derivatives the backward multiplies by (rims_rl.step.step_factors), formed here while
  // each step's gate values are at hand: the gates themselves are kept for one step only.
  Tensor mask, unmask, forget, cell_to_c, slopes, p_slope, out_slopes;
  if (save) {
    mask = stack({K, B, 1});
    unmask = stack({K, B, 1});
    forget = stack({K, B, U});
    cell_to_c = stack({K, B, U});
    slopes = stack({K, B, 4, U});
    // A set's backward reads the attention itself (p); one row's, the slope of its sigmoid.
    p_slope = s.set ? at::empty({0}, opts) : stack({K, B, H});
    if (s.comm) out_slopes = stack({K, B, 2, U});
  }
  std::vector<T> c_in(KBU), act(KB * G), g(KBU), tanh_c(KBU), sig(s.comm ? KBU : 0), tanh_u(s.comm ? KBU : 0);
  const bool pack_all = steps >= kPackFrom;
  const Panels<T> w_hidden = panels_of<T>(hidden_weight, pack_all), w_ih = panels_of<T>(weight_ih, pack_all),
                  w_qkv = panels_of<T>(qkv_weight, pack_all), w_out = panels_of<T>(out_weight, pack_all);
  std::vector<T> projected(KB * NP), pre(KB * G), c_next(KBU), c_new(KBU), h_cell(KBU), update(s.comm ? KB * 2 * U : 0);
  std::vector<T> scores(K * K), p_null(K);
  std::vector<int64_t> order(K);
  std::vector<char> active(KB, 1);

  const T* keys_p = keys.data_ptr<T>();
  const T* values_p = values.data_ptr<T>();
  const T* keep_p = reset.empty() ? nullptr : keep.data_ptr<T>();
  const T* hidden_bias_p = hidden_bias.data_ptr<T>();
  const T* out_bias_p = s.comm ? out_bias.data_ptr<T>() : nullptr;
  T* out_all = outputs.data_ptr<T>();

  // Step t's local derivatives of row kb (unit-major k * B + b) whose active flag is m.
  auto save_cell_slopes = [&](int64_t t, int64_t kb, T m) {
    const int64_t at = t * KB + kb, row = kb * U;
    mask.data_ptr<T>()[at] = m;
    unmask.data_ptr<T>()[at] = T(1) - m;
    const T* a = act.data() + kb * G;  // i, f, (unused), o
    T* f_out = forget.data_ptr<T>() + at * U;
    T* to_c = cell_to_c.data_ptr<T>() + at * U;
    T* sl = slopes.data_ptr<T>() + at * 4 * U;
    for (int64_t u = 0; u < U; ++u) {
      const T i = a[u], f = a[U + u], o = a[3 * U + u], gg = g[row + u], tc = tanh_c[row + u];
      f_out[u] = f;
      to_c[u] = m * o * (T(1) - tc * tc);
      sl[u] = gg * i * (T(1) - i);
      sl[U + u] = c_in[row + u] * f * (T(1) - f);
      sl[2 * U + u] = i * (T(1) - gg * gg);
      sl[3 * U + u] = m * tc * o * (T(1) - o);
    }
    if (s.set) return;
    const T* pp = p.data_ptr<T>() + at * H;
    T* ps = p_slope.data_ptr<T>() + at * H;
    for (int64_t h = 0; h < H; ++h) ps[h] = pp[h] * (T(1) - pp[h]);
  };

  for (int64_t t = 0; t < steps; ++t) {
    const int64_t at_t = save ? t : 0;
    T* hin = h_in.data_ptr<T>() + at_t * KBU;
    T* cin = c_in.data();
    T* q_t = q.data_ptr<T>() + at_t * KB * H * dk;
    T* p_t = p.data_ptr<T>() + at_t * KB * HP;
    T* readout_t = readout.data_ptr<T>() + at_t * KB * HV;
    T* act_t = act.data();
    T* g_t = g.data();
    T* tanh_c_t = tanh_c.data();
    T* hmix = h_mix.data_ptr<T>() + at_t * KBU;
    T* out_t = out_all + t * KBU;
    const T* hprev = t == 0 ? h0.data_ptr<T>() : out_all + (t - 1) * KBU;
    const T* cprev = t == 0 ? c0.data_ptr<T>() : c_next.data();
    const bool resets = !reset.empty() && reset[t];

    // The cells of every unit, and their attention on the input (p): each unit reads the heads' values
    // weighted by p and projects that through its own weight_ih, whose gates add to the hidden side's.
    each_unit(K, [&](int64_t k) {
      for (int64_t b = 0; b < B; ++b) {
        const T kept = resets ? keep_p[t * B + b] : T(1);
        const int64_t row = (k * B + b) * U;
        for (int64_t u = 0; u < U; ++u) {
          hin[row + u] = resets ? hprev[row + u] * kept : hprev[row + u];
          cin[row + u] = resets ? cprev[row + u] * kept : cprev[row + u];
        }
      }
      T* proj = projected.data() + k * B * NP;
      gemm<T>(hin + k * B * U, B, w_hidden, k, hidden_bias_p + k * NP, 0, proj);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t kb = k * B + b;
        const T* pr = proj + b * NP;
        T* pp = p_t + kb * HP;
        std::copy(pr + G, pr + NP, q_t + kb * H * dk);
        T* read_row = readout_t + kb * HV;
        if (!s.set) {
          for (int64_t h = 0; h < H; ++h) pp[h] = sigmoid(dot(pr + G + h * dk, keys_p + ((t * B + b) * H + h) * dk, dk));
          const T* value_row = values_p + (t * B + b) * HV;
          for (int64_t h = 0; h < H; ++h)
            for (int64_t v = 0; v < dv; ++v) read_row[h * dv + v] = pp[h] * value_row[h * dv + v];
          continue;
        }
        // A set: each head's softmax over the R rows' scores, then its attention-weighted values.
        set_read<T>(pr + G, keys_p + (t * B + b) * R * H * dk, values_p + (t * B + b) * R * HV, R, H, dk, dv, pp,
                    read_row);
      }
      gemm<T>(readout_t + k * B * HV, B, w_ih, k, proj, NP, pre.data() + k * B * G);
      // the candidate's slot in act goes unused: one sigmoid over all four gates, as the Python loop
      for (int64_t b = 0; b < B; ++b) tanh_n<T>(g_t + (k * B + b) * U, pre.data() + (k * B + b) * G + 2 * U, U);
      sigmoid_n<T>(act_t + k * B * G, pre.data() + k * B * G, B * G);
      for (int64_t b = 0; b < B; ++b) {
        const T* a = act_t + (k * B + b) * G;
        const int64_t row = (k * B + b) * U;
        for (int64_t u = 0; u < U; ++u) c_new[row + u] = a[U + u] * cin[row + u] + a[u] * g_t[row + u];
      }
      tanh_n<T>(tanh_c_t + k * B * U, c_new.data() + k * B * U, B * U);
      for (int64_t b = 0; b < B; ++b) {
        const T* a = act_t + (k * B + b) * G;
        const int64_t row = (k * B + b) * U;
        for (int64_t u = 0; u < U; ++u) h_cell[row + u] = a[3 * U + u] * tanh_c_t[row + u];
      }
    });

    // The k_active units with the least attention on the null row; ties go to the lower index.
    if (s.select) {
      std::fill(active.begin(), active.end(), 0);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t k = 0; k < K; ++k) {
          const T* pp = p_t + (k * B + b) * HP;
          T total = 0;
          if (s.set) {  // the heads' attention on the null row, the first
            for (int64_t h = 0; h < H; ++h) total += pp[h * R];
            p_null[k] = total / T(H);
          } else {  // one minus the heads' attention on the row
            for (int64_t h = 0; h < H; ++h) total += pp[h];
            p_null[k] = T(1) - total / T(H);
          }
        }
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return p_null[x] < p_null[y]; });
        for (int64_t r = 0; r < s.k_active; ++r) active[order[r] * B + b] = 1;
      }
    }
    T* qkv_t = s.comm ? qkv.data_ptr<T>() + at_t * KB * QKV : nullptr;
    each_unit(K, [&](int64_t k) {
      for (int64_t b = 0; b < B; ++b) {
        const int64_t kb = k * B + b, row = kb * U;
        const bool on = active[kb];
        for (int64_t u = 0; u < U; ++u) {
          hmix[row + u] = on ? h_cell[row + u] : hin[row + u];
          c_next[row + u] = on ? c_new[row + u] : cin[row + u];
        }
        if (save) save_cell_slopes(t, kb, on ? T(1) : T(0));
      }
      if (s.comm)
        gemm<T>(hmix + k * B * U, B, w_qkv, k, nullptr, 0, qkv_t + k * B * QKV);
      else
        std::copy(hmix + k * B * U, hmix + (k + 1) * B * U, out_t + k * B * U);
    });
    if (!s.comm) continue;

    // Communication: unit i's query over every unit's key and value, then its gated residual.
    T* att = attention.data_ptr<T>() + at_t * K * K * B * Hc;
    T* rd = read.data_ptr<T>() + at_t * KB * Hv;
    T* sig_t = sig.data();
    T* tanh_u_t = tanh_u.data();
    T* out_sl = save ? out_slopes.data_ptr<T>() + t * KB * 2 * U : nullptr;
    each_unit(K, [&](int64_t i) {
      T* sc = scores.data() + i * K;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t hh = 0; hh < Hc; ++hh) {
          const T* query = qkv_t + (i * B + b) * QKV + hh * ck;
          T top = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j < K; ++j) {
            sc[j] = dot(query, qkv_t + (j * B + b) * QKV + Hc * ck + hh * ck, ck);
            top = std::max(top, sc[j]);
          }
          T total = 0;
          for (int64_t j = 0; j < K; ++j) {
            sc[j] = std::exp(sc[j] - top);
            total += sc[j];
          }
          T* r = rd + (i * B + b) * Hv + hh * cv;
          std::fill(r, r + cv, T(0));
          for (int64_t j = 0; j < K; ++j) {
            const T weight = sc[j] / total;
            att[((i * K + j) * B + b) * Hc + hh] = weight;
            const T* value = qkv_t + (j * B + b) * QKV + 2 * Hc * ck + hh * cv;
            for (int64_t e = 0; e < cv; ++e) r[e] += weight * value[e];
          }
        }
      T* upd = update.data() + i * B * 2 * U;
      gemm<T>(rd + i * B * Hv, B, w_out, i, out_bias_p + i * 2 * U, 0, upd);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = (i * B + b) * U;
        sigmoid_n<T>(sig_t + row, upd + b * 2 * U + U, U);
        tanh_n<T>(tanh_u_t + row, upd + b * 2 * U, U);
        const bool on = active[i * B + b];
        for (int64_t u = 0; u < U; ++u) out_t[row + u] = hmix[row + u] + (on ? sig_t[row + u] * tanh_u_t[row + u] : T(0));
        if (save) {
          // d (update, gate) of d h_next through mask * sigmoid(gate) * tanh(update)
          const T m = on ? T(1) : T(0);
          T* sl = out_sl + (i * B + b) * 2 * U;
          for (int64_t u = 0; u < U; ++u) {
            const T sg = sig_t[row + u], tu = tanh_u_t[row + u];
            sl[u] = sg * (T(1) - tu * tu) * m;
            sl[U + u] = tu * sg * (T(1) - sg) * m;
          }
        }
      }
    });
  }

  Tensor c_last = at::empty({K, B, U}, opts);
  std::copy(c_next.begin(), c_next.end(), c_last.data_ptr<T>());
  std::vector<Tensor> result{outputs, outputs[steps - 1].clone(), c_last};
  if (save) {
    result.insert(result.end(), {h_in, q.view({steps, K, B, H, dk}), p, readout, h_mix, mask, unmask, forget,
                                 cell_to_c, slopes, p_slope});
    if (s.comm) result.insert(result.end(), {qkv, attention, read, out_slopes});
  }
  return result;
}

template <typename scalar_t>
std::vector<Tensor> backward_impl(Tensor dh, Tensor dc, const Tensor& grad_outputs, const Tensor& keys,
                                  const Tensor& values, const Tensor& weight_ih_t, const Tensor& mask,
                                  const Tensor& unmask, const Tensor& forget, const Tensor& cell_to_c,
                                  const Tensor& pre, const Tensor& p_factor, const Tensor& out, const Tensor& qkv,
                                  const Tensor& attention, const Tensor& hidden_weight_t, const Tensor& qkv_weight_t,
                                  const Tensor& out_weight_t, const Tensor& keep, const std::vector<bool>& reset,
                                  const Sizes& s) {
  using T = scalar_t;
  const int64_t steps = s.T, B = s.B, K = s.K, U = s.U, G = s.G, H = s.H, dk = s.dk, NP = s.NP, R = s.R;
  const int64_t HV = s.HV, dv = s.HV / s.H;
  const int64_t KB = K * B, KBU = K * B * U;
  const int64_t Hc = s.Hc, ck = s.ck, cv = s.cv, QKV = s.QKV, Hv = s.Hc * s.cv;
  const int64_t HP = s.set ? H * R : H;  // input scores per unit and entry
  auto opts = dh.options();
  Tensor grad_projected = at::empty({steps, K, B, NP}, opts);
  Tensor grad_scores = s.set ? at::empty({steps, K, B, H, R}, opts) : at::empty({steps, K, B, H}, opts);
  Tensor grad_readout = at::empty({steps, K, B, HV}, opts);
  Tensor grad_qkv, grad_out;
  if (s.comm) {
    grad_qkv = at::empty({steps, K, B, QKV}, opts);
    grad_out = at::empty({steps, K, B, 2 * U}, opts);
  }
  const bool pack_all = steps >= kPackFrom;
  const Panels<T> w_hidden = panels_of<T>(hidden_weight_t, pack_all), w_ih = panels_of<T>(weight_ih_t, pack_all),
                  w_qkv = panels_of<T>(qkv_weight_t, pack_all), w_out = panels_of<T>(out_weight_t, pack_all);
  std::vector<T> dh_in(KBU), d_mix(KBU), d_mix_kept(KBU), d_read(s.comm ? KB * Hv : 0);
  std::vector<T> d_pre(KB * G), d_att(K * K), d_scores(B * Hc * K * K);
  const T* keys_p = keys.data_ptr<T>();
  const T* values_p = values.data_ptr<T>();
  const T* keep_p = reset.empty() ? nullptr : keep.data_ptr<T>();
  const T* mask_p = mask.data_ptr<T>();
  const T* unmask_p = unmask.data_ptr<T>();
  const T* forget_p = forget.data_ptr<T>();
  const T* cell_p = cell_to_c.data_ptr<T>();
  const T* pre_p = pre.data_ptr<T>();
  // One row: the slope of each head's sigmoid; a set: each head's attention over the rows (K, B, H, R).
  const T* p_factor_p = p_factor.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  T* dcp = dc.data_ptr<T>();

  for (int64_t t = steps - 1; t >= 0; --t) {
    const T* go = grad_outputs.data_ptr<T>() + t * KBU;
    T* dout = s.comm ? grad_out.data_ptr<T>() + t * KB * 2 * U : nullptr;
    const T* of = s.comm ? out.data_ptr<T>() + t * KB * 2 * U : nullptr;
    each_unit(K, [&](int64_t i) {
      for (int64_t n = i * B * U; n < (i + 1) * B * U; ++n) dh_in[n] = dhp[n] + go[n];
      if (!s.comm) return;
      for (int64_t kb = i * B; kb < (i + 1) * B; ++kb)
        for (int64_t half = 0; half < 2; ++half)
          for (int64_t u = 0; u < U; ++u)
            dout[(kb * 2 + half) * U + u] = dh_in[kb * U + u] * of[(kb * 2 + half) * U + u];
      gemm<T>(dout + i * B * 2 * U, B, w_out, i, nullptr, 0, d_read.data() + i * B * Hv);
    });

    T* dx = s.comm ? grad_qkv.data_ptr<T>() + t * KB * QKV : nullptr;
    const T* x = s.comm ? qkv.data_ptr<T>() + t * KB * QKV : nullptr;
    const T* att = s.comm ? attention.data_ptr<T>() + t * K * K * B * Hc : nullptr;
    const T* dr = d_read.data();
    if (s.comm) {
      // Rows of the attention's gradient (query unit i) and the queries' gradients.
      each_unit(K, [&](int64_t i) {
        T* da = d_att.data() + i * K;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t hh = 0; hh < Hc; ++hh) {
            const T* read_grad = dr + (i * B + b) * Hv + hh * cv;
            T* ds = d_scores.data() + ((b * Hc + hh) * K + i) * K;
            T weighted = 0;
            for (int64_t j = 0; j < K; ++j) {
              da[j] = dot(read_grad, x + (j * B + b) * QKV + 2 * Hc * ck + hh * cv, cv);
              weighted += att[((i * K + j) * B + b) * Hc + hh] * da[j];
            }
            for (int64_t j = 0; j < K; ++j) ds[j] = att[((i * K + j) * B + b) * Hc + hh] * (da[j] - weighted);
            T* d_query = dx + (i * B + b) * QKV + hh * ck;
            std::fill(d_query, d_query + ck, T(0));
            for (int64_t j = 0; j < K; ++j) {
              const T* key = x + (j * B + b) * QKV + Hc * ck + hh * ck;
              for (int64_t d = 0; d < ck; ++d) d_query[d] += ds[j] * key[d];
            }
          }
      });
    }

    // Keys' and values' gradients (unit j), then j's cell and hidden projection backward.
    T* dproj_t = grad_projected.data_ptr<T>() + t * KB * NP;
    T* dsc = grad_scores.data_ptr<T>() + t * KB * HP;
    T* dread_t = grad_readout.data_ptr<T>() + t * KB * HV;
    each_unit(K, [&](int64_t j) {
      const T* dmix = dh_in.data();
      if (s.comm) {
        for (int64_t b = 0; b < B; ++b)
          for (int64_t hh = 0; hh < Hc; ++hh) {
            T* d_key = dx + (j * B + b) * QKV + Hc * ck + hh * ck;
            T* d_value = dx + (j * B + b) * QKV + 2 * Hc * ck + hh * cv;
            std::fill(d_key, d_key + ck, T(0));
            std::fill(d_value, d_value + cv, T(0));
            for (int64_t i = 0; i < K; ++i) {
              const T ds = d_scores[((b * Hc + hh) * K + i) * K + j], a = att[((i * K + j) * B + b) * Hc + hh];
              const T* query = x + (i * B + b) * QKV + hh * ck;
              const T* read_grad = dr + (i * B + b) * Hv + hh * cv;
              for (int64_t d = 0; d < ck; ++d) d_key[d] += ds * query[d];
              for (int64_t e = 0; e < cv; ++e) d_value[e] += a * read_grad[e];
            }
          }
        gemm<T>(dx + j * B * QKV, B, w_qkv, j, dh_in.data() + j * B * U, U, d_mix.data() + j * B * U);
        dmix = d_mix.data();
      }
      for (int64_t b = 0; b < B; ++b) {
        const int64_t kb = j * B + b, row = kb * U, step_kb = t * KB + kb;
        T* dp_unit = d_pre.data() + kb * G;
        const T on = mask_p[step_kb], off = unmask_p[step_kb];
        const T* f = forget_p + step_kb * U;
        const T* to_c = cell_p + step_kb * U;
        const T* slopes = pre_p + step_kb * G;  // (i, f, g, o) x U
        for (int64_t u = 0; u < U; ++u) {
          const T dm = dmix[row + u];
          const T dcn = dcp[row + u] * on + dm * to_c[u];
          dp_unit[u] = dcn * slopes[u];
          dp_unit[U + u] = dcn * slopes[U + u];
          dp_unit[2 * U + u] = dcn * slopes[2 * U + u];
          dp_unit[3 * U + u] = dm * slopes[3 * U + u];
          dcp[row + u] = dcp[row + u] * off + dcn * f[u];
          d_mix_kept[row + u] = dm * off;
        }
        std::copy(dp_unit, dp_unit + G, dproj_t + kb * NP);
      }
      // Through the input side: the read-out's gradient, and from it each head's score.
      gemm<T>(d_pre.data() + j * B * G, B, w_ih, j, nullptr, 0, dread_t + j * B * HV);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t kb = j * B + b;
        T* dp = dproj_t + kb * NP;
        if (!s.set) {
          const T* slope = p_factor_p + (t * KB + kb) * H;
          for (int64_t h = 0; h < H; ++h) {
            const T d_score = dot(dread_t + kb * HV + h * dv, values_p + (t * B + b) * HV + h * dv, dv) * slope[h];
            dsc[kb * H + h] = d_score;
            const T* key = keys_p + ((t * B + b) * H + h) * dk;
            for (int64_t d = 0; d < dk; ++d) dp[G + h * dk + d] = d_score * key[d];
          }
          continue;
        }
        // A set: the softmax's backward per head, then the query's gradient over the rows' keys.
        set_read_backward<T>(dread_t + kb * HV, p_factor_p + (t * KB + kb) * H * R, keys_p + (t * B + b) * R * H * dk,
                             values_p + (t * B + b) * R * HV, R, H, dk, dv, dsc + kb * H * R, dp + G);
      }
      gemm<T>(dproj_t + j * B * NP, B, w_hidden, j, d_mix_kept.data() + j * B * U, U, dhp + j * B * U);
      if (!reset.empty() && reset[t])
        for (int64_t b = 0; b < B; ++b) {
          const T factor = keep_p[t * B + b];
          const int64_t row = (j * B + b) * U;
          for (int64_t u = 0; u < U; ++u) {
            dhp[row + u] *= factor;
            dcp[row + u] *= factor;
          }
        }
    });
  }
  std::vector<Tensor> result{dh, dc, grad_projected, grad_scores, grad_readout};
  if (s.comm) result.insert(result.end(), {grad_qkv, grad_out});
  return result;
}

// The steps at which some entry is reset (a keep factor other than 1); only those are multiplied.
std::vector<bool> reset_flags(const Tensor& keep, int64_t steps, int64_t batch) {
  std::vector<bool> flags;
  if (!keep.defined() || keep.numel() == 0) return flags;
  TORCH_CHECK(keep.dim() == 2 && keep.size(0) == steps && keep.size(1) == batch, "rims_loop: keep must be (T, B)");
  flags.assign(steps, false);
  AT_DISPATCH_FLOATING_TYPES(keep.scalar_type(), "rims_reset_flags", [&] {
    const scalar_t* k = keep.data_ptr<scalar_t>();
    for (int64_t t = 0; t < steps; ++t)
      for (int64_t b = 0; b < batch && !flags[t]; ++b) flags[t] = k[t * batch + b] != scalar_t(1);
  });
  return flags;
}

void check_contiguous(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* x : tensors)
    TORCH_CHECK(!x->defined() || x->numel() == 0 || (x->is_contiguous() && x->device().is_cpu()),
                "rims_loop: expected contiguous CPU tensors");
}

std::vector<Tensor> forward_loop(const Tensor& keys, const Tensor& values, const Tensor& weight_ih, const Tensor& h0,
                                 const Tensor& c0, const Tensor& hidden_weight, const Tensor& hidden_bias,
                                 const Tensor& qkv_weight, const Tensor& out_weight, const Tensor& out_bias,
                                 const Tensor& keep, int64_t k_active,
                                 int64_t comm_heads, int64_t comm_key, int64_t comm_value, bool communication,
                                 bool save) {
  check_contiguous({&keys, &values, &h0, &c0, &hidden_bias, &out_bias, &keep});
  Sizes s = sizes(keys, h0, hidden_weight, k_active, comm_heads, comm_key, comm_value, communication);
  check_input_side(values, weight_ih, false, s);
  const std::vector<bool> reset = reset_flags(keep, s.T, s.B);
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "rims_forward_loop", [&] {
    result = forward_impl<scalar_t>(keys, values, weight_ih, h0, c0, hidden_weight, hidden_bias, qkv_weight, out_weight,
                                    out_bias, keep, reset, s, save);
  });
  return result;
}

std::vector<Tensor> backward_loop(const Tensor& dh, const Tensor& dc, const Tensor& grad_outputs, const Tensor& keys,
                                  const Tensor& values, const Tensor& weight_ih_t, const Tensor& mask,
                                  const Tensor& unmask, const Tensor& forget, const Tensor& cell_to_c,
                                  const Tensor& pre, const Tensor& p_factor, const Tensor& out, const Tensor& qkv,
                                  const Tensor& attention, const Tensor& hidden_weight_t, const Tensor& qkv_weight_t,
                                  const Tensor& out_weight_t, const Tensor& keep, int64_t comm_heads,
                                  int64_t comm_key, int64_t comm_value, bool communication) {
  check_contiguous({&dh, &dc, &grad_outputs, &keys, &values, &mask, &unmask, &forget, &cell_to_c, &pre, &p_factor,
                    &out, &qkv, &attention, &keep});
  // hidden_weight_t is (K, NP, U): the sizes come from its transpose.
  Sizes s =
      sizes(keys, dh, hidden_weight_t.transpose(1, 2), dh.size(0), comm_heads, comm_key, comm_value, communication);
  check_input_side(values, weight_ih_t, true, s);
  const std::vector<bool> reset = reset_flags(keep, s.T, s.B);
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "rims_backward_loop", [&] {
    result = backward_impl<scalar_t>(dh.clone(), dc.clone(), grad_outputs, keys, values, weight_ih_t, mask, unmask,
                                     forget, cell_to_c, pre, p_factor, out, qkv, attention, hidden_weight_t,
                                     qkv_weight_t, out_weight_t, keep, reset, s);
  });
  return result;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_loop", &forward_loop, "RIMs time loop forward (CPU)");
  m.def("backward_loop", &backward_loop, "RIMs time loop backward (CPU)");
}
