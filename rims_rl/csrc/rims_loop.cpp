// The fused RIMs time loop (rims_rl/rims_loop.py) for CPU tensors, compiled on first use.
//
// Same arithmetic as run_loop / the backward loop there, in the same step-major layouts. At recurrent
// PPO's minibatch shapes (a few sequences of 128 steps) each step's elementwise work is a few thousand
// numbers: here it runs as plain loops, and only the per-unit projections go through ATen (bmm), so a
// step costs a handful of dispatches instead of about thirty ops in each direction.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace {

using at::Tensor;

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
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

struct Sizes {
  int64_t T, B, K, U, G, H, dk, NP, Hc, ck, cv, QKV, k_active;
  bool comm, select;
};

Sizes sizes(const Tensor& keys, const Tensor& h0, const Tensor& hidden_weight, int64_t k_active, int64_t comm_heads,
            int64_t comm_key, int64_t comm_value, bool comm) {
  Sizes s{};
  s.T = keys.size(0);
  s.B = keys.size(1);
  s.H = keys.size(2);
  s.dk = keys.size(3);
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

// gates_in is (H, T, B, K, G), a row slice of a bigger (H, rows, K * G) tensor: contiguous below the head.
void check_gates(const Tensor& gates_in, const Sizes& s) {
  TORCH_CHECK(gates_in.dim() == 5 && gates_in.size(0) == s.H && gates_in.stride(4) == 1 &&
                  gates_in.stride(3) == s.G && gates_in.stride(2) == s.K * s.G && gates_in.stride(1) == s.B * s.K * s.G,
              "rims_loop: value gates must be (H, T, B, K, G), contiguous below the head");
}

template <typename scalar_t>
std::vector<Tensor> forward_impl(const Tensor& keys, const Tensor& gates_in, const Tensor& h0, const Tensor& c0,
                                 const Tensor& hidden_weight, const Tensor& hidden_bias, const Tensor& qkv_weight,
                                 const Tensor& out_weight, const Tensor& out_bias, const Tensor& keep,
                                 const std::vector<bool>& reset, const Sizes& s, bool save) {
  const int64_t T = s.T, B = s.B, K = s.K, U = s.U, G = s.G, H = s.H, dk = s.dk, NP = s.NP;
  const int64_t KB = K * B, KBU = K * B * U;
  auto opts = h0.options();
  auto stack = [&](std::initializer_list<int64_t> per_step) {
    std::vector<int64_t> shape{save ? T : 1};
    shape.insert(shape.end(), per_step);
    return at::empty(shape, opts);
  };
  // With save, each buffer holds every step (the backward's inputs); without, one step, reused.
  Tensor outputs = at::empty({T, K, B, U}, opts);
  Tensor h_in = stack({K, B, U}), c_in = stack({K, B, U}), q = stack({K, B, H * dk}), p = stack({K, B, H});
  Tensor act = stack({K, B, G}), g = stack({K, B, U}), tanh_c = stack({K, B, U}), h_mix = stack({K, B, U});
  Tensor mask = at::empty({save ? T : 1, K, B, 1}, opts.dtype(at::kBool));
  Tensor qkv, attention, read, sig, tanh_u, update;
  if (s.comm) {
    qkv = stack({K, B, s.QKV});
    attention = stack({K, K, B, s.Hc, 1});
    read = stack({K, B, s.Hc * s.cv});
    sig = stack({K, B, U});
    tanh_u = stack({K, B, U});
    update = at::empty({K, B, 2 * U}, opts);
  }
  Tensor projected = at::empty({K, B, NP}, opts);
  Tensor c_next = at::empty({K, B, U}, opts), h_cell = at::empty({K, B, U}, opts), c_new = at::empty({K, B, U}, opts);
  Tensor pre = at::empty({K, B, G}, opts);
  std::vector<scalar_t> p_null(K), scores(K);
  std::vector<int64_t> order(K);
  std::vector<char> active(KB, 1);

  const scalar_t* keys_p = keys.data_ptr<scalar_t>();
  const scalar_t* gates_p = gates_in.data_ptr<scalar_t>();
  const int64_t head_stride = gates_in.stride(0), step_stride = gates_in.stride(1);
  const scalar_t* keep_p = reset.empty() ? nullptr : keep.data_ptr<scalar_t>();

  for (int64_t t = 0; t < T; ++t) {
    const int64_t at_t = save ? t : 0;
    Tensor h_in_t = h_in[at_t], c_in_t = c_in[at_t], h_mix_t = h_mix[at_t];
    scalar_t* hin = h_in_t.data_ptr<scalar_t>();
    scalar_t* cin = c_in_t.data_ptr<scalar_t>();
    const scalar_t* hprev = t == 0 ? h0.data_ptr<scalar_t>() : outputs.data_ptr<scalar_t>() + (t - 1) * KBU;
    const scalar_t* cprev = t == 0 ? c0.data_ptr<scalar_t>() : c_next.data_ptr<scalar_t>();
    const bool resets = !reset.empty() && reset[t];
    for (int64_t k = 0; k < K; ++k)
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t kept = resets ? keep_p[t * B + b] : scalar_t(1);
        const int64_t row = (k * B + b) * U;
        for (int64_t u = 0; u < U; ++u) {
          hin[row + u] = resets ? hprev[row + u] * kept : hprev[row + u];
          cin[row + u] = resets ? cprev[row + u] * kept : cprev[row + u];
        }
      }
    at::baddbmm_out(projected, hidden_bias, h_in_t, hidden_weight);

    const scalar_t* proj = projected.data_ptr<scalar_t>();
    scalar_t* q_t = q[at_t].data_ptr<scalar_t>();
    scalar_t* p_t = p[at_t].data_ptr<scalar_t>();
    Tensor act_step = act[at_t];
    scalar_t* act_t = act_step.data_ptr<scalar_t>();
    Tensor g_step = g[at_t], tanh_c_step = tanh_c[at_t];
    scalar_t* g_t = g_step.data_ptr<scalar_t>();
    scalar_t* tanh_c_t = tanh_c_step.data_ptr<scalar_t>();
    scalar_t* cnew = c_new.data_ptr<scalar_t>();
    scalar_t* hcell = h_cell.data_ptr<scalar_t>();
    scalar_t* pre_p = pre.data_ptr<scalar_t>();
    const scalar_t* gates_t = gates_p + t * step_stride;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t b = 0; b < B; ++b) {
        const int64_t kb = k * B + b;
        const scalar_t* pr = proj + kb * NP;
        scalar_t* pp = p_t + kb * H;
        for (int64_t h = 0; h < H; ++h) pp[h] = sigmoid(dot(pr + G + h * dk, keys_p + ((t * B + b) * H + h) * dk, dk));
        std::copy(pr + G, pr + NP, q_t + kb * H * dk);
        scalar_t* row_pre = pre_p + kb * G;
        std::fill(row_pre, row_pre + G, scalar_t(0));
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* gate_row = gates_t + h * head_stride + (b * K + k) * G;
          const scalar_t weight = pp[h];
          for (int64_t j = 0; j < G; ++j) row_pre[j] += weight * gate_row[j];
        }
        for (int64_t j = 0; j < G; ++j) row_pre[j] += pr[j];
      }
    // Transcendentals over the whole step in ATen's vectorised kernels (one sigmoid over all four gates,
    // as the Python loop does; the candidate's slot in it goes unused).
    at::sigmoid_out(act_step, pre);
    at::tanh_out(g_step, pre.narrow(2, 2 * U, U));
    for (int64_t kb = 0; kb < KB; ++kb) {
      const scalar_t* a = act_t + kb * G;
      const int64_t row = kb * U;
      for (int64_t u = 0; u < U; ++u) cnew[row + u] = a[U + u] * cin[row + u] + a[u] * g_t[row + u];
    }
    at::tanh_out(tanh_c_step, c_new);
    for (int64_t kb = 0; kb < KB; ++kb) {
      const scalar_t* a = act_t + kb * G;
      const int64_t row = kb * U;
      for (int64_t u = 0; u < U; ++u) hcell[row + u] = a[3 * U + u] * tanh_c_t[row + u];
    }

    // The k_active units with the least attention on the null row; ties go to the lower index.
    if (s.select) {
      std::fill(active.begin(), active.end(), 0);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t k = 0; k < K; ++k) {
          const scalar_t* pp = p_t + (k * B + b) * H;
          scalar_t total = 0;
          for (int64_t h = 0; h < H; ++h) total += pp[h];
          p_null[k] = scalar_t(1) - total / scalar_t(H);
        }
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return p_null[x] < p_null[y]; });
        for (int64_t r = 0; r < s.k_active; ++r) active[order[r] * B + b] = 1;
      }
    }
    bool* mask_t = mask[at_t].data_ptr<bool>();
    scalar_t* hmix = h_mix_t.data_ptr<scalar_t>();
    scalar_t* cnext = c_next.data_ptr<scalar_t>();
    for (int64_t kb = 0; kb < KB; ++kb) {
      const bool on = active[kb];
      mask_t[kb] = on;
      const int64_t row = kb * U;
      for (int64_t u = 0; u < U; ++u) {
        hmix[row + u] = on ? hcell[row + u] : hin[row + u];
        cnext[row + u] = on ? cnew[row + u] : cin[row + u];
      }
    }

    scalar_t* out_t = outputs.data_ptr<scalar_t>() + t * KBU;
    if (!s.comm) {
      std::copy(hmix, hmix + KBU, out_t);
      continue;
    }
    const int64_t Hc = s.Hc, ck = s.ck, cv = s.cv, QKV = s.QKV;
    Tensor qkv_t = qkv[at_t], read_t = read[at_t];
    at::bmm_out(qkv_t, h_mix_t, qkv_weight);
    const scalar_t* x = qkv_t.data_ptr<scalar_t>();
    scalar_t* att = attention[at_t].data_ptr<scalar_t>();
    scalar_t* rd = read_t.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t hh = 0; hh < Hc; ++hh)
        for (int64_t i = 0; i < K; ++i) {
          const scalar_t* query = x + (i * B + b) * QKV + hh * ck;
          scalar_t top = -std::numeric_limits<scalar_t>::infinity();
          for (int64_t j = 0; j < K; ++j) {
            scores[j] = dot(query, x + (j * B + b) * QKV + Hc * ck + hh * ck, ck);
            top = std::max(top, scores[j]);
          }
          scalar_t total = 0;
          for (int64_t j = 0; j < K; ++j) {
            scores[j] = std::exp(scores[j] - top);
            total += scores[j];
          }
          scalar_t* r = rd + (i * B + b) * Hc * cv + hh * cv;
          std::fill(r, r + cv, scalar_t(0));
          for (int64_t j = 0; j < K; ++j) {
            const scalar_t weight = scores[j] / total;
            att[((i * K + j) * B + b) * Hc + hh] = weight;
            const scalar_t* value = x + (j * B + b) * QKV + 2 * Hc * ck + hh * cv;
            for (int64_t e = 0; e < cv; ++e) r[e] += weight * value[e];
          }
        }
    at::baddbmm_out(update, out_bias, read_t, out_weight);
    Tensor sig_step = sig[at_t], tanh_u_step = tanh_u[at_t];
    at::sigmoid_out(sig_step, update.narrow(2, U, U));
    at::tanh_out(tanh_u_step, update.narrow(2, 0, U));
    const scalar_t* sig_t = sig_step.data_ptr<scalar_t>();
    const scalar_t* tanh_u_t = tanh_u_step.data_ptr<scalar_t>();
    for (int64_t kb = 0; kb < KB; ++kb) {
      const int64_t row = kb * U;
      for (int64_t u = 0; u < U; ++u)
        out_t[row + u] = hmix[row + u] + (active[kb] ? sig_t[row + u] * tanh_u_t[row + u] : scalar_t(0));
    }
  }

  std::vector<Tensor> result{outputs, outputs[T - 1].clone(), c_next};
  if (save) {
    result.insert(result.end(), {h_in, c_in, q.view({T, K, B, H, dk}), p, s.select ? mask : Tensor(), act, g, tanh_c,
                                 h_mix});
    if (s.comm) result.insert(result.end(), {qkv, attention, read, sig, tanh_u});
  }
  return result;
}

