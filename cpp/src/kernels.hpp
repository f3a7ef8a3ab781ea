// Internal interface between the row-level vector kernels (compiled once per
// instruction set, see kernels_impl.inc) and the driver (divergence.cpp).
//
// The kernel translation units are compiled with different -m flags, so
// everything they share with the rest of the library must be plain data or
// out-of-line functions: an inline function or template instantiated in two
// of them could be merged by the linker into the AVX-512 copy and then run on
// a CPU without AVX-512.
#pragma once

#include <cstdint>

#include "qfair/divergence.hpp"

namespace qfair::detail {

// Best-k collector over (value, token id), best = larger value, then lower id.
// A binary heap with the worst kept element at index 0. Storage is owned by
// the caller. `threshold` is the worst kept value once the heap is full,
// -inf before: a scan only offers elements strictly above it, which is exact
// because a scan visits ids in increasing order (an equal value that comes
// later has a higher id and so loses the tie).
struct TopK {
    float* value;
    int64_t* id;
    int k;
    int size;
    float threshold;
};
void topk_reset(TopK& t);
void topk_offer(TopK& t, float value, int64_t id);   // out of line on purpose
// Sorts the kept elements best-first in place.
void topk_sort(TopK& t);

struct ScanResult {
    float max;         // largest value (the best element of the top-k; NaN never enters it)
    bool invalid;      // max is +inf (an +inf entry) or -inf (no finite entry); a NaN
                       // entry is caught by sum_exp instead (its total is NaN)
    int64_t greater;   // #{v : x[v] > target_value}
};

// Sums are accumulated in double; terms are formed in float32.
struct JointSums {
    double kl_pq, kl_qp, js, tv;
};

// sum_v e^y and sum_v e^y * y, y = x[v] - shift; both NaN when the row holds a NaN.
struct SumExp {
    double total, weighted;
};

// The joint pass over a row pair. dc = dc_hi + dc_lo = cq - cp, the
// difference of the rows' log-normalisers, forms d = log q - log p =
// (xq - xp) - dc; p_hat holds exp(xp - max p) from the normaliser pass and
// inv_sp = 1 / sum(p_hat) (likewise for q), rounded to float and in double.
struct JointArgs {
    const void* p;
    DType dp;
    const void* q;
    DType dq;
    const float* p_hat;
    const float* q_hat;
    int64_t n;
    float dc_hi, dc_lo, inv_sp, inv_sq;
    double inv_sp_d, inv_sq_d;
    // The next row pair (null on a worker's last row): prefetched during this
    // pass, so that the next row's first pass finds it in cache.
    const void* next_p = nullptr;
    const void* next_q = nullptr;
    // JS wanted: its series and, where |d| >= 0.5, its log and exp cost the
    // most of the pass; without it JointSums::js is NaN.
    bool want_js = true;
};

// Weighted sums for the bootstrap (stats_bootstrap.cpp). Multiplicities are
// uint16 (count_bytes = 2) or uint32 (4, values < 2^31), read as
// counts[gather[j]], or counts[j] when gather is null. Every sum runs in a
// fixed number of chains (element offset from the range's start mod 16 for
// dot_counts, mod 4 for segment_sums) combined by a fixed pairwise tree,
// without FMA, so that every instruction set gives the same bits.
struct Segment {
    int64_t begin, end;
};

// Resampling statistics a block of kResampleLanes resamples at once, one per
// vector lane, each lane running exactly the operations of the scalar loop in
// the same order (no FMA), so every instruction set and any grouping of
// resamples give the same bits.
//
// Weighted Spearman (stats_spearman.cpp). Items are named by the drawn
// unit (cluster) whose multiplicity they carry; counts[u * kResampleLanes + l]
// is unit u's multiplicity in lane l's resample.
constexpr int kResampleLanes = 8;

struct SpearmanBlock {
    const double* counts;     // [n_draw][kResampleLanes]
    const int32_t* item_unit; // [n] unit of item i (item order: the total's summation order)
    const int32_t* x_unit;    // [n] unit of the item at each position of x's sorted order
    const int64_t* x_end;     // [n] last position of that position's tie group
    const int32_t* y_unit;    // [k][n] likewise for each y
    const int32_t* y_xpos;    // [k][n] position in x's sorted order of the item at each y position
    const int64_t* y_end;     // [k][n]
    int64_t n, k;
    double* dx;               // scratch [n][kResampleLanes]: x's centred mid-ranks in x's sorted order
    // out, [kResampleLanes] each (sxy, syy: [k][kResampleLanes]): total weight,
    // centred weighted sums of squares and cross products of the mid-ranks
    double *tot, *sxx, *sxy, *syy;
};

struct Kernels {
    const char* name;
    // sum_j c_j d[j] over [0, n).
    double (*dot_counts)(const void* counts, int count_bytes, const uint32_t* gather, const double* d, int64_t n);
    // out[t] = dot_counts(counts, count_bytes, nullptr, d[t], n) for t < m, bit
    // for bit: each multiplicity converted once for a few rows at a time.
    void (*dot_counts_multi)(const void* counts, int count_bytes, const double* const* d, int64_t m, int64_t n,
                             double* out);
    // sum_j c_j t[j] over [0, n) in integer arithmetic, for integer-valued
    // terms: exact, so equal to dot_counts of the same values as doubles. The
    // caller guarantees c_j < 2^15 and sum_j c_j |t[j]| < 2^31 (every partial
    // sum of a 32-bit lane then fits).
    int64_t (*dot_counts_i16)(const uint16_t* counts, const int16_t* t, int64_t n);
    // For each segment s: out[s * (k + 1)] = sum c_j, out[s * (k + 1) + 1 + t] =
    // sum c_j cols[t][j] over j in the segment; k is 2 or 4.
    void (*segment_sums)(const void* counts, int count_bytes, const uint32_t* gather, const double* const* cols,
                         int k, const Segment* segs, int64_t nseg, double* out);
    // The bootstrap's range reduction (Lemire) of m random 64-bit words: idx[2j] =
    // ((z[j] >> 32) * n) >> 32, idx[2j + 1] = ((z[j] mod 2^32) * n) >> 32.
    // Returns whether some product's low word is below n (a possible
    // rejection: the caller then redoes those words in order). Integer
    // arithmetic: the same indices on every instruction set.
    bool (*draw_indices)(const uint64_t* z, int64_t m, uint32_t n, uint32_t* idx);
    // First pass over one row: max, validity, target rank count (skipped when
    // target_value is NaN), top-k (topk must not be null; k >= 1).
    ScanResult (*scan)(const void* row, DType dtype, int64_t n, float target_value, TopK* topk);
    // The normaliser pass, shift = the row max; when `store` is not null the
    // terms e^y are also written there (it needs n + 16 floats). `weighted`:
    // also sum e^y * y (the entropy's part; SumExp::weighted is NaN without it).
    SumExp (*sum_exp)(const void* row, DType dtype, int64_t n, float shift, float* store, bool weighted);
    JointSums (*joint)(const JointArgs& args);
    // e^x of the passes (x <= 0, -inf and NaN included), element by element:
    // for the accuracy tests.
    void (*exp_f32)(const float* x, float* out, int64_t n);
    void (*spearman_sums)(const SpearmanBlock& block);
    // The sign-flip test's sums of kResampleLanes resamples at once: lane l's
    // sum of +-d[j], the sign of term j flipped where bit (j mod 64) of
    // words[(j / 64) * kResampleLanes + l] is set; four chains (j mod 4), each
    // in order, combined as (s0 + s1) + (s2 + s3): the scalar loop's order.
    void (*sign_flip_sums)(const double* d, int64_t n, const uint64_t* words, double* out);
    // The bootstrap's means from drawn indices, `width` (4, 8 or 16) of them at
    // once: rows is [items][width], and out[l] = s0 + s1 where s0 sums
    // rows[idx[k]][l] over the even k and the last k of an odd n, s1 over the
    // other odd k, each in draw order -- a mean's scalar two-chain loop
    // (MeanDiff::eval_draws) with one statistic per lane, hence its bits.
    void (*draw_sums)(const double* rows, int width, const uint32_t* idx, int64_t n, double* out);
};

const Kernels* kernels_avx512();  // null when not compiled in
const Kernels* kernels_avx2();    // null when not compiled in
const Kernels& kernels_baseline();
const Kernels& active_kernels();

}  // namespace qfair::detail
