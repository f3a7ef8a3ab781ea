// Resampling statistics, calibration binning and multiple-testing corrections.
//
// Pure C++17: pointers and lengths in, plain structs out; throws
// std::invalid_argument on bad input. Definitions and edge conventions are those
// of docs/metrics.md.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace qfair::stats {

// ---------------------------------------------------------------- random numbers
// Counter-based streams: stream(seed, k) depends only on (seed, k), so work split
// over any number of threads draws exactly the same numbers.
// The steps are defined here, inline, because the permutation nulls call them
// once per shuffled item.
class Rng {
public:
    Rng(uint64_t seed, uint64_t stream);
    uint64_t next();
    // Uniform integer in [0, n), unbiased (Lemire's multiply-and-reject), n < 2^32.
    // Uses both 32-bit halves of each 64-bit output (the high half first).
    uint32_t below(uint32_t n);

private:
    uint32_t next32();
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    uint64_t s_[4];
    uint64_t spare_ = 0;
    bool has_spare_ = false;
};

inline uint64_t Rng::next() {  // xoshiro256**
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

inline uint32_t Rng::next32() {
    if (has_spare_) {
        has_spare_ = false;
        return uint32_t(spare_);
    }
    const uint64_t r = next();
    spare_ = r;
    has_spare_ = true;
    return uint32_t(r >> 32);
}

inline uint32_t Rng::below(uint32_t n) {
    // Lemire, "Fast random integer generation in an interval" (2019).
    uint64_t m = uint64_t(next32()) * uint64_t(n);
    uint32_t l = uint32_t(m);
    if (l < n) {
        const uint32_t t = uint32_t(-n) % n;
        while (l < t) {
            m = uint64_t(next32()) * uint64_t(n);
            l = uint32_t(m);
        }
    }
    return uint32_t(m >> 32);
}

// ------------------------------------------------------------ normal distribution
double norm_cdf(double x);
double norm_ppf(double p);  // inverse of norm_cdf (Wichura AS241, ~1e-16 relative)

// ---------------------------------------------------------------- proportions
struct Interval {
    double lo;
    double hi;
};
// Wilson score interval for k successes in n trials at `confidence` (two-sided).
// n = 0 gives [0, 1].
Interval wilson(int64_t k, int64_t n, double confidence);

// McNemar on the discordant counts b, c: exact two-sided
// p = min(1, 2 BinomCDF(min(b,c); b+c, 1/2)) and mid-p = p - BinomPMF(min(b,c)).
// b + c = 0 gives 1 for both.
struct McNemarResult {
    double p_exact;
    double p_mid;
};
McNemarResult mcnemar(int64_t b, int64_t c);

// -------------------------------------------------------- multiple comparisons
// Adjusted p-values over the family of finite entries of p (NaN entries stay NaN
// and are not counted in the family). Output in input order.
void holm(const double* p, int64_t n, double* out);
void benjamini_hochberg(const double* p, int64_t n, double* out);

// ------------------------------------------------------------------ calibration
enum class Binning { Width, Mass };

// Bin index of every example. Width: B equal-width bins with edges k/B,
// intervals (lo, hi], confidence 0 in the first bin. Mass: the equal-mass bins of
// Kumar et al. 2019 (sorted confidences split into min(B, n) near-equal groups,
// edges at the mid-points between neighbouring groups, duplicate edges merged,
// a value equal to an edge goes to the lower bin). Returns the number of bins
// and fills `upper` with each bin's upper edge (the last is 1).
int64_t bin_assign(const double* conf, int64_t n, int bins, Binning binning, int32_t* bin_of,
                   std::vector<double>* upper);

struct CalibrationResult {
    double ece = 0;          // sum_b n_b/N |acc_b - conf_b|
    double mce = 0;          // max over non-empty bins
    double rms = 0;          // sqrt(sum_b n_b/N (acc_b - conf_b)^2)
    double ce2_debiased = 0; // Kumar et al.: sum_b n_b/N [(acc_b-conf_b)^2 - acc_b(1-acc_b)/(n_b-1)], bins with n_b<2 add 0
    double l2_debiased = 0;  // sqrt(max(0, ce2_debiased))
    // Reliability diagram, one entry per bin (empty bins included for width binning).
    std::vector<double> lo, hi, conf_mean, acc_mean;
    std::vector<int64_t> count;
};
CalibrationResult calibration(const double* conf, const double* correct, int64_t n, int bins,
                              Binning binning);

enum class CalMeasure { ECE, MCE, RMS, L2Debiased };

// ---------------------------------------------------------------- bootstrap
// Evaluates a statistic on multiplicities listed in an order fixed when it was
// made (see Statistic::ordered). eval must be safe to call from several
// threads at once.
class OrderedEval {
public:
    explicit OrderedEval(int64_t n) : n_(n) {}
    virtual ~OrderedEval() = default;
    // counts[j] = multiplicity of example order[j], j < n.
    virtual double eval(const uint32_t* counts) const = 0;
    // The same with 16-bit multiplicities (the driver's choice for n < 2^16);
    // the default widens them and calls eval.
    virtual double eval16(const uint16_t* counts) const;
    // Called once by the driver before the resamples, with the evaluators made
    // before this one (evaluated before it in every resample, on the same
    // thread): an evaluator whose costly part equals an earlier one's (the
    // same inputs, another calibration measure) may read that one's result of
    // the current resample instead of computing it again. `next_slot` numbers
    // the per-thread buffers of the evaluators that are read. Default: no-op.
    virtual void share(const std::vector<OrderedEval*>& /*earlier*/, int* /*next_slot*/) {}
    // A mean: the terms t (in the driver's order) such that eval gives
    // sum_j counts[j] t[j] / n, the sum as the kernels' dot_counts. The driver
    // then evaluates every mean of a resample in one pass over its counts,
    // with the same bits. Null (the default): not a mean.
    virtual const double* mean_terms() const { return nullptr; }
    int64_t n() const { return n_; }

private:
    int64_t n_;
};

// A statistic evaluated on a resample given as multiplicities (counts[i] = how
// many times example i was drawn; they sum to n).
class Statistic {
public:
    virtual ~Statistic() = default;
    virtual double eval(const uint32_t* counts) const = 0;
    // The bootstrap driver counts the draws in one order of the examples that
    // every statistic then reads: the first statistic's preferred order (a
    // permutation of 0..n-1, position -> example; null: no preference), so
    // that it reads its multiplicities sequentially.
    virtual const std::vector<uint32_t>* preferred_order() const { return nullptr; }
    // An evaluator on multiplicities listed in `order` (null: example order);
    // `order` outlives it. Equals eval() up to floating-point summation order.
    // The default scatters the multiplicities back and calls eval().
    virtual std::unique_ptr<OrderedEval> ordered(const std::vector<uint32_t>* order) const;
    // Faster path from the drawn indices themselves (idx has n entries), for
    // statistics that need no counts; the result equals eval(counts of idx) up
    // to floating-point summation order.
    virtual bool has_draws_path() const { return false; }
    virtual double eval_draws(const uint32_t* /*idx*/) const { return 0.0; }
    // Terms t (n of them) for which eval_draws(idx) is (s0 + s1) / n, s0 and s1
    // the sums of t[idx[k]] over the even and the odd k (the last k of an odd
    // n in s0), each in draw order: the driver then sums several such
    // statistics side by side (Kernels::draw_sums), bit for bit. Null: none.
    virtual const double* draw_terms() const { return nullptr; }
    // Leave-one-out values theta_(i), i = 0..n-1 (for the BCa acceleration).
    // The default evaluates with counts set to 1 except a 0 at i.
    virtual void jackknife(double* out, int threads) const;
    int64_t n() const { return n_; }

protected:
    explicit Statistic(int64_t n) : n_(n) {}
    int64_t n_;
};

// mean(y) - mean(x) over the resampled pairs; x may be null (then mean(y)).
std::unique_ptr<Statistic> make_mean_diff(const double* x, const double* y, int64_t n);
// CE(y) - CE(x) for a calibration measure, the binning recomputed on every
// resample; conf_x/correct_x may be null (then CE(y)).
std::unique_ptr<Statistic> make_calibration_diff(const double* conf_x, const double* correct_x,
                                                 const double* conf_y, const double* correct_y,
                                                 int64_t n, int bins, Binning binning,
                                                 CalMeasure measure);

struct BootstrapOptions {
    int64_t resamples = 10000;
    uint64_t seed = 0;
    double confidence = 0.95;
    int threads = 0;  // 0: one per available CPU (qfair::resolve_threads)
    bool keep_distribution = false;
};

struct BootstrapResult {
    double estimate;  // statistic on the original sample
    double se;        // standard deviation of the bootstrap distribution
    double bias;      // mean(theta*) - estimate
    double pct_lo, pct_hi;  // percentile interval
    double bca_lo, bca_hi;  // BCa interval (NaN when undefined)
    double z0, accel;
    // Two-sided p for "difference = 0", by inverting the percentile interval:
    // min(1, 2 min(1 + #{theta* <= 0}, 1 + #{theta* >= 0}) / (B + 1)); NaN when n = 1.
    double p;
    std::vector<double> distribution;  // theta*_b, when kept
};

// One shared index draw per resample b (from Rng(seed, b)) for every statistic,
// so all statistics are paired with each other as well as within themselves.
std::vector<BootstrapResult> paired_bootstrap(const std::vector<const Statistic*>& stats,
                                              const BootstrapOptions& opt);

// The indices drawn for resample b (n of them, each uniform on [0, n)).
void bootstrap_draws(int64_t n, uint64_t seed, int64_t b, uint32_t* idx);
// The multiplicities of resample b (exposed for tests): counts has n entries.
void bootstrap_counts(int64_t n, uint64_t seed, int64_t b, uint32_t* counts);

// Rows b0 .. b0 + rows - 1 of the multiplicities above, written to out
// ([rows, n], row-major), parallel over rows (each row is its own stream, so
// the result does not depend on the thread count). The uint16 form returns
// false (out then partly written) when a multiplicity exceeds 65535, which
// only n >= 2^16 makes possible.
void bootstrap_count_rows(int64_t n, uint64_t seed, int64_t b0, int64_t rows, int threads, uint32_t* out);
bool bootstrap_count_rows(int64_t n, uint64_t seed, int64_t b0, int64_t rows, int threads, uint16_t* out);

// Quantile with linear interpolation (numpy's default) of a sorted array.
double quantile_sorted(const double* v, int64_t n, double q);

// ---------------------------------------------------------- permutation test
struct PermutationResult {
    double statistic;  // mean(d)
    double p;          // two-sided
    int64_t resamples; // 2^n when exact
    bool exact;
};
// Paired sign-flip test of mean(d) = 0. Exact enumeration when 2^n <= resamples,
// else `resamples` random sign vectors (stream (seed, r)) and the +1 correction;
// conventions of scipy.stats.permutation_test(permutation_type='samples').
PermutationResult sign_flip_test(const double* d, int64_t n, int64_t resamples, uint64_t seed,
                                 int threads);

// ------------------------------------------------ Spearman under multiplicities
// Spearman's rho of (x, y_j), j < k, for each of m rows of bootstrap
// multiplicities: the Pearson correlation of the mid-ranks (ties averaged) of
// the sample in which item i appears w_i times, without expanding it.
//   counts      [m, n_draw]: multiplicities of the drawn units (whole numbers)
//   clusters    [n] or null: item i carries counts[r, clusters[i]] (a cluster
//               bootstrap); null: n == n_draw and item i carries counts[r, i]
//   x_order     [n]: a stable argsort of x; x_end [n]: for sorted position p,
//               the last sorted position of p's tie group
//   y_order, y_end [k, n]: the same for each y_j
//   out         [k, m]: rho, NaN where either side of a resample is constant
//               (its centred sum of squares <= 1e-9 N ((N+1)/2)^2, N = sum w)
// Rows are independent (parallel over r); sums are centred on (N+1)/2, so no
// large terms cancel. Matches scipy.stats.spearmanr on the expanded sample.
// Each row's result is that of the scalar walk (weights summed in item order,
// tie groups and sums in sorted order, no fused multiply-add), bit for bit on
// every instruction set and thread count. n and n_draw must be below 2^31.
void weighted_spearman(const double* counts, int64_t m, int64_t n_draw, const int64_t* clusters, int64_t n,
                       const int64_t* x_order, const int64_t* x_end, const int64_t* y_order,
                       const int64_t* y_end, int64_t k, int threads, double* out);
// The same on the kept draw's uint16 / uint32 counts (no float64 copy).
void weighted_spearman(const uint16_t* counts, int64_t m, int64_t n_draw, const int64_t* clusters, int64_t n,
                       const int64_t* x_order, const int64_t* x_end, const int64_t* y_order,
                       const int64_t* y_end, int64_t k, int threads, double* out);
void weighted_spearman(const uint32_t* counts, int64_t m, int64_t n_draw, const int64_t* clusters, int64_t n,
                       const int64_t* x_order, const int64_t* x_end, const int64_t* y_order,
                       const int64_t* y_end, int64_t k, int threads, double* out);

// ------------------------------------------------ per-cell sums under multiplicities
// For each of m rows of multiplicities w (counts [m, n]: uint16, uint32 or
// double) and each item i in cell cells[i] (cells [n]; or cells[r * n + i],
// [m, n], when per_row) with k values v[i * k + t] ([n, k], row-major):
//   out[(0 * m + r) * n_cells + c]       = sum over items of cell c of w[r, i]
//   out[((1 + t) * m + r) * n_cells + c] = sum over items of cell c of w[r, i] * v[i, t]
// Every sum starts at +0 and adds its terms in item order (numpy's bincount
// order), each term the double product w * v (zero multiplicities included, so
// a NaN or inf value reaches its cell's sums as it does in numpy). Rows are
// independent (parallel over r): the result does not depend on the thread
// count. Cells outside [0, n_cells) throw std::invalid_argument.
void cell_sums(const uint16_t* counts, int64_t m, int64_t n, const int64_t* cells, bool per_row,
               int64_t n_cells, const double* v, int64_t k, int threads, double* out);
void cell_sums(const uint32_t* counts, int64_t m, int64_t n, const int64_t* cells, bool per_row,
               int64_t n_cells, const double* v, int64_t k, int threads, double* out);
void cell_sums(const double* counts, int64_t m, int64_t n, const int64_t* cells, bool per_row,
               int64_t n_cells, const double* v, int64_t k, int threads, double* out);

// out[r * k + t] = sum_i counts[r, i] * v[t * n + i] for m rows of
// multiplicities (counts [m, n]) and k value columns stored column by column
// (v [k, n]): the one-cell case of cell_sums as the kernels' dot_counts (sixteen
// chains in a fixed order, the same bits on every instruction set and at any
// thread count; parallel over rows).
void weighted_dots(const uint16_t* counts, int64_t m, int64_t n, const double* v, int64_t k, int threads,
                   double* out);
void weighted_dots(const uint32_t* counts, int64_t m, int64_t n, const double* v, int64_t k, int threads,
                   double* out);

// ------------------------------------------------- permutation null distributions
// Monte Carlo nulls of the two permutation tests the analysis runs, one
// resample r per counter-based stream (independent of the thread count):
//   pairings_dot: out[t, r] = sum_i a[i] * b[t, pi_r(i)] for each of the k
//                 rows of b [k, n] (out [k, resamples]), pi_r a uniform
//                 permutation of [0, n) (Fisher-Yates) shared by the rows --
//                 Spearman's rho under permuted pairings when a, b are centred
//                 ranks (scaled by the caller); each row's sums are those of
//                 that row alone;
//   subset_sums:  out[r] = sum of z over a uniform k-subset of [0, n) (the
//                 first k steps of Fisher-Yates) -- the two-sample test of
//                 mean(first k) - mean(rest).
// Each draw's numbers come from Rng(seed ^ domain, r); n < 2^32.
void pairings_dot(const double* a, const double* b, int64_t k, int64_t n, int64_t resamples, uint64_t seed,
                  int threads, double* out);
void subset_sums(const double* z, int64_t n, int64_t k, int64_t resamples, uint64_t seed, int threads,
                 double* out);

}  // namespace qfair::stats
