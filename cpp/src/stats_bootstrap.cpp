// Paired bootstrap (percentile + BCa intervals, two-sided p) and the paired
// sign-flip permutation test. Every resample draws from its own counter-based
// stream Rng(seed, b), so the output does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "kernels.hpp"
#include "qfair/parallel.hpp"
#include "qfair/stats.hpp"
#include "stats_internal.hpp"

namespace qfair::stats {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Resample streams and sign-flip streams never share a key.
constexpr uint64_t kPermutationDomain = 0x7065726d75746174ULL;  // "permutat"

void check_finite(const double* v, int64_t n, const char* what) {
    if (!v) return;
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(v[i]))
            throw std::invalid_argument(std::string(what) + ": values must be finite (row " +
                                        std::to_string(i) + ")");
}
}  // namespace

void Statistic::jackknife(double* out, int threads) const {
    const int64_t n = n_;
    parallel_for(n, resolve_threads(threads, n), [&](int64_t b, int64_t e, int) {
        std::vector<uint32_t> counts(size_t(n), 1u);
        for (int64_t i = b; i < e; ++i) {
            counts[size_t(i)] = 0;
            out[i] = eval(counts.data());
            counts[size_t(i)] = 1;
        }
    });
}

namespace {
// The default ordered evaluator: multiplicities scattered back to example
// order, then Statistic::eval.
class ScatterBack final : public OrderedEval {
public:
    ScatterBack(const Statistic& s, const std::vector<uint32_t>* order) : OrderedEval(s.n()), s_(s), order_(order) {}
    double eval(const uint32_t* counts) const override {
        if (order_ == nullptr) return s_.eval(counts);
        thread_local std::vector<uint32_t> buf;
        buf.resize(order_->size());
        for (size_t j = 0; j < buf.size(); ++j) buf[(*order_)[j]] = counts[j];
        return s_.eval(buf.data());
    }

private:
    const Statistic& s_;
    const std::vector<uint32_t>* order_;
};

// sum_i counts[i] d[i] with the vector kernels (the same bits on every ISA).
template <class C>
double dot_counts(const C* counts, const double* d, int64_t n) {
    return qfair::detail::active_kernels().dot_counts(counts, int(sizeof(C)), nullptr, d, n);
}

// The inverse of a permutation: position of each example.
std::vector<uint32_t> inverse(const std::vector<uint32_t>& order) {
    std::vector<uint32_t> inv(order.size());
    for (size_t j = 0; j < order.size(); ++j) inv[order[j]] = uint32_t(j);
    return inv;
}

// This thread's buffer number `slot` (OrderedEval::share): an evaluator that
// others read leaves the sums of the current resample there. It is evaluated
// before its readers in every resample on the same thread, so they always
// find the current resample's sums.
std::vector<double>& shared_slot(int slot) {
    thread_local std::vector<std::vector<double>> slots;
    if (size_t(slot) >= slots.size()) slots.resize(size_t(slot) + 1);
    return slots[size_t(slot)];
}
}  // namespace

double OrderedEval::eval16(const uint16_t* counts) const {
    thread_local std::vector<uint32_t> wide;
    wide.assign(counts, counts + n_);
    return eval(wide.data());
}

std::unique_ptr<OrderedEval> Statistic::ordered(const std::vector<uint32_t>* order) const {
    return std::make_unique<ScatterBack>(*this, order);
}

// ------------------------------------------------------------- mean difference
namespace {
class MeanDiff final : public Statistic {
public:
    MeanDiff(const double* x, const double* y, int64_t n) : Statistic(n), d_(size_t(n)) {
        check_finite(x, n, "bootstrap");
        check_finite(y, n, "bootstrap");
        for (int64_t i = 0; i < n; ++i) d_[size_t(i)] = y[i] - (x ? x[i] : 0.0);
        sum_ = 0.0;
        for (double v : d_) sum_ += v;
    }
    double eval(const uint32_t* counts) const override { return dot_counts(counts, d_.data(), n_) / double(n_); }
    std::unique_ptr<OrderedEval> ordered(const std::vector<uint32_t>* order) const override {
        // The differences listed in that order: a sequential dot product.
        class Eval final : public OrderedEval {
        public:
            Eval(std::vector<double> d, int64_t n) : OrderedEval(n), d_(std::move(d)) {
                // Integer differences (an accuracy difference: -1, 0, 1) small
                // enough that sum_j c_j |d_j| <= n max|d| < 2^31, over fewer than
                // 2^15 examples (so every c_j < 2^15): the dot in 16-bit
                // integers is exact, and so is the double one (exact integer
                // terms and partial sums), hence the same bits.
                double big = 0.0;
                bool integral = n < (int64_t(1) << 15);
                for (double v : d_) {
                    integral = integral && v == std::nearbyint(v);
                    big = std::max(big, std::fabs(v));
                }
                if (integral && big <= 32767.0 && double(n) * big < 2147483648.0) {
                    d16_.resize(d_.size());
                    for (size_t j = 0; j < d_.size(); ++j) d16_[j] = int16_t(d_[j]);
                }
            }
            double eval(const uint32_t* counts) const override { return dot_counts(counts, d_.data(), n()) / double(n()); }
            double eval16(const uint16_t* counts) const override {
                if (!d16_.empty())
                    return double(qfair::detail::active_kernels().dot_counts_i16(counts, d16_.data(), n())) /
                           double(n());
                return dot_counts(counts, d_.data(), n()) / double(n());
            }
            const double* mean_terms() const override { return d_.data(); }

        private:
            std::vector<double> d_;
            std::vector<int16_t> d16_;  // d_ as 16-bit integers where that is exact (else empty)
        };
        std::vector<double> d(d_.size());
        for (size_t j = 0; j < d.size(); ++j) d[j] = d_[order ? (*order)[j] : j];
        return std::make_unique<Eval>(std::move(d), n_);
    }
    bool has_draws_path() const override { return true; }
    const double* draw_terms() const override { return d_.data(); }
    double eval_draws(const uint32_t* idx) const override {
        const double* d = d_.data();
        double s0 = 0.0, s1 = 0.0;
        int64_t k = 0;
        for (; k + 1 < n_; k += 2) {
            s0 += d[idx[k]];
            s1 += d[idx[k + 1]];
        }
        if (k < n_) s0 += d[idx[k]];
        return (s0 + s1) / double(n_);
    }
    void jackknife(double* out, int /*threads*/) const override {
        for (int64_t i = 0; i < n_; ++i) out[i] = (sum_ - d_[size_t(i)]) / double(n_ - 1);
    }

private:
    std::vector<double> d_;
    double sum_;
};

// One model's calibration inputs with the binning state that does not depend on
// the resample: fixed bins (width) or the confidence order (mass).
struct CalSide {
    std::vector<double> conf, correct;
    std::vector<int32_t> bin_of;   // width
    std::vector<int64_t> seg, by_bin;  // width: bin segments over examples in bin order
    std::vector<uint32_t> by_bin32;    // width: by_bin as the gather of width_bins
    std::vector<double> conf_by_bin, correct_by_bin;
    std::vector<int64_t> order;    // mass: indices sorted by confidence
    std::vector<int64_t> rank_of;  // mass: position of each example in `order`
    std::vector<double> conf_sorted, correct_sorted;
    int bins = 15;
    Binning binning = Binning::Width;

