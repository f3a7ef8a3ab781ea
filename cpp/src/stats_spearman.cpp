// Spearman's rho under bootstrap multiplicities (qfair/stats.hpp): the
// bootstrap of the uncertainty tests, one pass per variable and resample
// instead of a dozen numpy passes over [resamples, n] matrices.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "qfair/parallel.hpp"
#include "qfair/stats.hpp"

namespace qfair::stats {

namespace {

void check_order(const int64_t* order, const int64_t* end, int64_t n, const char* what) {
    for (int64_t p = 0; p < n; ++p) {
        if (order[p] < 0 || order[p] >= n)
            throw std::invalid_argument(std::string(what) + ": order holds " + std::to_string(order[p]) +
                                        ", outside [0, " + std::to_string(n) + ")");
        if (end[p] < p || end[p] >= n || (p > 0 && end[p - 1] >= p && end[p - 1] != end[p]))
            throw std::invalid_argument(std::string(what) + ": tie-group ends are not non-decreasing runs");
    }
}

// Visit the mid-rank of every item under weights w, in sorted order:
// fn(item, mid_rank) with mid = (weight before the group) + (group weight + 1) / 2.
template <class Fn>
void for_mid_ranks(const int64_t* order, const int64_t* end, int64_t n, const double* w, Fn&& fn) {
    double before = 0.0;
    for (int64_t p = 0; p < n;) {
        const int64_t e = end[p];
        double gw = 0.0;
        for (int64_t q = p; q <= e; ++q) gw += w[order[q]];
        const double mid = before + 0.5 * (gw + 1.0);
        for (int64_t q = p; q <= e; ++q) fn(order[q], mid);
        before += gw;
        p = e + 1;
    }
}

template <class C>
void weighted_spearman_impl(const C* counts, int64_t m, int64_t n_draw, const int64_t* clusters, int64_t n,
                            const int64_t* x_order, const int64_t* x_end, const int64_t* y_order,
                            const int64_t* y_end, int64_t k, int threads, double* out) {
    if (m < 0 || n < 0 || k < 0 || n_draw < 0) throw std::invalid_argument("weighted_spearman: negative size");
    if (!clusters && n != n_draw)
        throw std::invalid_argument("weighted_spearman: without clusters, items and drawn units must match");
    if (clusters)
        for (int64_t i = 0; i < n; ++i)
            if (clusters[i] < 0 || clusters[i] >= n_draw)
                throw std::invalid_argument("weighted_spearman: cluster " + std::to_string(clusters[i]) +
                                            " outside [0, " + std::to_string(n_draw) + ")");
    check_order(x_order, x_end, n, "weighted_spearman x");
    for (int64_t j = 0; j < k; ++j) check_order(y_order + j * n, y_end + j * n, n, "weighted_spearman y");
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const int T = resolve_threads(threads, m);
    parallel_for(m, T, [&](int64_t r0, int64_t r1, int) {
        std::vector<double> w(static_cast<size_t>(n)), dx(static_cast<size_t>(n));
        for (int64_t r = r0; r < r1; ++r) {
            const C* c = counts + r * n_draw;
            double tot = 0.0;
            for (int64_t i = 0; i < n; ++i) {
                w[i] = static_cast<double>(clusters ? c[clusters[i]] : c[i]);
                tot += w[i];
            }
            const double centre = 0.5 * (tot + 1.0);
            const double tiny = 1e-9 * tot * centre * centre;
            double sxx = 0.0;
            for_mid_ranks(x_order, x_end, n, w.data(), [&](int64_t i, double mid) {
                dx[i] = mid - centre;
                sxx += w[i] * dx[i] * dx[i];
            });
            for (int64_t j = 0; j < k; ++j) {
                double sxy = 0.0, syy = 0.0;
                for_mid_ranks(y_order + j * n, y_end + j * n, n, w.data(), [&](int64_t i, double mid) {
                    const double dy = mid - centre;
                    sxy += w[i] * dx[i] * dy;
                    syy += w[i] * dy * dy;
                });
                double rho = nan;
                if (sxx > tiny && syy > tiny) rho = std::fmax(-1.0, std::fmin(1.0, sxy / std::sqrt(sxx * syy)));
                out[j * m + r] = rho;
            }
        }
    });
}

}  // namespace

void weighted_spearman(const double* counts, int64_t m, int64_t n_draw, const int64_t* clusters, int64_t n,
                       const int64_t* x_order, const int64_t* x_end, const int64_t* y_order,
                       const int64_t* y_end, int64_t k, int threads, double* out) {
    weighted_spearman_impl(counts, m, n_draw, clusters, n, x_order, x_end, y_order, y_end, k, threads, out);
}

void weighted_spearman(const uint16_t* counts, int64_t m, int64_t n_draw, const int64_t* clusters, int64_t n,
                       const int64_t* x_order, const int64_t* x_end, const int64_t* y_order,
                       const int64_t* y_end, int64_t k, int threads, double* out) {
    weighted_spearman_impl(counts, m, n_draw, clusters, n, x_order, x_end, y_order, y_end, k, threads, out);
}

void weighted_spearman(const uint32_t* counts, int64_t m, int64_t n_draw, const int64_t* clusters, int64_t n,
                       const int64_t* x_order, const int64_t* x_end, const int64_t* y_order,
                       const int64_t* y_end, int64_t k, int threads, double* out) {
    weighted_spearman_impl(counts, m, n_draw, clusters, n, x_order, x_end, y_order, y_end, k, threads, out);
}

}  // namespace qfair::stats
