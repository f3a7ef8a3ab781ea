// Row-pair driver: validation, threading, and the per-row bookkeeping around
// the vector kernels (normalisers, top-k lists, target statistics).
#include "qfair/divergence.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.hpp"
#include "qfair/parallel.hpp"

namespace qfair {
namespace detail {

namespace {
// (value, id) a is better than b: larger value, then lower id.
inline bool better(float av, int64_t aid, float bv, int64_t bid) {
    return av > bv || (av == bv && aid < bid);
}

// Heap with the worst element at index 0 ("worse" is the heap's "greater").
void sift_down(TopK& t, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < t.size && better(t.value[w], t.id[w], t.value[l], t.id[l])) w = l;
        if (r < t.size && better(t.value[w], t.id[w], t.value[r], t.id[r])) w = r;
        if (w == i) return;
        std::swap(t.value[i], t.value[w]);
        std::swap(t.id[i], t.id[w]);
        i = w;
    }
}

void sift_up(TopK& t, int i) {
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!better(t.value[parent], t.id[parent], t.value[i], t.id[i])) return;
        std::swap(t.value[i], t.value[parent]);
        std::swap(t.id[i], t.id[parent]);
        i = parent;
    }
}
}  // namespace

void topk_reset(TopK& t) {
    t.size = 0;
    t.threshold = -std::numeric_limits<float>::infinity();
}

void topk_offer(TopK& t, float value, int64_t id) {
    if (t.size < t.k) {
        t.value[t.size] = value;
        t.id[t.size] = id;
        sift_up(t, t.size);
        ++t.size;
        if (t.size == t.k) t.threshold = t.value[0];
        return;
    }
    if (!better(value, id, t.value[0], t.id[0])) return;
    t.value[0] = value;
    t.id[0] = id;
    sift_down(t, 0);
    t.threshold = t.value[0];
}

void topk_sort(TopK& t) {
    std::vector<std::pair<float, int64_t>> items(static_cast<size_t>(t.size));
    for (int i = 0; i < t.size; ++i) items[i] = {t.value[i], t.id[i]};
    std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
        return better(a.first, a.second, b.first, b.second);
    });
    for (int i = 0; i < t.size; ++i) {
        t.value[i] = items[i].first;
        t.id[i] = items[i].second;
    }
}

}  // namespace detail

namespace {

using detail::Kernels;
using detail::ScanResult;
using detail::TopK;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr float kNaNf = std::numeric_limits<float>::quiet_NaN();

size_t element_size(DType d) { return d == DType::F32 ? 4 : 2; }

const void* row_ptr(const Matrix& m, int64_t r) {
    return static_cast<const char*>(m.data) +
           static_cast<size_t>(r) * static_cast<size_t>(m.row_stride) * element_size(m.dtype);
}

float element(const Matrix& m, int64_t r, int64_t c) {
    const void* row = row_ptr(m, r);
    switch (m.dtype) {
        case DType::F32: return static_cast<const float*>(row)[c];
        case DType::BF16: {
            uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(row)[c]) << 16;
            float f;
            std::memcpy(&f, &bits, 4);
            return f;
        }
        default: {
            uint16_t h = static_cast<const uint16_t*>(row)[c];
            uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, em = h & 0x7fffu, bits;
            if (em >= 0x7c00u) {
                bits = (em << 13) | 0x7f800000u;
            } else {
                float f;
                uint32_t shifted = em << 13;
                std::memcpy(&f, &shifted, 4);
                f *= 0x1p112f;
                std::memcpy(&bits, &f, 4);
            }
            bits |= sign;
            float out;
            std::memcpy(&out, &bits, 4);
            return out;
        }
    }
}