    void init(const double* c, const double* a, int64_t n, int b, Binning bn) {
        check_finite(c, n, "calibration bootstrap");
        check_finite(a, n, "calibration bootstrap");
        conf.assign(c, c + n);
        correct.assign(a, a + n);
        bins = b;
        binning = bn;
        if (bn == Binning::Width) {
            bin_of.resize(size_t(n));
            for (int64_t i = 0; i < n; ++i) bin_of[size_t(i)] = detail::width_bin(c[i], b);
            // examples grouped by bin (stable), with each bin's segment
            seg.assign(size_t(b) + 1, 0);
            for (int64_t i = 0; i < n; ++i) ++seg[size_t(bin_of[size_t(i)]) + 1];
            for (int k = 0; k < b; ++k) seg[size_t(k) + 1] += seg[size_t(k)];
            std::vector<int64_t> fill(seg.begin(), seg.end() - 1);
            by_bin.resize(size_t(n));
            conf_by_bin.resize(size_t(n));
            correct_by_bin.resize(size_t(n));
            by_bin32.resize(size_t(n));
            for (int64_t i = 0; i < n; ++i) {
                const int64_t j = fill[size_t(bin_of[size_t(i)])]++;
                by_bin[size_t(j)] = i;
                by_bin32[size_t(j)] = uint32_t(i);
                conf_by_bin[size_t(j)] = c[i];
                correct_by_bin[size_t(j)] = a[i];
            }
        } else {
            order.resize(size_t(n));
            std::iota(order.begin(), order.end(), int64_t(0));
            std::stable_sort(order.begin(), order.end(),
                             [&](int64_t p, int64_t q) { return conf[size_t(p)] < conf[size_t(q)]; });
            rank_of.resize(size_t(n));
            conf_sorted.resize(size_t(n));
            correct_sorted.resize(size_t(n));
            for (int64_t j = 0; j < n; ++j) {
                const int64_t i = order[size_t(j)];
                rank_of[size_t(i)] = j;
                conf_sorted[size_t(j)] = conf[size_t(i)];
                correct_sorted[size_t(j)] = correct[size_t(i)];
            }
        }
    }

    bool same_as(const CalSide& o) const {
        return bins == o.bins && binning == o.binning && conf == o.conf && correct == o.correct;
    }

    // Width bins: per bin the sums of multiplicity, of w * conf and of
    // w * correct (out[b], out[bins + b], out[2 bins + b]); returns the total.
    // counts[gather[j]] is the multiplicity of the example at bin-order
    // position j (gather = by_bin32 for counts in example order).
    template <class C>
    double width_bins(const C* counts, const uint32_t* gather, double* out) const {
        double* cnt = out;
        double* sc = out + bins;
        double* sa = out + 2 * bins;
        double total = 0.0;
        const double* cf = conf_by_bin.data();
        const double* co = correct_by_bin.data();
        for (int b = 0; b < bins; ++b) {
            double c0 = 0.0, s0 = 0.0, a0 = 0.0, c1 = 0.0, s1 = 0.0, a1 = 0.0;
            int64_t j = seg[size_t(b)];
            const int64_t e = seg[size_t(b) + 1];
            for (; j + 2 <= e; j += 2) {
                const double w0 = double(counts[gather[j]]), w1 = double(counts[gather[j + 1]]);
                c0 += w0;
                s0 += w0 * cf[j];
                a0 += w0 * co[j];
                c1 += w1;
                s1 += w1 * cf[j + 1];
                a1 += w1 * co[j + 1];
            }
            if (j < e) {
                const double w0 = double(counts[gather[j]]);
                c0 += w0;
                s0 += w0 * cf[j];
                a0 += w0 * co[j];
            }
            cnt[b] = c0 + c1;
            sc[b] = s0 + s1;
            sa[b] = a0 + a1;
            total += c0 + c1;
        }
        return total;
    }

    // Calibration measure of the resample given by multiplicities.
    double eval(const uint32_t* counts, CalMeasure m) const {
        const int64_t n = int64_t(conf.size());
        if (binning == Binning::Width) {
            thread_local std::vector<double> sums;
            sums.resize(3 * size_t(bins));
            const double total = width_bins(counts, by_bin32.data(), sums.data());
            return detail::measure_from_bins(sums.data(), sums.data() + bins, sums.data() + 2 * bins, bins, total, m);
        }
        // Equal-mass: counts in confidence order, then one sequential walk.
        thread_local std::vector<uint32_t> cs;
        cs.resize(size_t(n));
        for (int64_t j = 0; j < n; ++j) cs[size_t(j)] = counts[order[size_t(j)]];
        return eval_sorted(cs.data(), m);
    }

    // Equal-mass measure from multiplicities in sorted-confidence order. Group g
    // of np.array_split over the sorted multiset ends at position end_g; its
    // upper edge is the mid-point of the values at end_g - 1 and end_g.
    double eval_sorted(const uint32_t* cs, CalMeasure m) const {
        const int64_t n = int64_t(conf.size());
        thread_local std::vector<double> cnt, sc, sa, edges;
        const double* sv = conf_sorted.data();
        const double* sy = correct_sorted.data();
        // Positions in the sorted multiset are located through the
        // multiplicities' prefix sums, kept per block of kPreBlock items (the
        // sums within a block are taken when a query lands in it): a few dozen
        // queries do not need the prefix of every item, whose serial adds
        // and stores cost a third of this function when it was kept whole.
        constexpr int64_t kPreBlock = 64;
        const int64_t nblk = (n + kPreBlock - 1) / kPreBlock;
        thread_local std::vector<int64_t> blk;  // blk[i] = sum of cs over the items before block i
        blk.resize(size_t(nblk) + 1);
        blk[0] = 0;
        for (int64_t i = 0; i < nblk; ++i) {
            const int64_t e = std::min(n, (i + 1) * kPreBlock);
            uint32_t sum = 0;  // at most n < 2^31 in all
            for (int64_t j = i * kPreBlock; j < e; ++j) sum += cs[j];
            blk[size_t(i) + 1] = blk[size_t(i)] + int64_t(sum);
        }
        const int64_t total = blk[size_t(nblk)];
        // sum of cs[0..j] (inclusive)
        auto prefix_at = [&](int64_t j) {
            int64_t run = blk[size_t(j / kPreBlock)];
            for (int64_t t = (j / kPreBlock) * kPreBlock; t <= j; ++t) run += cs[t];
            return run;
        };
        // the item at position pos (0-based) of the sorted multiset: the
        // first j whose inclusive prefix exceeds pos
        auto value_at = [&](int64_t pos) {
            const int64_t i = (std::upper_bound(blk.begin() + 1, blk.end(), pos) - blk.begin()) - 1;
            int64_t run = blk[size_t(i)];
            int64_t j = i * kPreBlock;
            for (;; ++j) {
                run += cs[j];
                if (run > pos) break;
            }
            return sv[j];
        };
        const int64_t k = std::min<int64_t>(bins, total);
        edges.clear();
        if (k > 1) {
            const int64_t base = total / k, extra = total % k;
            int64_t end = 0;
            for (int64_t g = 0; g + 1 < k; ++g) {
                end += base + (g < extra ? 1 : 0);
                edges.push_back((value_at(end - 1) + value_at(end)) / 2.0);
            }
        }
        edges.push_back(1.0);
        std::sort(edges.begin(), edges.end());
        edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
        const int nb = int(edges.size());
        cnt.assign(size_t(nb), 0.0);
        sc.assign(size_t(nb), 0.0);
        sa.assign(size_t(nb), 0.0);
        // Values ascend, so bin b is the contiguous run of values in
        // (edge_{b-1}, edge_b]: its end is found by binary search. Its count is
        // a difference of the integer prefix sums (exact, as the sum of the
        // same integers in doubles is). Its two weighted sums are taken in
        // element order, items drawn zero times adding zero (no branch on the
        // count), four bins side by side so that their chains of adds overlap;
        // each sum is the one a single walk gives.
        thread_local std::vector<int64_t> bin_end;
        bin_end.resize(size_t(nb));
        for (int b = 0; b + 1 < nb; ++b)
            bin_end[size_t(b)] = std::upper_bound(sv, sv + n, edges[size_t(b)]) - sv;
        bin_end[size_t(nb - 1)] = n;
        auto start_of = [&](int b) { return b == 0 ? int64_t(0) : bin_end[size_t(b - 1)]; };
        int64_t before = 0;  // the prefix sum before the bin's first item
        for (int b = 0; b < nb; ++b) {
            const int64_t s0 = start_of(b), e0 = bin_end[size_t(b)];
            const int64_t upto = e0 > s0 ? prefix_at(e0 - 1) : before;
            cnt[size_t(b)] = e0 > s0 ? double(upto - before) : 0.0;
            before = upto;
        }
        auto walk = [&](int b, int64_t from, double& s0, double& a0) {
            for (int64_t j = from, e = bin_end[size_t(b)]; j < e; ++j) {
                const double w = double(cs[j]);
                s0 += w * sv[j];
                a0 += w * sy[j];
            }
        };
        int b = 0;
        for (; b + 4 <= nb; b += 4) {
            int64_t at[4];
            int64_t len = std::numeric_limits<int64_t>::max();
            for (int i = 0; i < 4; ++i) {
                at[i] = start_of(b + i);
                len = std::min(len, bin_end[size_t(b + i)] - at[i]);
            }
            double s4[4] = {0.0, 0.0, 0.0, 0.0}, a4[4] = {0.0, 0.0, 0.0, 0.0};
            for (int64_t t = 0; t < len; ++t)
                for (int i = 0; i < 4; ++i) {
                    const int64_t j = at[i] + t;
                    const double w = double(cs[j]);
                    s4[i] += w * sv[j];
                    a4[i] += w * sy[j];
                }
            for (int i = 0; i < 4; ++i) {
                walk(b + i, at[i] + len, s4[i], a4[i]);
                sc[size_t(b + i)] = s4[i];
                sa[size_t(b + i)] = a4[i];
            }
        }
        for (; b < nb; ++b) {
            double s0 = 0.0, a0 = 0.0;
            walk(b, start_of(b), s0, a0);
            sc[size_t(b)] = s0;
            sa[size_t(b)] = a0;
        }
        return detail::measure_from_bins(cnt.data(), sc.data(), sa.data(), nb, double(total), m);
    }

