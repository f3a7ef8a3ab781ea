// Permutation nulls (qfair/stats.hpp): random pairings and random subsets drawn
// by Fisher-Yates from the core's counter-based streams, one stream per resample.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "qfair/parallel.hpp"
#include "qfair/stats.hpp"

namespace qfair::stats {

namespace {
// Pairings and subsets never share a stream with each other or with the
// bootstrap and sign-flip streams.
constexpr uint64_t kPairingsDomain = 0x70616972696e6773ULL;  // "pairings"
constexpr uint64_t kSubsetDomain = 0x7375627365747321ULL;    // "subsets!"

void check_sizes(int64_t n, int64_t resamples, const char* what) {
    if (n < 0 || resamples < 0) throw std::invalid_argument(std::string(what) + ": negative size");
    if (n >= (int64_t(1) << 32)) throw std::invalid_argument(std::string(what) + ": n must be below 2^32");
}

// The first `steps` positions of a Fisher-Yates shuffle of p (already a
// permutation of [0, n)), in place, visit(i, p[i]) called for each in order
// as the shuffle goes: position i is final once step i has swapped it, and
// the visit's work overlaps the next draws.
template <class Visit>
void shuffle_prefix(uint32_t* p, uint32_t n, uint32_t steps, Rng& rng, Visit&& visit) {
    for (uint32_t i = 0; i < steps; ++i) {
        if (i + 1 < n) std::swap(p[i], p[i + rng.below(n - i)]);
        visit(i, p[i]);
    }
}
}  // namespace

void pairings_dot(const double* a, const double* b, int64_t k, int64_t n, int64_t resamples, uint64_t seed,
                  int threads, double* out) {
    check_sizes(n, resamples, "pairings_dot");
    if (k < 1) throw std::invalid_argument("pairings_dot: need at least one b");
    // b item by item ([n][k]): a drawn position's k values then share one or
    // two cache lines instead of sitting n apart (the same products and sums)
    std::vector<double> bt;
    if (k > 1) {
        bt.resize(size_t(n) * size_t(k));
        for (int64_t t = 0; t < k; ++t)
            for (int64_t j = 0; j < n; ++j) bt[size_t(j * k + t)] = b[t * n + j];
    }
    // resamples in chunks as threads free up (each writes its own outputs)
    const int T = resolve_threads(threads, resamples);
    parallel_for_dynamic(resamples, T, dynamic_chunk(resamples, T, 64), [&](int, auto& next) {
        std::vector<uint32_t> idx(static_cast<size_t>(n));
        std::vector<double> acc(static_cast<size_t>(k));
        const auto n32 = static_cast<uint32_t>(n);
        for (int64_t r0, r1; next(r0, r1);) {
            for (int64_t r = r0; r < r1; ++r) {
                std::iota(idx.begin(), idx.end(), 0u);  // each draw from the identity: thread-count invariant
                Rng rng(seed ^ kPairingsDomain, uint64_t(r));
                if (k == 1) {  // one accumulator: kept in a register
                    double sum = 0.0;
                    shuffle_prefix(idx.data(), n32, n32, rng, [&](uint32_t i, uint32_t j) { sum += a[i] * b[j]; });
                    out[r] = sum;
                    continue;
                }
                // one shuffle for every row of b, each row's sum taken in position order
                double* ac = acc.data();
                std::fill(acc.begin(), acc.end(), 0.0);
                shuffle_prefix(idx.data(), n32, n32, rng, [&](uint32_t i, uint32_t j) {
                    const double ai = a[i];
                    const double* bj = bt.data() + size_t(j) * size_t(k);
                    for (int64_t t = 0; t < k; ++t) ac[t] += ai * bj[t];
                });
                for (int64_t t = 0; t < k; ++t) out[t * resamples + r] = ac[t];
            }
        }
    });
}

void subset_sums(const double* z, int64_t n, int64_t k, int64_t resamples, uint64_t seed, int threads,
                 double* out) {
    check_sizes(n, resamples, "subset_sums");
    if (k < 0 || k > n) throw std::invalid_argument("subset_sums: k must be in [0, n]");
    const int T = resolve_threads(threads, resamples);
    parallel_for_dynamic(resamples, T, dynamic_chunk(resamples, T, 64), [&](int, auto& next) {
        std::vector<uint32_t> idx(static_cast<size_t>(n));
        for (int64_t r0, r1; next(r0, r1);) {
            for (int64_t r = r0; r < r1; ++r) {
                std::iota(idx.begin(), idx.end(), 0u);
                Rng rng(seed ^ kSubsetDomain, uint64_t(r));
                double acc = 0.0;
                shuffle_prefix(idx.data(), static_cast<uint32_t>(n), static_cast<uint32_t>(k), rng,
                               [&](uint32_t, uint32_t j) { acc += z[j]; });
                out[r] = acc;
            }
        }
    });
}

}  // namespace qfair::stats
