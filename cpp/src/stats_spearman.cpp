// Spearman's rho under bootstrap multiplicities (qfair/stats.hpp): the
// bootstrap of the uncertainty tests, one pass per variable and resample
// instead of a dozen numpy passes over [resamples, n] matrices. The passes
// themselves run in the vector kernels (kernels.hpp, spearman_sums), several
// resamples at once.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.hpp"
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

// One of the core's functions per counts type (the kept draw's uint16 rows,
// uint32 rows or float64 multiplicities), each count read as a double.
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
    if (n >= (int64_t(1) << 31) || n_draw >= (int64_t(1) << 31))
        throw std::invalid_argument("weighted_spearman: items and drawn units must be below 2^31");
    const double nan = std::numeric_limits<double>::quiet_NaN();
    constexpr int L = detail::kResampleLanes;
    const auto spearman_sums = detail::active_kernels().spearman_sums;

    // The layout the kernel reads, made once per call: every pass reads its
    // sorted order's units (and, for y, the positions of its items in x's
    // sorted order, where x's centred mid-ranks are kept) sequentially, and
    // gathers only from the small lane-interleaved counts of its block.
    const auto N = static_cast<size_t>(n), K = static_cast<size_t>(k);
    std::vector<int32_t> item_unit(N), x_pos(N), x_unit(N), y_unit(K * N), y_xpos(K * N);
    for (int64_t i = 0; i < n; ++i) item_unit[size_t(i)] = int32_t(clusters ? clusters[i] : i);
    for (int64_t p = 0; p < n; ++p) {
        x_pos[size_t(x_order[p])] = int32_t(p);
        x_unit[size_t(p)] = item_unit[size_t(x_order[p])];
    }
    for (size_t q = 0; q < K * N; ++q) {
        y_unit[q] = item_unit[size_t(y_order[q])];
        y_xpos[q] = x_pos[size_t(y_order[q])];
    }

    // Resamples go L to a block, one per lane; each lane's result is that of
    // its resample alone, so the blocking (and the thread count) changes no bit.
    const int64_t blocks = (m + L - 1) / L;
    const int T = resolve_threads(threads, blocks);
    // blocks in chunks as threads free up (each writes its own outputs)
    parallel_for_dynamic(blocks, T, dynamic_chunk(blocks, T, 16), [&](int, auto& next) {
        std::vector<double> lanes(static_cast<size_t>(n_draw) * L), dx(N * L), sums((2 + 2 * K) * L);
        detail::SpearmanBlock blk{lanes.data(), item_unit.data(), x_unit.data(), x_end, y_unit.data(),
                                  y_xpos.data(), y_end, n, k, dx.data(), sums.data(), sums.data() + L,
                                  sums.data() + 2 * L, sums.data() + (2 + K) * L};
        for (int64_t b0, b1; next(b0, b1);) {
            for (int64_t b = b0; b < b1; ++b) {
                const int64_t r0 = b * L;
                const int used = int(std::min<int64_t>(L, m - r0));
                for (int l = 0; l < L; ++l) {
                    if (l >= used) {  // a last, partial block: empty lanes, their results unused
                        for (int64_t u = 0; u < n_draw; ++u) lanes[size_t(u * L + l)] = 0.0;
                        continue;
                    }
                    const C* c = counts + (r0 + l) * n_draw;
                    for (int64_t u = 0; u < n_draw; ++u) lanes[size_t(u * L + l)] = static_cast<double>(c[u]);
                }
                spearman_sums(blk);
                for (int l = 0; l < used; ++l) {
                    const double tot = blk.tot[l], sxx = blk.sxx[l];
                    const double centre = 0.5 * (tot + 1.0);
                    const double tiny = 1e-9 * tot * centre * centre;
                    for (int64_t j = 0; j < k; ++j) {
                        const double sxy = blk.sxy[j * L + l], syy = blk.syy[j * L + l];
                        double rho = nan;
                        if (sxx > tiny && syy > tiny) rho = std::fmax(-1.0, std::fmin(1.0, sxy / std::sqrt(sxx * syy)));
                        out[j * m + r0 + l] = rho;
                    }
                }
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