    // Any binning straight from the drawn indices.
    double eval_draws_any(const uint32_t* idx, CalMeasure m) const {
        if (binning == Binning::Width) return eval_draws(idx, m);
        const int64_t n = int64_t(conf.size());
        thread_local std::vector<uint32_t> cs;
        cs.assign(size_t(n), 0u);
        const int64_t* r = rank_of.data();
        for (int64_t k = 0; k < n; ++k) ++cs[size_t(r[idx[k]])];
        return eval_sorted(cs.data(), m);
    }

    // Width binning straight from the drawn indices.
    double eval_draws(const uint32_t* idx, CalMeasure m) const {
        const int64_t n = int64_t(conf.size());
        thread_local std::vector<double> acc;
        acc.assign(size_t(3 * bins), 0.0);
        double* cnt = acc.data();
        double* sc = cnt + bins;
        double* sa = sc + bins;
        const int32_t* bo = bin_of.data();
        const double* cf = conf.data();
        const double* co = correct.data();
        for (int64_t k = 0; k < n; ++k) {
            const uint32_t i = idx[k];
            const int32_t b = bo[i];
            cnt[b] += 1.0;
            sc[b] += cf[i];
            sa[b] += co[i];
        }
        return detail::measure_from_bins(cnt, sc, sa, bins, double(n), m);
    }

    // Leave-one-out values for fixed (width) bins in O(n * bins).
    void jackknife_width(CalMeasure m, double* out) const {
        const int64_t n = int64_t(conf.size());
        std::vector<double> cnt(size_t(bins), 0.0), sc(size_t(bins), 0.0), sa(size_t(bins), 0.0);
        for (int64_t i = 0; i < n; ++i) {
            const size_t b = size_t(bin_of[size_t(i)]);
            cnt[b] += 1.0;
            sc[b] += conf[size_t(i)];
            sa[b] += correct[size_t(i)];
        }
        for (int64_t i = 0; i < n; ++i) {
            const size_t b = size_t(bin_of[size_t(i)]);
            const double c0 = cnt[b], s0 = sc[b], a0 = sa[b];
            cnt[b] -= 1.0;
            sc[b] -= conf[size_t(i)];
            sa[b] -= correct[size_t(i)];
            out[i] = detail::measure_from_bins(cnt.data(), sc.data(), sa.data(), bins,
                                               double(n - 1), m);
            cnt[b] = c0;
            sc[b] = s0;
            sa[b] = a0;
        }
    }
};

// positions[j]: where the multiplicity of example examples[j] sits in the
// driver's order (the example itself when there is no order).
template <class I>
std::vector<uint32_t> positions_in(const std::vector<uint32_t>* order, const std::vector<I>& examples) {
    std::vector<uint32_t> out(examples.size());
    const std::vector<uint32_t> pos = order != nullptr ? inverse(*order) : std::vector<uint32_t>();
    for (size_t j = 0; j < out.size(); ++j) {
        const auto i = size_t(examples[j]);
        out[j] = order != nullptr ? pos[i] : uint32_t(i);
    }
    return out;
}

// The part of an evaluator that OrderedEval::share sets: the earlier evaluator
// whose sums it reads (source_), or the slot it leaves its own sums in for
// later ones (slot_ >= 0).
template <class Self>
struct SharedSums {
    const Self* source_ = nullptr;
    int slot_ = -1;