template <typename scalar_t>
std::vector<Tensor> backward_impl(Tensor dh, Tensor dc, const Tensor& grad_outputs, const Tensor& keys,
                                  const Tensor& gates_in, const Tensor& mask, const Tensor& unmask, const Tensor& forget,
                                  const Tensor& cell_to_c, const Tensor& pre, const Tensor& p, const Tensor& out,
                                  const Tensor& qkv, const Tensor& attention, const Tensor& hidden_weight_t,
                                  const Tensor& qkv_weight_t, const Tensor& out_weight_t, const Tensor& keep,
                                  const std::vector<bool>& reset, const Sizes& s) {
  const int64_t T = s.T, B = s.B, K = s.K, U = s.U, G = s.G, H = s.H, dk = s.dk, NP = s.NP;
  const int64_t KB = K * B, KBU = K * B * U;
  auto opts = dh.options();
  Tensor grad_projected = at::empty({T, K, B, NP}, opts), grad_scores = at::empty({T, K, B, H}, opts);
  Tensor grad_qkv, grad_out, d_read;
  if (s.comm) {
    grad_qkv = at::empty({T, K, B, s.QKV}, opts);
    grad_out = at::empty({T, K, B, 2 * U}, opts);
    d_read = at::empty({K, B, s.Hc * s.cv}, opts);
  }
  Tensor dh_in = at::empty({K, B, U}, opts), d_mix = at::empty({K, B, U}, opts), d_mix_kept = at::empty({K, B, U}, opts);
  std::vector<scalar_t> d_pre(G), d_att(K * K), d_scores(K * K);
  const scalar_t* keys_p = keys.data_ptr<scalar_t>();
  const scalar_t* gates_p = gates_in.data_ptr<scalar_t>();
  const int64_t head_stride = gates_in.stride(0), step_stride = gates_in.stride(1);
  const scalar_t* keep_p = reset.empty() ? nullptr : keep.data_ptr<scalar_t>();
  const scalar_t* mask_p = mask.data_ptr<scalar_t>();
  const scalar_t* unmask_p = unmask.data_ptr<scalar_t>();
  const scalar_t* forget_p = forget.data_ptr<scalar_t>();
  const scalar_t* cell_p = cell_to_c.data_ptr<scalar_t>();
  const scalar_t* pre_p = pre.data_ptr<scalar_t>();
  const scalar_t* p_p = p.data_ptr<scalar_t>();

  for (int64_t t = T - 1; t >= 0; --t) {
    scalar_t* dhp = dh.data_ptr<scalar_t>();
    scalar_t* dcp = dc.data_ptr<scalar_t>();
    scalar_t* dhi = dh_in.data_ptr<scalar_t>();
    const scalar_t* go = grad_outputs.data_ptr<scalar_t>() + t * KBU;
    for (int64_t n = 0; n < KBU; ++n) dhi[n] = dhp[n] + go[n];

    const scalar_t* dmix = dhi;
    if (s.comm) {
      const int64_t Hc = s.Hc, ck = s.ck, cv = s.cv, QKV = s.QKV;
      Tensor d_out_t = grad_out[t], d_qkv_t = grad_qkv[t];
      scalar_t* dout = d_out_t.data_ptr<scalar_t>();
      const scalar_t* of = out.data_ptr<scalar_t>() + t * KB * 2 * U;
      for (int64_t kb = 0; kb < KB; ++kb)
        for (int64_t half = 0; half < 2; ++half)
          for (int64_t u = 0; u < U; ++u)
            dout[(kb * 2 + half) * U + u] = dhi[kb * U + u] * of[(kb * 2 + half) * U + u];
      at::bmm_out(d_read, d_out_t, out_weight_t);
      const scalar_t* dr = d_read.data_ptr<scalar_t>();
      const scalar_t* x = qkv.data_ptr<scalar_t>() + t * KB * QKV;
      const scalar_t* att = attention.data_ptr<scalar_t>() + t * K * K * B * Hc;
      scalar_t* dx = d_qkv_t.data_ptr<scalar_t>();
      std::fill(dx, dx + KB * QKV, scalar_t(0));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t hh = 0; hh < Hc; ++hh) {
          for (int64_t i = 0; i < K; ++i) {
            const scalar_t* read_grad = dr + (i * B + b) * Hc * cv + hh * cv;
            scalar_t weighted = 0;
            for (int64_t j = 0; j < K; ++j) {
              const scalar_t total = dot(read_grad, x + (j * B + b) * QKV + 2 * Hc * ck + hh * cv, cv);
              d_att[i * K + j] = total;
              weighted += att[((i * K + j) * B + b) * Hc + hh] * total;
            }
            for (int64_t j = 0; j < K; ++j) {
              const scalar_t a = att[((i * K + j) * B + b) * Hc + hh];
              d_scores[i * K + j] = a * (d_att[i * K + j] - weighted);
            }
          }
          for (int64_t i = 0; i < K; ++i) {
            const scalar_t* query = x + (i * B + b) * QKV + hh * ck;
            scalar_t* d_query = dx + (i * B + b) * QKV + hh * ck;
            const scalar_t* read_grad = dr + (i * B + b) * Hc * cv + hh * cv;
            for (int64_t j = 0; j < K; ++j) {
              const scalar_t ds = d_scores[i * K + j], a = att[((i * K + j) * B + b) * Hc + hh];
              const scalar_t* key = x + (j * B + b) * QKV + Hc * ck + hh * ck;
              scalar_t* d_key = dx + (j * B + b) * QKV + Hc * ck + hh * ck;
              scalar_t* d_value = dx + (j * B + b) * QKV + 2 * Hc * ck + hh * cv;
              for (int64_t d = 0; d < ck; ++d) {
                d_query[d] += ds * key[d];
                d_key[d] += ds * query[d];
              }
              for (int64_t e = 0; e < cv; ++e) d_value[e] += a * read_grad[e];
            }
          }
        }
      at::baddbmm_out(d_mix, dh_in, d_qkv_t, qkv_weight_t);
      dmix = d_mix.data_ptr<scalar_t>();
    }

    scalar_t* dproj = grad_projected.data_ptr<scalar_t>() + t * KB * NP;
    scalar_t* dsc = grad_scores.data_ptr<scalar_t>() + t * KB * H;
    scalar_t* kept = d_mix_kept.data_ptr<scalar_t>();
    const scalar_t* gates_t = gates_p + t * step_stride;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t b = 0; b < B; ++b) {
        const int64_t kb = k * B + b, row = kb * U, step_kb = t * KB + kb;
        const scalar_t on = mask_p[step_kb], off = unmask_p[step_kb];
        const scalar_t* f = forget_p + step_kb * U;
        const scalar_t* to_c = cell_p + step_kb * U;
        const scalar_t* slopes = pre_p + step_kb * G;  // (i, f, g, o) x U
        for (int64_t u = 0; u < U; ++u) {
          const scalar_t dm = dmix[row + u];
          const scalar_t dcn = dcp[row + u] * on + dm * to_c[u];
          d_pre[u] = dcn * slopes[u];
          d_pre[U + u] = dcn * slopes[U + u];
          d_pre[2 * U + u] = dcn * slopes[2 * U + u];
          d_pre[3 * U + u] = dm * slopes[3 * U + u];
          dcp[row + u] = dcp[row + u] * off + dcn * f[u];
          kept[row + u] = dm * off;
        }
        scalar_t* dp = dproj + kb * NP;
        std::copy(d_pre.begin(), d_pre.end(), dp);
        const scalar_t* slope = p_p + step_kb * H;
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t d_score = dot(gates_t + h * head_stride + (b * K + k) * G, d_pre.data(), G) * slope[h];
          dsc[kb * H + h] = d_score;
          const scalar_t* key = keys_p + ((t * B + b) * H + h) * dk;
          for (int64_t d = 0; d < dk; ++d) dp[G + h * dk + d] = d_score * key[d];
        }
      }
    at::baddbmm_out(dh, d_mix_kept, grad_projected[t], hidden_weight_t);
    if (!reset.empty() && reset[t]) {
      dhp = dh.data_ptr<scalar_t>();
      for (int64_t kb = 0; kb < KB; ++kb) {
        const scalar_t factor = keep_p[t * B + kb % B];
        for (int64_t u = 0; u < U; ++u) {
          dhp[kb * U + u] *= factor;
          dcp[kb * U + u] *= factor;
        }
      }
    }
  }
  std::vector<Tensor> result{dh, dc, grad_projected, grad_scores};
  if (s.comm) result.insert(result.end(), {grad_qkv, grad_out});
  return result;
}

