// Per-cell sums under bootstrap multiplicities (qfair/stats.hpp): the sums of
// w and w * v by cell that the study's calibration estimators read, and the
// plain weighted sums (one cell) of the shared draw, straight from the kept
// 16-bit counts -- no [rows, n] float64 copy of the counts.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels.hpp"
#include "qfair/parallel.hpp"
#include "qfair/stats.hpp"

namespace qfair::stats {

namespace {

// One row: acc[cell * (k + 1) + 0] += w, acc[cell * (k + 1) + 1 + t] += w * v[t],
// in item order. K > 0 fixes k at compile time (the common 1..4 columns).
template <int K, class C>
void row_sums(const C* c, const int64_t* cl, int64_t n, const double* v, int64_t k, double* acc) {
    const int64_t kk = K > 0 ? K : k;
    const int64_t width = kk + 1;
    for (int64_t i = 0; i < n; ++i) {
        const double w = static_cast<double>(c[i]);
        double* a = acc + cl[i] * width;
        const double* vi = v + i * kk;
        a[0] += w;
        for (int64_t t = 0; t < kk; ++t) a[1 + t] += w * vi[t];
    }
}

template <class C>
void cell_sums_impl(const C* counts, int64_t m, int64_t n, const int64_t* cells, bool per_row, int64_t n_cells,
                    const double* v, int64_t k, int threads, double* out) {
    if (m < 0 || n < 0 || k < 0) throw std::invalid_argument("cell_sums: negative size");
    if (n_cells < 1) throw std::invalid_argument("cell_sums: n_cells must be >= 1");
    const int64_t n_idx = per_row ? m * n : n;
    for (int64_t j = 0; j < n_idx; ++j)
        if (cells[j] < 0 || cells[j] >= n_cells)
            throw std::invalid_argument("cell_sums: cell " + std::to_string(cells[j]) + " outside [0, " +
                                        std::to_string(n_cells) + ")");
    const int64_t width = k + 1;
    auto run = [&](auto kconst) {
        constexpr int K = decltype(kconst)::value;
        const int T = resolve_threads(threads, m);
        parallel_for_dynamic(m, T, dynamic_chunk(m, T, 64), [&](int, auto& next) {
            std::vector<double> acc(static_cast<size_t>(n_cells * width));
            for (int64_t r0, r1; next(r0, r1);) {
                for (int64_t r = r0; r < r1; ++r) {
                    std::fill(acc.begin(), acc.end(), 0.0);
                    row_sums<K>(counts + r * n, per_row ? cells + r * n : cells, n, v, k, acc.data());
                    for (int64_t t = 0; t < width; ++t) {
                        double* o = out + (t * m + r) * n_cells;
                        for (int64_t c = 0; c < n_cells; ++c) o[c] = acc[c * width + t];
                    }
                }
            }
        });
    };
    switch (k) {
        case 1: run(std::integral_constant<int, 1>{}); break;
        case 2: run(std::integral_constant<int, 2>{}); break;
        case 3: run(std::integral_constant<int, 3>{}); break;
        case 4: run(std::integral_constant<int, 4>{}); break;
        default: run(std::integral_constant<int, 0>{}); break;  // k from the argument
    }
}

template <class C>
void weighted_dots_impl(const C* counts, int64_t m, int64_t n, const double* v, int64_t k, int threads,
                        double* out) {
    if (m < 0 || n < 0 || k < 0) throw std::invalid_argument("weighted_dots: negative size");
    // dot_counts_multi: each row's multiplicities converted once for a few
    // columns at a time, every dot the same bits as dot_counts alone.
    const auto dots = qfair::detail::active_kernels().dot_counts_multi;
    std::vector<const double*> cols(static_cast<size_t>(k));
    for (int64_t t = 0; t < k; ++t) cols[size_t(t)] = v + t * n;
    const int T = resolve_threads(threads, m);
    parallel_for_dynamic(m, T, dynamic_chunk(m, T, 64), [&](int, auto& next) {
        for (int64_t r0, r1; next(r0, r1);) {
            for (int64_t r = r0; r < r1; ++r) dots(counts + r * n, int(sizeof(C)), cols.data(), k, n, out + r * k);
        }
    });
}

}  // namespace

void weighted_dots(const uint16_t* counts, int64_t m, int64_t n, const double* v, int64_t k, int threads,
                   double* out) {
    weighted_dots_impl(counts, m, n, v, k, threads, out);
}

void weighted_dots(const uint32_t* counts, int64_t m, int64_t n, const double* v, int64_t k, int threads,
                   double* out) {
    weighted_dots_impl(counts, m, n, v, k, threads, out);
}

void cell_sums(const uint16_t* counts, int64_t m, int64_t n, const int64_t* cells, bool per_row, int64_t n_cells,
               const double* v, int64_t k, int threads, double* out) {
    cell_sums_impl(counts, m, n, cells, per_row, n_cells, v, k, threads, out);
}

void cell_sums(const uint32_t* counts, int64_t m, int64_t n, const int64_t* cells, bool per_row, int64_t n_cells,
               const double* v, int64_t k, int threads, double* out) {
    cell_sums_impl(counts, m, n, cells, per_row, n_cells, v, k, threads, out);
}

void cell_sums(const double* counts, int64_t m, int64_t n, const int64_t* cells, bool per_row, int64_t n_cells,
               const double* v, int64_t k, int threads, double* out) {
    cell_sums_impl(counts, m, n, cells, per_row, n_cells, v, k, threads, out);
}

}  // namespace qfair::stats