    // Read the first earlier evaluator of this type, itself no reader, whose
    // sums `same` says equal this one's on every resample.
    template <class Same>
    void share_first(const std::vector<OrderedEval*>& earlier, int* next_slot, Same&& same) {
        for (OrderedEval* e : earlier) {
            auto* o = dynamic_cast<Self*>(e);
            if (o != nullptr && o->source_ == nullptr && same(*o)) {
                if (o->slot_ < 0) o->slot_ = (*next_slot)++;
                source_ = o;
                return;
            }
        }
    }
};

// One model's width-binned measure on multiplicities in the driver's order:
// one gather into bin order (no copy back to example order). Sides with the
// same inputs under other measures read the bins of the first one.
class SideEval final : public OrderedEval, public SharedSums<SideEval> {
public:
    SideEval(const CalSide& side, CalMeasure m, const std::vector<uint32_t>* order)
        : OrderedEval(int64_t(side.conf.size())), side_(side), m_(m), gather_(positions_in(order, side.by_bin32)) {}
    double eval(const uint32_t* counts) const override { return run(counts); }
    double eval16(const uint16_t* counts) const override { return run(counts); }
    void share(const std::vector<OrderedEval*>& earlier, int* next_slot) override {
        share_first(earlier, next_slot, [&](const SideEval& o) { return side_.same_as(o.side_); });
    }

private:
    template <class C>
    double run(const C* counts) const {
        const int B = side_.bins;
        thread_local std::vector<double> local;
        std::vector<double>& sums = source_ != nullptr ? shared_slot(source_->slot_)
                                    : slot_ >= 0        ? shared_slot(slot_)
                                                        : local;
        if (source_ == nullptr) {
            sums.resize(3 * size_t(B) + 1);
            sums[3 * size_t(B)] = side_.width_bins(counts, gather_.data(), sums.data());
        }
        return detail::measure_from_bins(sums.data(), sums.data() + B, sums.data() + 2 * B, B, sums[3 * size_t(B)],
                                         m_);
    }
    const CalSide& side_;
    CalMeasure m_;
    std::vector<uint32_t> gather_;
};

// One model's equal-mass measure on multiplicities in the driver's order: one
// gather into confidence order (instead of widening, scattering back to
// example order and gathering again).
class SortedEval final : public OrderedEval {
public:
    SortedEval(const CalSide& side, CalMeasure m, const std::vector<uint32_t>* order)
        : OrderedEval(int64_t(side.conf.size())), side_(side), m_(m), gather_(positions_in(order, side.order)) {}
    double eval(const uint32_t* counts) const override { return run(counts); }
    double eval16(const uint16_t* counts) const override { return run(counts); }

private:
    template <class C>
    double run(const C* counts) const {
        thread_local std::vector<uint32_t> cs;
        cs.resize(gather_.size());
        for (size_t j = 0; j < gather_.size(); ++j) cs[j] = counts[gather_[j]];
        return side_.eval_sorted(cs.data(), m_);
    }
    const CalSide& side_;
    CalMeasure m_;
    std::vector<uint32_t> gather_;
};

class CalibrationDiff final : public Statistic {
public:
    CalibrationDiff(const double* cx, const double* ax, const double* cy, const double* ay,
                    int64_t n, int bins, Binning binning, CalMeasure m)
        : Statistic(n), has_x_(cx != nullptr), m_(m) {
        if (bins < 1) throw std::invalid_argument("calibration bootstrap: bins must be >= 1");
        if ((cx == nullptr) != (ax == nullptr))
            throw std::invalid_argument("calibration bootstrap: give both conf_x and correct_x");
        if (has_x_) x_.init(cx, ax, n, bins, binning);
        y_.init(cy, ay, n, bins, binning);
        if (has_x_ && binning == Binning::Width) {
            // Examples grouped by their (bin under y, bin under x) pair: one pass
            // over the counts then serves both sides, one gather per example.
            std::vector<int64_t> key(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i)
                key[size_t(i)] = int64_t(y_.bin_of[size_t(i)]) * bins + x_.bin_of[size_t(i)];
            std::vector<uint32_t> ord(static_cast<size_t>(n));
            std::iota(ord.begin(), ord.end(), 0u);
            std::stable_sort(ord.begin(), ord.end(),
                             [&](uint32_t a, uint32_t b) { return key[a] < key[b]; });
            pperm_ = ord;
            pcy_.resize(size_t(n));
            pay_.resize(size_t(n));
            pcx_.resize(size_t(n));
            pax_.resize(size_t(n));
            for (int64_t j = 0; j < n; ++j) {
                const uint32_t i = ord[size_t(j)];
                pcy_[size_t(j)] = cy[i];
                pay_[size_t(j)] = ay[i];
                pcx_[size_t(j)] = cx[i];
                pax_[size_t(j)] = ax[i];
                if (j == 0 || key[i] != key[ord[size_t(j - 1)]])
                    pseg_.push_back({int32_t(key[i] / bins), int32_t(key[i] % bins), j, j});
                pseg_.back().end = j + 1;
            }
            for (const PairSeg& g : pseg_) segs_.push_back({g.begin, g.end});
            if (m_ == CalMeasure::ECE) {
                // ECE needs only each bin's gap sum(correct - conf): two sums
                // an example instead of four.
                pgy_.resize(size_t(n));
                pgx_.resize(size_t(n));
                for (int64_t j = 0; j < n; ++j) {
                    pgy_[size_t(j)] = pay_[size_t(j)] - pcy_[size_t(j)];
                    pgx_[size_t(j)] = pax_[size_t(j)] - pcx_[size_t(j)];
                }
            }
        }
    }
    double eval(const uint32_t* counts) const override {
        if (!pseg_.empty()) return eval_pairs(counts, 4, pperm_.data());
        const double vy = y_.eval(counts, m_);
        return has_x_ ? vy - x_.eval(counts, m_) : vy;
    }

    // The pair-segment order, in which the multiplicities are read without a
    // gather.
    const std::vector<uint32_t>* preferred_order() const override { return pseg_.empty() ? nullptr : &pperm_; }

    std::unique_ptr<OrderedEval> ordered(const std::vector<uint32_t>* order) const override {
        if (pseg_.empty() && !has_x_ && y_.binning == Binning::Width)
            return std::make_unique<SideEval>(y_, m_, order);
        if (!has_x_ && y_.binning == Binning::Mass) return std::make_unique<SortedEval>(y_, m_, order);
        if (pseg_.empty()) return Statistic::ordered(order);
        // gather[j]: where the multiplicity of the example at pair-segment
        // position j sits in `order` (none when the orders are the same).
        // Differences of the same inputs under other measures read the bins of
        // the first one (OrderedEval::share).
        class Eval final : public OrderedEval, public SharedSums<Eval> {
        public:
            Eval(const CalibrationDiff& s, std::vector<uint32_t> gather)
                : OrderedEval(s.n()), s_(s), gather_(std::move(gather)) {}
            double eval(const uint32_t* counts) const override { return run(counts, 4); }
            double eval16(const uint16_t* counts) const override { return run(counts, 2); }
            void share(const std::vector<OrderedEval*>& earlier, int* next_slot) override {
                share_first(earlier, next_slot, [&](const Eval& o) { return s_.same_pair_bins(o.s_); });
            }

        private:
            double run(const void* counts, int count_bytes) const {
                const uint32_t* g = gather_.empty() ? nullptr : gather_.data();
                if (!s_.pgy_.empty()) return s_.eval_pairs_ece(counts, count_bytes, g);
                if (source_ != nullptr) return s_.measure_from_pair_bins(shared_slot(source_->slot_).data());
                if (slot_ < 0) return s_.eval_pairs(counts, count_bytes, g);
                std::vector<double>& acc = shared_slot(slot_);
                acc.resize(s_.pair_bins_size());
                s_.pair_bins(counts, count_bytes, g, acc.data());
                return s_.measure_from_pair_bins(acc.data());
            }
            const CalibrationDiff& s_;
            std::vector<uint32_t> gather_;
        };
        std::vector<uint32_t> gather;
        if (order == nullptr) {
            gather = pperm_;
        } else if (order != &pperm_) {
            const std::vector<uint32_t> pos = inverse(*order);
            gather.resize(pperm_.size());
            for (size_t j = 0; j < gather.size(); ++j) gather[j] = pos[pperm_[j]];
        }
        return std::make_unique<Eval>(*this, std::move(gather));
    }

    // Per pair segment (examples with one bin under y and one under x): the
    // sums of multiplicity and of the value columns (vector kernels), then
    // into the bins in segment order. counts[gather[j]] (or counts[j] when
    // gather is null) is the multiplicity of the example at pair-segment
    // position j.
    const double* segment_sums(const void* counts, int count_bytes, const uint32_t* gather, bool ece) const {
        const int k = ece ? 2 : 4;
        const double* cols_full[4] = {pcy_.data(), pay_.data(), pcx_.data(), pax_.data()};
        const double* cols_ece[2] = {pgy_.data(), pgx_.data()};
        thread_local std::vector<double> sums;
        sums.resize(segs_.size() * size_t(k + 1));
        qfair::detail::active_kernels().segment_sums(counts, count_bytes, gather, ece ? cols_ece : cols_full, k,
                                                     segs_.data(), int64_t(segs_.size()), sums.data());
        return sums.data();
    }

