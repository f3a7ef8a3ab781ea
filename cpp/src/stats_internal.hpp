// Helpers shared by the stats_*.cpp files (not part of the public header).
#pragma once

#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

#include "qfair/stats.hpp"

namespace qfair::stats::detail {

int width_bin(double c, int bins);
void mass_edges_from_sorted(const double* sorted, int64_t n, int bins, std::vector<double>* edges);
// Calibration measure from per-bin count, sum of confidence and sum of correctness.
double measure_from_bins(const double* cnt, const double* sconf, const double* sacc, int nb,
                         double total, CalMeasure m);

// Run fn(begin, end) over [0, n) split into `threads` contiguous ranges.
template <class F>
void parallel_for(int64_t n, int threads, F&& fn) {
    if (n <= 0) return;
    int t = std::max(1, std::min<int>(threads, int(std::min<int64_t>(n, 1 << 20))));
    if (t == 1) {
        fn(int64_t(0), n);
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(size_t(t));
    for (int k = 0; k < t; ++k) {
        const int64_t b = n * k / t, e = n * (k + 1) / t;
        pool.emplace_back([&fn, b, e] { fn(b, e); });
    }
    for (auto& th : pool) th.join();
}

}  // namespace qfair::stats::detail
