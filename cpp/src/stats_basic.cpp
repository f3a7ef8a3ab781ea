// Random streams, the normal distribution, proportion intervals, McNemar and
// multiple-comparison adjustments.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "qfair/stats.hpp"

namespace qfair::stats {

namespace {
inline uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
}  // namespace

Rng::Rng(uint64_t seed, uint64_t stream) {
    // Mix the key (seed, stream) through two rounds of splitmix64 so that nearby
    // seeds and streams give unrelated states; xoshiro256** then runs the stream.
    uint64_t k = seed;
    uint64_t a = splitmix64(k);
    uint64_t x = a ^ (stream * 0xd1342543de82ef95ULL + 0x2545f4914f6cdd1dULL);
    uint64_t h = splitmix64(x);
    uint64_t y = h;
    for (auto& s : s_) s = splitmix64(y);
    if ((s_[0] | s_[1] | s_[2] | s_[3]) == 0) s_[0] = 1;
}

// ------------------------------------------------------------------- normal
double norm_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

double norm_ppf(double p) {
    if (std::isnan(p) || p < 0.0 || p > 1.0) return std::numeric_limits<double>::quiet_NaN();
    if (p == 0.0) return -std::numeric_limits<double>::infinity();
    if (p == 1.0) return std::numeric_limits<double>::infinity();
    // Work in the lower half; the upper half by symmetry.
    const bool upper = p > 0.5;
    const double q = upper ? 1.0 - p : p;  // exact for p > 0.5 (Sterbenz)
    // Starting point: Abramowitz & Stegun 26.2.23 (|error| < 4.5e-4).
    const double t = std::sqrt(-2.0 * std::log(q));
    double x = -(t - (2.515517 + 0.802853 * t + 0.010328 * t * t) /
                         (1.0 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t));
    // Halley steps on Phi(x) = q (cubic convergence; three reach double precision).
    const double s2pi = std::sqrt(2.0 * M_PI);
    for (int it = 0; it < 4; ++it) {
        const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - q;
        const double u = e * s2pi * std::exp(0.5 * x * x);
        const double step = u / (1.0 + 0.5 * x * u);
        x -= step;
        if (std::fabs(step) < 1e-17 * std::max(1.0, std::fabs(x))) break;
    }
    return upper ? -x : x;
}

// -------------------------------------------------------------- proportions
Interval wilson(int64_t k, int64_t n, double confidence) {
    if (n < 0 || k < 0 || k > n) throw std::invalid_argument("wilson: need 0 <= k <= n");
    if (!(confidence > 0.0 && confidence < 1.0))
        throw std::invalid_argument("wilson: confidence must be in (0, 1)");
    if (n == 0) return {0.0, 1.0};
    const double z = norm_ppf(0.5 + 0.5 * confidence);
    const double nn = double(n), ph = double(k) / nn, z2 = z * z;
    const double denom = 1.0 + z2 / nn;
    const double center = (ph + z2 / (2.0 * nn)) / denom;
    const double half = z / denom * std::sqrt(ph * (1.0 - ph) / nn + z2 / (4.0 * nn * nn));
    // The bounds are exactly 0 at k = 0 and exactly 1 at k = n (rounding aside).
    return {k == 0 ? 0.0 : std::max(0.0, center - half), k == n ? 1.0 : std::min(1.0, center + half)};
}

namespace {
// P(X <= k) and P(X = k) for X ~ Binomial(n, 1/2), k <= n/2.
void binom_half_lower(int64_t k, int64_t n, double* cdf, double* pmf) {
    const double nn = double(n);
    const double lp = std::lgamma(nn + 1.0) - std::lgamma(double(k) + 1.0) -
                      std::lgamma(nn - double(k) + 1.0) - nn * std::log(2.0);
    const double pk = std::exp(lp);
    // Sum downwards from the largest term: pmf(i-1) = pmf(i) * i / (n - i + 1).
    double term = 1.0, sum = 1.0;
    for (int64_t i = k; i > 0; --i) {
        term *= double(i) / (nn - double(i) + 1.0);
        sum += term;
        if (term < 1e-18 * sum) break;
    }
    *cdf = pk * sum;
    *pmf = pk;
}
}  // namespace

McNemarResult mcnemar(int64_t b, int64_t c) {
    if (b < 0 || c < 0) throw std::invalid_argument("mcnemar: counts must be >= 0");
    const int64_t n = b + c;
    if (n == 0) return {1.0, 1.0};
    const int64_t k = std::min(b, c);
    double cdf, pmf;
    binom_half_lower(k, n, &cdf, &pmf);
    const double p = std::min(1.0, 2.0 * cdf);
    const double mid = std::min(1.0, 2.0 * cdf - pmf);
    return {p, mid};
}

// ------------------------------------------------------ multiple comparisons
namespace {
std::vector<int64_t> finite_order(const double* p, int64_t n) {
    std::vector<int64_t> idx;
    idx.reserve(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
        if (std::isnan(p[i])) continue;
        if (p[i] < 0.0 || p[i] > 1.0)
            throw std::invalid_argument("p-values must lie in [0, 1] (or be NaN)");
        idx.push_back(i);
    }
    std::stable_sort(idx.begin(), idx.end(), [p](int64_t a, int64_t b) { return p[a] < p[b]; });
    return idx;
}
}  // namespace

void holm(const double* p, int64_t n, double* out) {
    auto idx = finite_order(p, n);
    for (int64_t i = 0; i < n; ++i)
        if (std::isnan(p[i])) out[i] = std::numeric_limits<double>::quiet_NaN();
    const size_t m = idx.size();
    double running = 0.0;
    for (size_t j = 0; j < m; ++j) {
        const double v = std::min(1.0, double(m - j) * p[idx[j]]);
        running = std::max(running, v);
        out[idx[j]] = running;
    }
}

void benjamini_hochberg(const double* p, int64_t n, double* out) {
    auto idx = finite_order(p, n);
    for (int64_t i = 0; i < n; ++i)
        if (std::isnan(p[i])) out[i] = std::numeric_limits<double>::quiet_NaN();
    const size_t m = idx.size();
    double running = 1.0;
    for (size_t j = m; j-- > 0;) {
        const double v = std::min(1.0, double(m) * p[idx[j]] / double(j + 1));
        running = std::min(running, v);
        out[idx[j]] = running;
    }
}

}  // namespace qfair::stats