    double eval_pairs(const void* counts, int count_bytes, const uint32_t* gather) const {
        if (!pgy_.empty()) return eval_pairs_ece(counts, count_bytes, gather);
        thread_local std::vector<double> acc;
        acc.resize(pair_bins_size());
        pair_bins(counts, count_bytes, gather, acc.data());
        return measure_from_pair_bins(acc.data());
    }

    // The pair path's bins of one resample: the sums of multiplicity, conf and
    // correct per bin under y, then under x (B each), then the total.
    size_t pair_bins_size() const { return 6 * size_t(y_.bins) + 1; }
    void pair_bins(const void* counts, int count_bytes, const uint32_t* gather, double* acc) const {
        const int B = y_.bins;
        std::fill(acc, acc + 6 * B, 0.0);
        double *ny = acc, *sy = ny + B, *ay = sy + B, *nx = ay + B, *sx = nx + B, *ax = sx + B;
        const double* v = segment_sums(counts, count_bytes, gather, false);
        for (const PairSeg& g : pseg_) {
            ny[g.by] += v[0];
            sy[g.by] += v[1];
            ay[g.by] += v[2];
            nx[g.bx] += v[0];
            sx[g.bx] += v[3];
            ax[g.bx] += v[4];
            v += 5;
        }
        double total = 0.0;
        for (int b = 0; b < B; ++b) total += ny[b];
        acc[6 * B] = total;
    }
    double measure_from_pair_bins(const double* acc) const {
        const int B = y_.bins;
        const double *ny = acc, *sy = ny + B, *ay = sy + B, *nx = ay + B, *sx = nx + B, *ax = sx + B;
        return detail::measure_from_bins(ny, sy, ay, B, acc[6 * B], m_) -
               detail::measure_from_bins(nx, sx, ax, B, acc[6 * B], m_);
    }
    // Another difference whose pair-path bins equal this one's on every
    // resample (the same inputs; only the measure may differ).
    bool same_pair_bins(const CalibrationDiff& o) const {
        return !pseg_.empty() && !o.pseg_.empty() && pgy_.empty() && o.pgy_.empty() && y_.same_as(o.y_) &&
               x_.same_as(o.x_);
    }

    // eval_pairs for ECE = sum_b |sum_{i in b} c_i (correct_i - conf_i)| / N,
    // from the gap sums alone.
    double eval_pairs_ece(const void* counts, int count_bytes, const uint32_t* gather) const {
        const int B = y_.bins;
        thread_local std::vector<double> acc;
        acc.assign(size_t(2 * B), 0.0);
        double *gap_y = acc.data(), *gap_x = gap_y + B;
        const double* v = segment_sums(counts, count_bytes, gather, true);
        double total = 0.0;
        for (const PairSeg& g : pseg_) {
            total += v[0];
            gap_y[g.by] += v[1];
            gap_x[g.bx] += v[2];
            v += 3;
        }
        if (!(total > 0)) return std::numeric_limits<double>::quiet_NaN();
        double ey = 0.0, ex = 0.0;
        for (int b = 0; b < B; ++b) {
            ey += std::fabs(gap_y[b]);
            ex += std::fabs(gap_x[b]);
        }
        return ey / total - ex / total;
    }

    // Counts, not draws: the per-bin sums then run over examples in bin order
    // with register accumulators instead of read-modify-writes per draw.
    bool has_draws_path() const override { return false; }
    void jackknife(double* out, int threads) const override {
        if (y_.binning != Binning::Width) {
            Statistic::jackknife(out, threads);
            return;
        }
        y_.jackknife_width(m_, out);
        if (has_x_) {
            std::vector<double> tmp(static_cast<size_t>(n_));
            x_.jackknife_width(m_, tmp.data());
            for (int64_t i = 0; i < n_; ++i) out[i] -= tmp[size_t(i)];
        }
    }

private:
    struct PairSeg {
        int32_t by, bx;
        int64_t begin, end;
    };
    bool has_x_;
    CalMeasure m_;
    CalSide x_, y_;
    std::vector<PairSeg> pseg_;
    std::vector<uint32_t> pperm_;
    std::vector<double> pcy_, pay_, pcx_, pax_;
    std::vector<double> pgy_, pgx_;  // ECE: correct - conf in pair-segment order
    std::vector<qfair::detail::Segment> segs_;  // pseg_'s ranges
};
}  // namespace

std::unique_ptr<Statistic> make_mean_diff(const double* x, const double* y, int64_t n) {
    if (n < 1) throw std::invalid_argument("bootstrap: need at least one example");
    if (!y) throw std::invalid_argument("bootstrap: y is required");
    return std::make_unique<MeanDiff>(x, y, n);
}

std::unique_ptr<Statistic> make_calibration_diff(const double* conf_x, const double* correct_x,
                                                 const double* conf_y, const double* correct_y,
                                                 int64_t n, int bins, Binning binning,
                                                 CalMeasure measure) {
    if (n < 1) throw std::invalid_argument("bootstrap: need at least one example");
    return std::make_unique<CalibrationDiff>(conf_x, correct_x, conf_y, correct_y, n, bins,
                                             binning, measure);
}

// ------------------------------------------------------------------- driver
namespace {
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;
inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
// Key of resample b. The draws are wyrand outputs of the counter key + k * inc
// (one 64x64->128 multiply each; passes BigCrush and PractRand): a
// counter-based generator, so every draw is independent of the others (no
// serial state: the CPU overlaps them) and resample b depends only on (seed, b).
constexpr uint64_t kWyInc = 0xa0761d6478bd642fULL;
constexpr uint64_t kWyXor = 0xe7037ed1a0b428dbULL;
inline uint64_t wy(uint64_t s) {
    const __uint128_t t = (__uint128_t)s * (s ^ kWyXor);
    return uint64_t(t >> 64) ^ uint64_t(t);
}
inline uint64_t resample_key(uint64_t seed, uint64_t b) {
    return mix64(mix64(seed + kGolden) ^ (b * 0xd1342543de82ef95ULL + 0x2545f4914f6cdd1dULL));
}
// Lemire's rejection for the rare low products: redraw from a second counter
// sequence of the same key until the product's low word clears the threshold.
inline uint32_t lemire_fix(uint64_t m, uint32_t n, uint64_t key, uint64_t* rej) {
    const uint32_t t = uint32_t(-n) % n;
    while (uint32_t(m) < t) {
        const uint64_t z = mix64((key ^ 0x5851f42d4c957f2dULL) + (++*rej) * kGolden);
        m = (z >> 32) * uint64_t(n);
    }
    return uint32_t(m >> 32);
}
}  // namespace

// Draws per block of the vectorised range reduction (an even number).
constexpr int kDrawBlock = 512;

// A sink with a block(idx, m, side) member takes whole blocks of draws at
// once, and calls side to make the next block's random words as it goes.
struct NoSide {
    void operator()(int, int) const {}
};
template <class S, class = void>
struct HasBlock : std::false_type {};
template <class S>
struct HasBlock<S, std::void_t<decltype(std::declval<const S&>().block(nullptr, 0, NoSide{}))>>
    : std::true_type {};