void check_matrix(const Matrix& m, const char* name) {
    if (m.rows < 0) throw std::invalid_argument(std::string(name) + ": negative row count");
    if (m.cols < 1) throw std::invalid_argument(std::string(name) + ": vocabulary size must be >= 1");
    if (m.row_stride < m.cols)
        throw std::invalid_argument(std::string(name) + ": row stride " + std::to_string(m.row_stride) +
                                    " is smaller than the vocabulary size " + std::to_string(m.cols));
    if (m.rows > 0 && m.data == nullptr) throw std::invalid_argument(std::string(name) + ": null data");
}

// Checked by the worker that owns the row, so a bad id is reported from
// whichever thread meets it (and exercises exception propagation).
int64_t target_of(const int64_t* targets, int64_t r, int64_t cols) {
    if (targets == nullptr) return -1;
    const int64_t t = targets[r];
    if (t >= cols)
        throw std::invalid_argument("targets: row " + std::to_string(r) + " has token id " + std::to_string(t) +
                                    ", outside the vocabulary of size " + std::to_string(cols));
    return t;
}

// A thread per few rows at least: fewer are not worth their start-up cost.
constexpr int64_t kRowsPerThread = 4;

// Scratch owned by one worker: the two top-k heaps and the overlap buffers.
struct Scratch {
    std::vector<float> value_p, value_q;
    std::vector<int64_t> id_p, id_q, sorted_p, sorted_q;
    std::vector<float> exp_p, exp_q;  // exp(x - max) per row, reused by the joint pass
    Scratch(int k, int64_t cols)
        : value_p(k), value_q(k), id_p(k), id_q(k), sorted_p(k), sorted_q(k),
          exp_p(static_cast<size_t>(cols) + 16), exp_q(static_cast<size_t>(cols) + 16) {}
    TopK heap_p() { return TopK{value_p.data(), id_p.data(), static_cast<int>(value_p.size()), 0, 0.f}; }
    TopK heap_q() { return TopK{value_q.data(), id_q.data(), static_cast<int>(value_q.size()), 0, 0.f}; }
};

struct SideRow {
    ScanResult scan;
    double log_norm;  // log sum_v exp(x[v]); NaN when invalid
    double total;     // sum_v exp(x[v] - max)
    double entropy;   // -sum p log p
    bool valid;
    float target_value;
};

// want_entropy: also the sum the entropy needs (s.entropy is NaN without it).
SideRow process_side(const Kernels& k, const Matrix& m, int64_t r, int64_t target, TopK* heap,
                     float* exp_store, bool want_entropy) {
    SideRow s;
    s.target_value = target >= 0 ? element(m, r, target) : kNaNf;
    const void* row = row_ptr(m, r);
    if (heap != nullptr) detail::topk_reset(*heap);
    s.scan = k.scan(row, m.dtype, m.cols, s.target_value, heap);
    s.valid = !s.scan.invalid;
    s.log_norm = kNaN;
    s.total = kNaN;
    s.entropy = kNaN;
    if (s.valid) {
        detail::SumExp se = k.sum_exp(row, m.dtype, m.cols, s.scan.max, exp_store, want_entropy);
        s.valid = std::isfinite(se.total);  // NaN: the row holds a NaN
        if (s.valid) {
            s.total = se.total;
            s.log_norm = static_cast<double>(s.scan.max) + std::log(se.total);
            s.entropy = std::log(se.total) - se.weighted / se.total;
            if (heap != nullptr) detail::topk_sort(*heap);
        }
    }
    return s;
}

void write_side(const SideRow& s, const TopK& heap, int64_t r, int64_t target, const SideOutputs& o) {
    if (!s.valid) {
        if (o.entropy) o.entropy[r] = kNaN;
        if (o.maxprob) o.maxprob[r] = kNaN;
        if (o.margin) o.margin[r] = kNaN;
        if (o.argmax) o.argmax[r] = -1;
        if (o.logprob) o.logprob[r] = kNaN;
        if (o.rank) o.rank[r] = -1;
        return;
    }
    double top1 = std::exp(static_cast<double>(heap.value[0]) - s.log_norm);
    double top2 = heap.size > 1 ? std::exp(static_cast<double>(heap.value[1]) - s.log_norm) : 0.0;
    if (o.entropy) o.entropy[r] = s.entropy;
    if (o.maxprob) o.maxprob[r] = top1;
    if (o.margin) o.margin[r] = top1 - top2;
    if (o.argmax) o.argmax[r] = heap.id[0];
    if (o.logprob) o.logprob[r] = target >= 0 ? static_cast<double>(s.target_value) - s.log_norm : kNaN;
    if (o.rank) o.rank[r] = target >= 0 ? 1 + s.scan.greater : -1;
}

