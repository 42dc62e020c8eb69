// One-pass Adam / AdamW / Nadam / NadamW on float32 leaves, in place, split over XLA's
// intra-op threads.
//
// The jax.ffi target behind adamlab.optim.one_pass. Per element it reads the parameter p,
// the gradient g and the moments m, v once and writes p, m, v once: 28 bytes per parameter,
// where XLA's own program for the same step moves 40 (three passes: XLA:CPU splits a loop
// fusion over threads only when it has one output). Each line below is the line of the
// JAX program it replaces, in the same order of float32 operations (no contraction into
// fused multiply-adds: the build passes -ffp-contract=off), so the two agree bit for bit
// wherever XLA rounds as IEEE does:
//
//   m = (1 - b1) g + b1 m                       numerics.first_moment
//   v = (1 - b2) (g g) + b2 v                   numerics.second_moment
//   n = m r1              (Adam)                fused.scale_by_adam (r = 1 / (1 - b^t))
//   n = m r1 + cg g       (Nadam, cg != 0)      fused.nesterov_coefficients (r1, cg)
//   u = n / (sqrt(v r2 + eps_root) + eps)       numerics.adaptive_step
//   u = u + wd p          (AdamW, wd != 0)      transform.add_decayed_weights
//   p = p + (-lr) u                             scale_by_learning_rate, optax.apply_updates
//
// Arguments: coefficients f32[..., 11] (step_size = -lr, b1, 1 - b1, b2, 1 - b2, r1, r2, eps,
// eps_root, wd, cg), then (p, g, m, v) for every leaf; results (p, m, v) for every leaf,
// aliased to the inputs. Leading dimensions of the coefficients are rows (vmap's batch): row r
// of every leaf (its r-th contiguous slice) is updated with row r of the coefficients.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kNumCoefficients = 11;
// Elements per unit of work: 256 KB of each array, small enough to balance two threads on a
// 1M-parameter step, large enough that the atomic counter costs nothing.
constexpr int64_t kChunk = 1 << 16;

// A contiguous run of elements that share one row of coefficients.
struct Segment {
  float* p;
  float* m;
  float* v;
  const float* g;
  const float* c;
  int64_t size;
};

template <bool kDecay, bool kNesterov>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void UpdateRange(float* __restrict p, float* __restrict m, float* __restrict v,
                 const float* __restrict g, const float* c, int64_t begin, int64_t end) {
  const float step_size = c[0], b1 = c[1], one_minus_b1 = c[2], b2 = c[3],
              one_minus_b2 = c[4], r1 = c[5], r2 = c[6], eps = c[7], eps_root = c[8],
              wd = c[9], cg = c[10];
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float mi = one_minus_b1 * gi + b1 * m[i];
    const float vi = one_minus_b2 * (gi * gi) + b2 * v[i];
    const float numerator = kNesterov ? mi * r1 + cg * gi : mi * r1;
    float u = numerator / (std::sqrt(vi * r2 + eps_root) + eps);
    if (kDecay) u = u + wd * p[i];
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] + step_size * u;
  }
}

// Updates elements [begin, end) of the concatenation of all segments.
void UpdateSpan(const std::vector<Segment>& segments, int64_t begin, int64_t end) {
  int64_t offset = 0;
  for (const Segment& s : segments) {
    const int64_t lo = std::max(begin - offset, int64_t{0});
    const int64_t hi = std::min(end - offset, s.size);
    offset += s.size;
    if (lo >= hi) continue;
    // wd == 0: no decay term (wd * p would turn an infinite parameter into NaN; the JAX
    // program skips it); cg == 0: Adam, no look-ahead term.
    const bool decay = s.c[9] != 0.0f, nesterov = s.c[10] != 0.0f;
    if (decay && nesterov) {
      UpdateRange<true, true>(s.p, s.m, s.v, s.g, s.c, lo, hi);
    } else if (decay) {
      UpdateRange<true, false>(s.p, s.m, s.v, s.g, s.c, lo, hi);
    } else if (nesterov) {
      UpdateRange<false, true>(s.p, s.m, s.v, s.g, s.c, lo, hi);
    } else {
      UpdateRange<false, false>(s.p, s.m, s.v, s.g, s.c, lo, hi);
    }
    if (offset >= end) break;
  }
}