std::vector<bool> reset_flags(const std::vector<int64_t>& reset_steps, int64_t steps) {
  std::vector<bool> flags;
  if (reset_steps.empty()) return flags;
  flags.assign(steps, false);
  for (int64_t t : reset_steps) {
    TORCH_CHECK(t >= 0 && t < steps, "rims_loop: reset step ", t, " out of range");
    flags[t] = true;
  }
  return flags;
}

void check_contiguous(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* x : tensors)
    TORCH_CHECK(!x->defined() || x->numel() == 0 || (x->is_contiguous() && x->device().is_cpu()),
                "rims_loop: expected contiguous CPU tensors");
}

std::vector<Tensor> forward_loop(const Tensor& keys, const Tensor& gates_in, const Tensor& h0, const Tensor& c0,
                                 const Tensor& hidden_weight, const Tensor& hidden_bias, const Tensor& qkv_weight,
                                 const Tensor& out_weight, const Tensor& out_bias, const Tensor& keep,
                                 std::vector<int64_t> reset_steps, int64_t k_active, int64_t comm_heads,
                                 int64_t comm_key, int64_t comm_value, bool communication, bool save) {
  check_contiguous({&keys, &h0, &c0, &hidden_weight, &keep});
  const Sizes s = sizes(keys, h0, hidden_weight, k_active, comm_heads, comm_key, comm_value, communication);
  check_gates(gates_in, s);
  const std::vector<bool> reset = reset_flags(reset_steps, s.T);
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "rims_forward_loop", [&] {
    result = forward_impl<scalar_t>(keys, gates_in, h0, c0, hidden_weight, hidden_bias, qkv_weight, out_weight,
                                    out_bias, keep, reset, s, save);
  });
  return result;
}

