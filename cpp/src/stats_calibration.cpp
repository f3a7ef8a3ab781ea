// Top-label calibration: equal-width and equal-mass binning, ECE / MCE / RMS-CE,
// and the debiased squared-L2 estimator of Kumar et al. (2019).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "qfair/stats.hpp"
#include "stats_internal.hpp"

namespace qfair::stats {

namespace detail {

int width_bin(double c, int bins) {
    // (lo, hi] with edges k/B, conf <= 0 in bin 0, conf > 1 in the last bin.
    if (!(c > 0.0)) return 0;
    if (c >= 1.0) return bins - 1;
    int b = int(std::ceil(c * double(bins))) - 1;
    b = std::min(std::max(b, 0), bins - 1);
    while (b < bins - 1 && c > double(b + 1) / double(bins)) ++b;
    while (b > 0 && c <= double(b) / double(bins)) --b;
    return b;
}

void mass_edges_from_sorted(const double* sorted, int64_t n, int bins, std::vector<double>* edges) {
    edges->clear();
    const int64_t k = std::min<int64_t>(bins, n);
    if (k <= 0) {
        edges->push_back(1.0);
        return;
    }
    // np.array_split sizes: the first n % k groups hold one extra element.
    const int64_t base = n / k, extra = n % k;
    int64_t end = 0;
    for (int64_t i = 0; i + 1 < k; ++i) {
        end += base + (i < extra ? 1 : 0);
        edges->push_back((sorted[end - 1] + sorted[end]) / 2.0);
    }
    edges->push_back(1.0);
    std::sort(edges->begin(), edges->end());
    edges->erase(std::unique(edges->begin(), edges->end()), edges->end());
}

double measure_from_bins(const double* cnt, const double* sconf, const double* sacc, int nb,
                         double total, CalMeasure m) {
    if (!(total > 0)) return std::numeric_limits<double>::quiet_NaN();
    double acc = 0.0;
    for (int b = 0; b < nb; ++b) {
        const double nbk = cnt[b];
        if (nbk <= 0) continue;
        const double gap = sacc[b] - sconf[b];
        switch (m) {
            case CalMeasure::ECE: acc += std::fabs(gap); break;
            case CalMeasure::MCE: acc = std::max(acc, std::fabs(gap) / nbk); break;
            case CalMeasure::RMS: acc += gap * gap / nbk; break;
            case CalMeasure::L2Debiased:
                if (nbk >= 2) {
                    const double a = sacc[b] / nbk;
                    acc += gap * gap / nbk - nbk * a * (1.0 - a) / (nbk - 1.0);
                }
                break;
        }
    }
    switch (m) {
        case CalMeasure::ECE: return acc / total;
        case CalMeasure::MCE: return acc;
        case CalMeasure::RMS: return std::sqrt(acc / total);
        case CalMeasure::L2Debiased: return std::sqrt(std::max(0.0, acc / total));
    }
    return acc;
}

}  // namespace detail

int64_t bin_assign(const double* conf, int64_t n, int bins, Binning binning, int32_t* bin_of,
                   std::vector<double>* upper) {
    if (bins < 1) throw std::invalid_argument("calibration: bins must be >= 1");
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(conf[i]))
            throw std::invalid_argument("calibration: confidences must be finite");
    if (binning == Binning::Width) {
        for (int64_t i = 0; i < n; ++i) bin_of[i] = detail::width_bin(conf[i], bins);
        if (upper) {
            upper->resize(size_t(bins));
            for (int b = 0; b < bins; ++b) (*upper)[size_t(b)] = double(b + 1) / double(bins);
        }
        return bins;
    }
    std::vector<double> sorted(conf, conf + n), edges;
    std::sort(sorted.begin(), sorted.end());
    detail::mass_edges_from_sorted(sorted.data(), n, bins, &edges);
    const int64_t nb = int64_t(edges.size());
    for (int64_t i = 0; i < n; ++i) {
        int64_t b = std::lower_bound(edges.begin(), edges.end(), conf[i]) - edges.begin();
        bin_of[i] = int32_t(std::min(b, nb - 1));
    }
    if (upper) *upper = edges;
    return nb;
}

CalibrationResult calibration(const double* conf, const double* correct, int64_t n, int bins,
                              Binning binning) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(correct[i]))
            throw std::invalid_argument("calibration: correctness must be finite");
    std::vector<int32_t> bin_of(static_cast<size_t>(n));
    std::vector<double> upper;
    const int64_t nb = bin_assign(conf, n, bins, binning, bin_of.data(), &upper);
    std::vector<double> cnt(size_t(nb), 0.0), sc(size_t(nb), 0.0), sa(size_t(nb), 0.0);
    for (int64_t i = 0; i < n; ++i) {
        const size_t b = size_t(bin_of[size_t(i)]);
        cnt[b] += 1.0;
        sc[b] += conf[i];
        sa[b] += correct[i];
    }
    CalibrationResult r;
    const double N = double(n);
    r.ece = detail::measure_from_bins(cnt.data(), sc.data(), sa.data(), int(nb), N, CalMeasure::ECE);
    r.mce = detail::measure_from_bins(cnt.data(), sc.data(), sa.data(), int(nb), N, CalMeasure::MCE);
    r.rms = detail::measure_from_bins(cnt.data(), sc.data(), sa.data(), int(nb), N, CalMeasure::RMS);
    r.l2_debiased =
        detail::measure_from_bins(cnt.data(), sc.data(), sa.data(), int(nb), N, CalMeasure::L2Debiased);
    // ce2 without the clamp.
    double ce2 = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
        const double k = cnt[size_t(b)];
        if (k < 2) continue;
        const double a = sa[size_t(b)] / k, c = sc[size_t(b)] / k;
        ce2 += k / N * ((a - c) * (a - c) - a * (1.0 - a) / (k - 1.0));
    }
    r.ce2_debiased = n > 0 ? ce2 : std::numeric_limits<double>::quiet_NaN();
    for (int64_t b = 0; b < nb; ++b) {
        const double lo = binning == Binning::Width ? double(b) / double(bins)
                                                    : (b == 0 ? 0.0 : upper[size_t(b - 1)]);
        r.lo.push_back(lo);
        r.hi.push_back(upper[size_t(b)]);
        const double k = cnt[size_t(b)];
        r.count.push_back(int64_t(k));
        r.conf_mean.push_back(k > 0 ? sc[size_t(b)] / k : std::numeric_limits<double>::quiet_NaN());
        r.acc_mean.push_back(k > 0 ? sa[size_t(b)] / k : std::numeric_limits<double>::quiet_NaN());
    }
    return r;
}

}  // namespace qfair::stats