// The work of one call, shared by the calling thread and the pool's helpers. Helpers hold it
// by shared_ptr: one that starts after the work is done finds no chunk left and returns.
struct Work {
  std::vector<Segment> segments;
  std::vector<float> coefficients;
  int64_t total = 0;
  int64_t chunks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Run() {
    for (int64_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      UpdateSpan(segments, k * kChunk, std::min(total, (k + 1) * kChunk));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error Check(bool ok, const std::string& what) {
  return ok ? ffi::Error::Success() : ffi::Error::InvalidArgument("adam_one_pass: " + what);
}

ffi::Error AdamOnePass(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coefficients,
                       ffi::RemainingArgs args, ffi::RemainingRets rets) {
  const int64_t num_leaves = static_cast<int64_t>(args.size()) / 4;
  if (auto e = Check(args.size() % 4 == 0 && rets.size() == 3 * args.size() / 4,
                     "expects (p, g, m, v) per leaf in and (p, m, v) per leaf out");
      e.failure()) {
    return e;
  }
  const int64_t num_coefficients = coefficients.element_count();
  const int64_t rows = num_coefficients / kNumCoefficients;
  if (auto e = Check(rows >= 1 && num_coefficients % kNumCoefficients == 0,
                     "coefficients must be f32[..., 11]");
      e.failure()) {
    return e;
  }
  auto work = std::make_shared<Work>();
  work->coefficients.assign(coefficients.typed_data(),
                            coefficients.typed_data() + num_coefficients);
  for (int64_t leaf = 0; leaf < num_leaves; ++leaf) {
    ffi::AnyBuffer in[4] = {*args.get<ffi::AnyBuffer>(4 * leaf),
                            *args.get<ffi::AnyBuffer>(4 * leaf + 1),
                            *args.get<ffi::AnyBuffer>(4 * leaf + 2),
                            *args.get<ffi::AnyBuffer>(4 * leaf + 3)};
    ffi::AnyBuffer out[3] = {**rets.get<ffi::AnyBuffer>(3 * leaf),
                             **rets.get<ffi::AnyBuffer>(3 * leaf + 1),
                             **rets.get<ffi::AnyBuffer>(3 * leaf + 2)};
    const int64_t size = static_cast<int64_t>(in[0].element_count());
    bool ok = size % rows == 0;
    for (const ffi::AnyBuffer& b : in) {
      ok = ok && b.element_type() == ffi::DataType::F32 &&
           static_cast<int64_t>(b.element_count()) == size;
    }
    for (const ffi::AnyBuffer& b : out) {
      ok = ok && b.element_type() == ffi::DataType::F32 &&
           static_cast<int64_t>(b.element_count()) == size;
    }
    if (!ok) {
      return Check(false, "leaf " + std::to_string(leaf) +
                              ": p, g, m, v must be float32 of one size, divisible by the "
                              "coefficients' rows");
    }
    // The results alias p, m, v; copying first keeps the kernel right if XLA did not alias.
    float* p = out[0].typed_data<float>();
    float* m = out[1].typed_data<float>();
    float* v = out[2].typed_data<float>();
    if (p != in[0].typed_data<float>()) std::copy_n(in[0].typed_data<float>(), size, p);
    if (m != in[2].typed_data<float>()) std::copy_n(in[2].typed_data<float>(), size, m);
    if (v != in[3].typed_data<float>()) std::copy_n(in[3].typed_data<float>(), size, v);
    const float* g = in[1].typed_data<float>();
    const int64_t row_size = size / rows;
    for (int64_t r = 0; r < rows && row_size > 0; ++r) {
      const int64_t at = r * row_size;
      const float* c = work->coefficients.data() + r * kNumCoefficients;
      work->segments.push_back(Segment{p + at, m + at, v + at, g + at, c, row_size});
    }
    work->total += size;
  }
  work->chunks = (work->total + kChunk - 1) / kChunk;
  const int64_t helpers =
      std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), work->chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Run(); });
  work->Run();
  while (work->done.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamlabAdamOnePass, AdamOnePass,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets());