// |first kk of a  &  first kk of b|, ids within each list are distinct.
int64_t intersection(const int64_t* a, const int64_t* b, int kk, int64_t* sa, int64_t* sb) {
    std::copy(a, a + kk, sa);
    std::copy(b, b + kk, sb);
    std::sort(sa, sa + kk);
    std::sort(sb, sb + kk);
    int64_t n = 0;
    for (int i = 0, j = 0; i < kk && j < kk;) {
        if (sa[i] < sb[j]) ++i;
        else if (sb[j] < sa[i]) ++j;
        else { ++n; ++i; ++j; }
    }
    return n;
}

// Splits a double into hi + lo floats (hi = nearest float, lo = the rest).
void split(double v, float& hi, float& lo) {
    hi = static_cast<float>(v);
    lo = static_cast<float>(v - static_cast<double>(hi));
}

}  // namespace

InvalidCounts divergence(const Matrix& p, const Matrix& q, const int64_t* targets,
                         const DivergenceOptions& options, DivergenceOutputs& out) {
    check_matrix(p, "p");
    check_matrix(q, "q");
    if (p.rows != q.rows || p.cols != q.cols)
        throw std::invalid_argument("p and q must have the same shape, got [" + std::to_string(p.rows) + ", " +
                                    std::to_string(p.cols) + "] and [" + std::to_string(q.rows) + ", " +
                                    std::to_string(q.cols) + "]");
    if (out.overlap.size() != options.topk.size())
        throw std::invalid_argument("one overlap output is needed per top-k value");
    int kmax = 2;  // margin needs the two best
    for (int kk : options.topk) {
        if (kk < 1 || kk > 1000)
            throw std::invalid_argument("top-k values must be in [1, 1000], got " + std::to_string(kk));
        kmax = std::max(kmax, kk);
    }
    const Kernels& k = detail::active_kernels();
    const int64_t n = p.cols;
    const int threads = resolve_threads(options.threads, p.rows, kRowsPerThread);
    std::vector<InvalidCounts> counts(static_cast<size_t>(std::max(threads, 1)));
    // Only what some output asks for is computed: the joint pass (and the
    // stored e^y it reads) for KL / JS / TV, the entropy's weighted sums.
    // Validity (and so the invalid counts) never depends on it.
    const bool want_joint = out.kl_pq || out.kl_qp || out.js || out.tv;
    const bool want_js = out.js != nullptr;

    // Rows in chunks as threads free up (each row writes only its own outputs;
    // the invalid counts are sums): a thread slowed by another job on its CPU,
    // such as the hash thread of a verified analysis, takes fewer.
    const int64_t chunk = std::max<int64_t>(kRowsPerThread, dynamic_chunk(p.rows, threads, 32));
    parallel_for_dynamic(p.rows, threads, chunk, [&](int worker, auto& next) {
        Scratch s(kmax, n);
        TopK hp = s.heap_p(), hq = s.heap_q();
        InvalidCounts& c = counts[static_cast<size_t>(worker)];
        for (int64_t begin, end; next(begin, end);) {
            for (int64_t r = begin; r < end; ++r) {
                const int64_t t = target_of(targets, r, p.cols);
                SideRow sp = process_side(k, p, r, t, &hp, want_joint ? s.exp_p.data() : nullptr,
                                          out.p.entropy != nullptr);
                SideRow sq = process_side(k, q, r, t, &hq, want_joint ? s.exp_q.data() : nullptr,
                                          out.q.entropy != nullptr);
                c.p += !sp.valid;
                c.q += !sq.valid;
                const bool both = sp.valid && sq.valid;
                c.rows += !both;
                detail::JointSums js{kNaN, kNaN, kNaN, kNaN};
                if (both && want_joint) {
                    detail::JointArgs a;
                    a.want_js = want_js;
                    a.p = row_ptr(p, r);
                    a.dp = p.dtype;
                    a.q = row_ptr(q, r);
                    a.dq = q.dtype;
                    a.p_hat = s.exp_p.data();
                    a.q_hat = s.exp_q.data();
                    a.n = n;
                    split(sq.log_norm - sp.log_norm, a.dc_hi, a.dc_lo);
                    a.inv_sp_d = 1.0 / sp.total;
                    a.inv_sq_d = 1.0 / sq.total;
                    a.inv_sp = static_cast<float>(a.inv_sp_d);
                    a.inv_sq = static_cast<float>(a.inv_sq_d);
                    if (r + 1 < end) {
                        a.next_p = row_ptr(p, r + 1);
                        a.next_q = row_ptr(q, r + 1);
                    }
                    js = k.joint(a);
                }
                write_side(sp, hp, r, t, out.p);
                write_side(sq, hq, r, t, out.q);
                if (out.kl_pq) out.kl_pq[r] = both ? js.kl_pq : kNaN;
                if (out.kl_qp) out.kl_qp[r] = both ? js.kl_qp : kNaN;
                if (out.js) out.js[r] = both ? js.js : kNaN;
                if (out.tv) out.tv[r] = both ? js.tv : kNaN;
                if (out.top1_agree) out.top1_agree[r] = both ? (hp.id[0] == hq.id[0] ? 1.f : 0.f) : kNaNf;
                for (size_t j = 0; j < options.topk.size(); ++j) {
                    if (!out.overlap[j]) continue;
                    if (!both) {
                        out.overlap[j][r] = kNaNf;
                        continue;
                    }
                    const int kk = static_cast<int>(std::min<int64_t>(options.topk[j], n));
                    int64_t common = intersection(hp.id, hq.id, kk, s.sorted_p.data(), s.sorted_q.data());
                    out.overlap[j][r] = static_cast<float>(common) / static_cast<float>(kk);
                }
                if (out.delta_p) {
                    out.delta_p[r] = both && t >= 0
                                         ? std::exp(static_cast<double>(sq.target_value) - sq.log_norm) -
                                               std::exp(static_cast<double>(sp.target_value) - sp.log_norm)
                                         : kNaN;
                }
            }
        }
    });
    InvalidCounts total;
    for (const auto& c : counts) {
        total.p += c.p;
        total.q += c.q;
        total.rows += c.rows;
    }
    return total;
}

int64_t distribution_stats(const Matrix& p, const int64_t* targets, int threads_requested, SideOutputs& out) {
    check_matrix(p, "p");
    const Kernels& k = detail::active_kernels();
    const int threads = resolve_threads(threads_requested, p.rows, kRowsPerThread);
    std::vector<int64_t> invalid(static_cast<size_t>(std::max(threads, 1)), 0);
    const int64_t chunk = std::max<int64_t>(kRowsPerThread, dynamic_chunk(p.rows, threads, 32));
    parallel_for_dynamic(p.rows, threads, chunk, [&](int worker, auto& next) {
        Scratch s(2, 0);
        TopK hp = s.heap_p();
        for (int64_t begin, end; next(begin, end);) {
            for (int64_t r = begin; r < end; ++r) {
                const int64_t t = target_of(targets, r, p.cols);
                SideRow sp = process_side(k, p, r, t, &hp, nullptr, out.entropy != nullptr);
                invalid[static_cast<size_t>(worker)] += !sp.valid;
                write_side(sp, hp, r, t, out);
            }
        }
    });
    int64_t total = 0;
    for (int64_t v : invalid) total += v;
    return total;
}

}  // namespace qfair