// Counts each draw i at c[pos[i]]. By the block, four positions are read
// before their four increments: with one read and one increment in turn the
// reads wait on the stores before them (n = B = 10,000, one thread: the
// whole bootstrap 6 % faster), and the next block's words are made in
// between (another 8 %).
template <class C, class P>
struct CountAt {
    C* c;
    const P* pos;
    void operator()(int64_t, uint32_t i) const { ++c[pos[i]]; }
    // m is kDrawBlock; side(j0, 2) is called for j0 = 0, 2, ..., m / 2 - 2.
    template <class Side>
    void block(const uint32_t* idx, int m, Side&& side) const {
        for (int j = 0; j < m; j += 4) {
            side(j / 2, 2);
            const P a0 = pos[idx[j]], a1 = pos[idx[j + 1]], a2 = pos[idx[j + 2]], a3 = pos[idx[j + 3]];
            ++c[a0];
            ++c[a1];
            ++c[a2];
            ++c[a3];
        }
    }
};

// Counts each draw i at c[i], making the next block's words in between.
template <class C>
struct Count {
    C* c;
    void operator()(int64_t, uint32_t i) const { ++c[i]; }
    template <class Side>
    void block(const uint32_t* idx, int m, Side&& side) const {
        for (int j = 0; j < m; j += 4) {
            side(j / 2, 2);
            ++c[idx[j]];
            ++c[idx[j + 1]];
            ++c[idx[j + 2]];
            ++c[idx[j + 3]];
        }
    }
};

template <class Sink>
inline void for_each_draw(int64_t n, uint64_t seed, int64_t b, Sink&& sink) {
    const uint64_t key = resample_key(seed, uint64_t(b));
    const uint64_t nn = uint64_t(n);
    const uint32_t n32 = uint32_t(n);
    uint64_t rej = 0;
    int64_t k = 0;
    uint64_t ctr = key;
    // Whole blocks: the random words first (one scalar 64x64 multiply each),
    // then their range reduction in vector registers (the kernels'
    // draw_indices). A block where some product might be rejected (about
    // n / 2^23 of the blocks) is redone in draw order with the scalar fix, so
    // the indices and the rejection sequence are exactly those of the plain
    // loop below.
    if (n >= kDrawBlock) {
        const auto draw_indices = qfair::detail::active_kernels().draw_indices;
        uint64_t z[kDrawBlock / 2];
        uint32_t idx[kDrawBlock];
        // `per` random words of the next block from word j0 on (each word gives
        // two draws).
        auto next_words = [&](int j0, int per) {
            for (int j = j0; j < j0 + per; ++j) {
                ctr += kWyInc;
                z[j] = wy(ctr);
            }
        };
        const int64_t blocks = n / kDrawBlock;
        next_words(0, kDrawBlock / 2);
        for (int64_t blk = 0; blk < blocks; ++blk, k += kDrawBlock) {
            if (__builtin_expect(draw_indices(z, kDrawBlock / 2, n32, idx), 0)) {
                for (int j = 0; j < kDrawBlock / 2; ++j) {
                    const uint64_t m0 = (z[j] >> 32) * nn, m1 = (z[j] & 0xffffffffULL) * nn;
                    if (uint32_t(m0) < n32) idx[2 * j] = lemire_fix(m0, n32, key, &rej);
                    if (uint32_t(m1) < n32) idx[2 * j + 1] = lemire_fix(m1, n32, key, &rej);
                }
            }
            const bool more = blk + 1 < blocks;
            if constexpr (HasBlock<std::decay_t<Sink>>::value) {
                // z is free again: the next block's words are made between
                // this block's sinks (the multiplier is idle while they load
                // and store), in the same counter order as one loop would.
                if (more)
                    sink.block(idx, kDrawBlock, next_words);
                else
                    sink.block(idx, kDrawBlock, NoSide{});
            } else {
                for (int j = 0; j < kDrawBlock; ++j) sink(k + j, idx[j]);
                if (more) next_words(0, kDrawBlock / 2);
            }
        }
    }
    for (; k + 1 < n; k += 2) {
        ctr += kWyInc;
        const uint64_t z = wy(ctr);
        const uint64_t m0 = (z >> 32) * nn, m1 = (z & 0xffffffffULL) * nn;
        uint32_t i0 = uint32_t(m0 >> 32), i1 = uint32_t(m1 >> 32);
        if (__builtin_expect(uint32_t(m0) < n32, 0)) i0 = lemire_fix(m0, n32, key, &rej);
        if (__builtin_expect(uint32_t(m1) < n32, 0)) i1 = lemire_fix(m1, n32, key, &rej);
        sink(k, i0);
        sink(k + 1, i1);
    }
    if (k < n) {
        ctr += kWyInc;
        const uint64_t m0 = (wy(ctr) >> 32) * nn;
        uint32_t i0 = uint32_t(m0 >> 32);
        if (uint32_t(m0) < n32) i0 = lemire_fix(m0, n32, key, &rej);
        sink(k, i0);
    }
}

void bootstrap_draws(int64_t n, uint64_t seed, int64_t b, uint32_t* idx) {
    if (n < 1 || n >= (int64_t(1) << 32)) throw std::invalid_argument("bootstrap: bad n");
    for_each_draw(n, seed, b, [idx](int64_t k, uint32_t i) { idx[k] = i; });
}

void bootstrap_counts(int64_t n, uint64_t seed, int64_t b, uint32_t* counts) {
    if (n < 1 || n >= (int64_t(1) << 32)) throw std::invalid_argument("bootstrap: bad n");
    std::memset(counts, 0, size_t(n) * sizeof(uint32_t));
    for_each_draw(n, seed, b, Count<uint32_t>{counts});
}

void bootstrap_count_rows(int64_t n, uint64_t seed, int64_t b0, int64_t rows, int threads, uint32_t* out) {
    if (n < 1 || n >= (int64_t(1) << 32)) throw std::invalid_argument("bootstrap: bad n");
    if (rows < 0) throw std::invalid_argument("bootstrap_count_rows: rows must be >= 0");
    parallel_for(rows, resolve_threads(threads, rows), [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) bootstrap_counts(n, seed, b0 + r, out + r * n);
    });
}

bool bootstrap_count_rows(int64_t n, uint64_t seed, int64_t b0, int64_t rows, int threads, uint16_t* out) {
    if (n < 1 || n >= (int64_t(1) << 32)) throw std::invalid_argument("bootstrap: bad n");
    if (rows < 0) throw std::invalid_argument("bootstrap_count_rows: rows must be >= 0");
    const int T = resolve_threads(threads, rows);
    std::vector<char> fits(static_cast<size_t>(T > 0 ? T : 1), 1);
    // rows in chunks as threads free up (each row is written by one thread only)
    parallel_for_dynamic(rows, T, dynamic_chunk(rows, T, 64), [&](int worker, auto& next) {
        int64_t r0, r1;
        if (n < (int64_t(1) << 16)) {  // a multiplicity is at most n: counted in 16 bits directly
            while (next(r0, r1)) {
                for (int64_t r = r0; r < r1; ++r) {
                    uint16_t* o = out + r * n;
                    std::memset(o, 0, size_t(n) * sizeof(uint16_t));
                    for_each_draw(n, seed, b0 + r, Count<uint16_t>{o});
                }
            }
            return;
        }
        std::vector<uint32_t> wide(static_cast<size_t>(n));
        while (next(r0, r1)) {
            for (int64_t r = r0; r < r1 && fits[size_t(worker)]; ++r) {
                bootstrap_counts(n, seed, b0 + r, wide.data());
                uint16_t* o = out + r * n;
                for (int64_t i = 0; i < n; ++i) {
                    if (wide[size_t(i)] > 0xFFFFu) fits[size_t(worker)] = 0;
                    o[i] = static_cast<uint16_t>(wide[size_t(i)]);
                }
            }
        }
    });
    return std::all_of(fits.begin(), fits.end(), [](char f) { return f != 0; });
}