std::vector<Tensor> backward_loop(const Tensor& dh, const Tensor& dc, const Tensor& grad_outputs, const Tensor& keys,
                                  const Tensor& gates_in, const Tensor& mask, const Tensor& unmask,
                                  const Tensor& forget, const Tensor& cell_to_c, const Tensor& pre, const Tensor& p,
                                  const Tensor& out, const Tensor& qkv, const Tensor& attention,
                                  const Tensor& hidden_weight_t, const Tensor& qkv_weight_t,
                                  const Tensor& out_weight_t, const Tensor& keep, std::vector<int64_t> reset_steps,
                                  int64_t comm_heads, int64_t comm_key, int64_t comm_value, bool communication) {
  check_contiguous({&dh, &dc, &grad_outputs, &keys, &mask, &unmask, &forget, &cell_to_c, &pre, &p, &out, &qkv,
                    &attention, &keep});
  // hidden_weight_t is (K, NP, U): the sizes come from its transpose.
  const Sizes s =
      sizes(keys, dh, hidden_weight_t.transpose(1, 2), dh.size(0), comm_heads, comm_key, comm_value, communication);
  check_gates(gates_in, s);
  const std::vector<bool> reset = reset_flags(reset_steps, s.T);
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "rims_backward_loop", [&] {
    result = backward_impl<scalar_t>(dh.clone(), dc.clone(), grad_outputs, keys, gates_in, mask, unmask, forget,
                                     cell_to_c, pre, p, out, qkv, attention, hidden_weight_t, qkv_weight_t,
                                     out_weight_t, keep, reset, s);
  });
  return result;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_loop", &forward_loop, "RIMs time loop forward (CPU)");
  m.def("backward_loop", &backward_loop, "RIMs time loop backward (CPU)");
}