double quantile_sorted(const double* v, int64_t n, double q) {
    if (n <= 0 || std::isnan(q)) return kNaN;
    q = std::min(1.0, std::max(0.0, q));
    const double h = double(n - 1) * q;
    const int64_t lo = int64_t(std::floor(h));
    if (lo >= n - 1) return v[n - 1];
    const double frac = h - double(lo);
    return v[lo] + frac * (v[lo + 1] - v[lo]);
}

std::vector<BootstrapResult> paired_bootstrap(const std::vector<const Statistic*>& stats,
                                              const BootstrapOptions& opt) {
    if (stats.empty()) return {};
    const int64_t n = stats[0]->n();
    for (auto* s : stats)
        if (s->n() != n) throw std::invalid_argument("bootstrap: statistics differ in length");
    // Multiplicities are summed as int32 by the vector kernels.
    if (n < 1 || n >= (int64_t(1) << 31))
        throw std::invalid_argument("bootstrap: need 1 to 2^31 - 1 examples, got " + std::to_string(n));
    if (opt.resamples < 1) throw std::invalid_argument("bootstrap: resamples must be >= 1");
    if (!(opt.confidence > 0.0 && opt.confidence < 1.0))
        throw std::invalid_argument("bootstrap: confidence must be in (0, 1)");
    const int64_t B = opt.resamples;
    const size_t K = stats.size();
    const int threads = resolve_threads(opt.threads, B);
    std::vector<double> theta(K * size_t(B));

    // Statistics that need multiplicities get them straight from the draws and
    // then every statistic reads the counts (a mean becomes a sequential dot
    // product); otherwise the draws are kept as indices.
    bool need_counts = false;
    for (auto* s : stats) need_counts |= !s->has_draws_path();
    // The draws are counted in one order of the examples, the first
    // preferred one, so that (at least) that statistic reads its
    // multiplicities sequentially; pos[i] is example i's position in it.
    // Below 2^16 examples the multiplicities and positions are 16-bit: the
    // draw loop's random increments then stay in L1 (n = 10,000: 40 kB
    // instead of 80 kB), about a quarter faster.
    const std::vector<uint32_t>* order = nullptr;
    std::vector<std::unique_ptr<OrderedEval>> evals;
    if (need_counts) {
        for (auto* s : stats)
            if ((order = s->preferred_order()) != nullptr) break;
        for (auto* s : stats) evals.push_back(s->ordered(order));
        std::vector<OrderedEval*> earlier;
        int slots = 0;
        for (auto& e : evals) {
            e->share(earlier, &slots);
            earlier.push_back(e.get());
        }
    }
    const bool narrow = n < (int64_t(1) << 16);
    std::vector<uint32_t> pos32;
    std::vector<uint16_t> pos16;
    if (need_counts) {
        if (narrow) {
            pos16.resize(size_t(n));
            for (int64_t i = 0; i < n; ++i) pos16[size_t(i)] = uint16_t(i);
            if (order != nullptr)
                for (size_t j = 0; j < order->size(); ++j) pos16[(*order)[j]] = uint16_t(j);
        } else {
            pos32.resize(size_t(n));
            std::iota(pos32.begin(), pos32.end(), 0u);
            if (order != nullptr) pos32 = inverse(*order);
        }
    }
    // The means among the statistics, evaluated together (OrderedEval::mean_terms).
    std::vector<const double*> mean_rows;
    std::vector<size_t> mean_k;
    std::vector<char> is_mean(K, 0);
    if (need_counts)
        for (size_t k = 0; k < K; ++k)
            if (const double* t = evals[k]->mean_terms()) {
                mean_rows.push_back(t);
                mean_k.push_back(k);
                is_mean[k] = 1;
            }
    if (mean_rows.size() < 2) {
        mean_rows.clear();
        mean_k.clear();
        std::fill(is_mean.begin(), is_mean.end(), 0);
    }
    const auto dot_multi = qfair::detail::active_kernels().dot_counts_multi;
    // Without counts, two or more means are summed side by side from copies of
    // their terms laid out item by item, 16, 8 or 4 to a row (zero padding):
    // one index load and one cache line per draw for several statistics, and
    // their dependent adds overlapped.
    struct DrawPack {
        int width;
        std::vector<size_t> k;    // the statistics in its lanes
        std::vector<double> rows; // [n][width]
    };
    std::vector<DrawPack> packs;
    std::vector<char> in_pack(K, 0);
    if (!need_counts) {
        std::vector<size_t> terms;
        for (size_t k = 0; k < K; ++k)
            if (stats[k]->draw_terms() != nullptr) terms.push_back(k);
        for (size_t at = 0; terms.size() >= 2 && at < terms.size();) {
            const size_t left = terms.size() - at;
            DrawPack p;
            p.width = left >= 16 ? 16 : left > 4 ? 8 : 4;
            const size_t used = std::min(left, size_t(p.width));
            p.k.assign(terms.begin() + std::ptrdiff_t(at), terms.begin() + std::ptrdiff_t(at + used));
            p.rows.assign(size_t(n) * size_t(p.width), 0.0);
            for (size_t l = 0; l < used; ++l) {
                const double* t = stats[p.k[l]]->draw_terms();
                for (int64_t i = 0; i < n; ++i) p.rows[size_t(i) * size_t(p.width) + l] = t[i];
                in_pack[p.k[l]] = 1;
            }
            packs.push_back(std::move(p));
            at += used;
        }
    }
    const auto draw_sums = qfair::detail::active_kernels().draw_sums;
    // Counts resample b into c (in the chosen order) and evaluates every statistic.
    auto count_and_eval = [&](auto* c, const auto* pos, int64_t b, double* sums) {
        std::memset(c, 0, size_t(n) * sizeof(*c));
        for_each_draw(n, opt.seed, b, CountAt<std::remove_pointer_t<decltype(c)>, std::remove_cv_t<std::remove_pointer_t<decltype(pos)>>>{c, pos});
        if (!mean_rows.empty()) {
            dot_multi(c, int(sizeof(*c)), mean_rows.data(), int64_t(mean_rows.size()), n, sums);
            for (size_t t = 0; t < mean_k.size(); ++t) theta[mean_k[t] * size_t(B) + size_t(b)] = sums[t] / double(n);
        }
        for (size_t k = 0; k < K; ++k) {
            if (is_mean[k]) continue;
            if constexpr (sizeof(*c) == 2)
                theta[k * size_t(B) + size_t(b)] = evals[k]->eval16(c);
            else
                theta[k * size_t(B) + size_t(b)] = evals[k]->eval(c);
        }
    };
    // Resamples in chunks from a shared counter (each writes only its own
    // theta slots): on a machine shared with other jobs a slowed thread takes
    // fewer of them.
    parallel_for_dynamic(B, threads, dynamic_chunk(B, threads, 64), [&](int, auto& next) {
        std::vector<uint32_t> buf(static_cast<size_t>(n));
        std::vector<uint16_t> buf16(narrow && need_counts ? size_t(n) : 0);
        std::vector<double> sums(mean_rows.size());
        for (int64_t b0, b1; next(b0, b1);) {
            for (int64_t b = b0; b < b1; ++b) {
                if (need_counts && narrow) {
                    count_and_eval(buf16.data(), pos16.data(), b, sums.data());
                } else if (need_counts) {
                    count_and_eval(buf.data(), pos32.data(), b, sums.data());
                } else {
                    bootstrap_draws(n, opt.seed, b, buf.data());
                    for (const DrawPack& p : packs) {
                        double s[16];
                        draw_sums(p.rows.data(), p.width, buf.data(), n, s);
                        for (size_t l = 0; l < p.k.size(); ++l)
                            theta[p.k[l] * size_t(B) + size_t(b)] = s[l] / double(n);
                    }
                    for (size_t k = 0; k < K; ++k)
                        if (!in_pack[k]) theta[k * size_t(B) + size_t(b)] = stats[k]->eval_draws(buf.data());
                }
            }
        }
    });

    const double alpha = 1.0 - opt.confidence;
    std::vector<uint32_t> ones(size_t(n), 1u);
    std::vector<BootstrapResult> out(K);
    std::vector<double> jack(static_cast<size_t>(n));
    for (size_t k = 0; k < K; ++k) {
        BootstrapResult& r = out[k];
        double* t = theta.data() + k * size_t(B);
        r.estimate = stats[k]->eval(ones.data());
        if (opt.keep_distribution) r.distribution.assign(t, t + B);
        // mean, sd (ddof = 1), counts around 0 and around the estimate
        double mean = 0.0;
        for (int64_t b = 0; b < B; ++b) mean += t[b];
        mean /= double(B);
        double ss = 0.0;
        int64_t le0 = 0, ge0 = 0, lt_est = 0, le_est = 0;
        for (int64_t b = 0; b < B; ++b) {
            ss += (t[b] - mean) * (t[b] - mean);
            le0 += t[b] <= 0.0;
            ge0 += t[b] >= 0.0;
            lt_est += t[b] < r.estimate;
            le_est += t[b] <= r.estimate;
        }
        r.se = B > 1 ? std::sqrt(ss / double(B - 1)) : kNaN;
        r.bias = mean - r.estimate;
        // One example resamples to itself: no test (NaN), not a tiny p.
        r.p = n < 2 ? kNaN : std::min(1.0, 2.0 * double(std::min(le0, ge0) + 1) / double(B + 1));
        std::sort(t, t + B);
        r.pct_lo = quantile_sorted(t, B, alpha / 2.0);
        r.pct_hi = quantile_sorted(t, B, 1.0 - alpha / 2.0);
        // BCa (Efron & Tibshirani 14.3, 15.4), the conventions of scipy.stats.bootstrap.
        r.z0 = norm_ppf(double(lt_est + le_est) / (2.0 * double(B)));
        r.accel = kNaN;
        r.bca_lo = r.bca_hi = kNaN;
        if (n >= 2) {
            stats[k]->jackknife(jack.data(), threads);
            double jm = 0.0;
            for (double v : jack) jm += v;
            jm /= double(n);
            double num = 0.0, den = 0.0;
            for (double v : jack) {
                const double u = jm - v;
                num += u * u * u;
                den += u * u;
            }
            r.accel = den > 0.0 ? num / (6.0 * std::pow(den, 1.5)) : 0.0;
            if (std::isfinite(r.z0)) {
                const double za = norm_ppf(alpha / 2.0);
                const double n1 = r.z0 + za, n2 = r.z0 - za;
                const double a1 = norm_cdf(r.z0 + n1 / (1.0 - r.accel * n1));
                const double a2 = norm_cdf(r.z0 + n2 / (1.0 - r.accel * n2));
                r.bca_lo = quantile_sorted(t, B, a1);
                r.bca_hi = quantile_sorted(t, B, a2);
            }
        }
    }
    return out;
}

// ---------------------------------------------------------- permutation test
PermutationResult sign_flip_test(const double* d, int64_t n, int64_t resamples, uint64_t seed,
                                 int threads) {
    if (n < 1) throw std::invalid_argument("permutation test: need at least one pair");
    if (resamples < 1) throw std::invalid_argument("permutation test: resamples must be >= 1");
    check_finite(d, n, "permutation test");
    double sum = 0.0, sabs = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        sum += d[i];
        sabs += std::fabs(d[i]);
    }
    PermutationResult r;
    r.statistic = sum / double(n);
    // Tolerance for sums that are equal in exact arithmetic but were rounded
    // differently (scipy: 100 eps |observed|; we also allow for the summation).
    const double gamma = std::max(100.0 * std::numeric_limits<double>::epsilon() * std::fabs(r.statistic),
                                  16.0 * std::numeric_limits<double>::epsilon() * sabs);
    const double obs = r.statistic;
    r.exact = n < 62 && (int64_t(1) << n) <= resamples;
    const int64_t M = r.exact ? (int64_t(1) << n) : resamples;
    r.resamples = M;
    // Each block counts into its own slot; deterministic because each
    // resample's signs depend only on (seed, r) (or on the mask, when exact).
    // Random resamples go kResampleLanes at a time through the vector kernel,
    // which forms each one's sum exactly as the scalar loop would (four chains
    // j mod 4, branch-free sign flips), so the grouping changes no bit.
    constexpr int L = qfair::detail::kResampleLanes;
    const int64_t items = r.exact ? M : (M + L - 1) / L;
    const int T = resolve_threads(threads, items);
    std::vector<int64_t> le(size_t(T), 0), ge(size_t(T), 0);
    const auto sign_flip_sums = qfair::detail::active_kernels().sign_flip_sums;
    // items in chunks as threads free up; each worker counts into its own slot
    // (integer sums: any split gives the same totals)
    parallel_for_dynamic(items, T, dynamic_chunk(items, T, 64), [&](int k, auto& next) {
        int64_t cle = 0, cge = 0;
        auto count = [&](double s) {
            const double v = s / double(n);
            cle += v <= obs + gamma;
            cge += v >= obs - gamma;
        };
        int64_t i0, i1;
        if (r.exact) {
            while (next(i0, i1)) {
                for (int64_t m = i0; m < i1; ++m) {
                    double s = 0.0;
                    for (int64_t i = 0; i < n; ++i) s += ((m >> i) & 1) ? -d[i] : d[i];
                    count(s);
                }
            }
        } else {
            const int64_t words = (n + 63) / 64;
            std::vector<uint64_t> bits(size_t(words * L));
            double sums[L];
            while (next(i0, i1)) {
                for (int64_t b = i0; b < i1; ++b) {
                    const int64_t m0 = b * L;
                    const int used = int(std::min<int64_t>(L, M - m0));
                    for (int l = 0; l < L; ++l) {
                        if (l >= used) {  // a last, partial block: empty lanes, not counted
                            for (int64_t w = 0; w < words; ++w) bits[size_t(w * L + l)] = 0;
                            continue;
                        }
                        Rng rng(seed ^ kPermutationDomain, uint64_t(m0 + l));
                        for (int64_t w = 0; w < words; ++w) bits[size_t(w * L + l)] = rng.next();
                    }
                    sign_flip_sums(d, n, bits.data(), sums);
                    for (int l = 0; l < used; ++l) count(sums[l]);
                }
            }
        }
        le[size_t(k)] = cle;
        ge[size_t(k)] = cge;
    });
    int64_t cle = 0, cge = 0;
    for (int k = 0; k < T; ++k) {
        cle += le[size_t(k)];
        cge += ge[size_t(k)];
    }
    const int64_t adj = r.exact ? 0 : 1;
    const double pl = double(cle + adj) / double(M + adj);
    const double pg = double(cge + adj) / double(M + adj);
    r.p = std::min(1.0, 2.0 * std::min(pl, pg));
    return r;
}

}  // namespace qfair::stats
