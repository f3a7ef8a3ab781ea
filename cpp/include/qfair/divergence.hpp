// Vocabulary-wide distribution comparison: one streaming pass per row pair.
//
// Inputs are rows of logits or log-probabilities (any additive shift per row is
// fine: every row is re-normalised with a stable log-softmax). Outputs are one
// value per row, written into caller-owned arrays. Definitions follow
// docs/metrics.md; natural logarithms throughout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qfair {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// A read-only [rows, cols] matrix whose rows are contiguous; consecutive rows
// start row_stride elements apart (row_stride >= cols).
struct Matrix {
    const void* data = nullptr;
    DType dtype = DType::F32;
    int64_t rows = 0;
    int64_t cols = 0;
    int64_t row_stride = 0;
};

// Per-distribution outputs. Any pointer may be null (not wanted; work that
// only a null output needs is skipped, e.g. the entropy's sums). A row whose
// distribution is invalid (NaN, +inf, or no finite entry) gets NaN in the
// floating outputs and -1 in argmax / rank.
struct SideOutputs {
    double* entropy = nullptr;   // -sum p log p
    double* maxprob = nullptr;   // p(top-1)
    double* margin = nullptr;    // p(top-1) - p(top-2); p(top-2) = 0 when vocab = 1
    int64_t* argmax = nullptr;   // lowest token id among the maxima
    double* logprob = nullptr;   // log p[target]            (needs targets)
    int64_t* rank = nullptr;     // 1 + #{v : x[v] > x[target]} (needs targets)
};

// Null outputs are skipped: without KL, JS and TV the joint pass over the row
// pair does not run at all, and JS alone costs about a third of that pass.
struct DivergenceOutputs {
    SideOutputs p, q;
    double* kl_pq = nullptr;     // KL(P || Q)
    double* kl_qp = nullptr;     // KL(Q || P)
    double* js = nullptr;        // Jensen-Shannon divergence (nats, <= ln 2)
    double* tv = nullptr;        // total variation, 1/2 sum |p - q|
    float* top1_agree = nullptr; // 1 when argmax P == argmax Q, else 0; NaN if invalid
    std::vector<float*> overlap; // one per options.topk entry: |top_k(P) & top_k(Q)| / min(k, vocab)
    double* delta_p = nullptr;   // q[target] - p[target]      (needs targets)
};

struct DivergenceOptions {
    std::vector<int> topk;       // k values for overlap; each in [1, 1000]
    int threads = 0;             // 0: one per available CPU; < 0 is an error (qfair/parallel.hpp)
};

// Counts of rows whose metrics are NaN because their input was not a valid
// distribution (NaN, +inf, or no finite entry). -inf entries are legitimate
// zero probabilities.
struct InvalidCounts {
    int64_t p = 0;     // rows invalid in P
    int64_t q = 0;     // rows invalid in Q
    int64_t rows = 0;  // rows invalid in P or Q (joint metrics are NaN)
};

// targets: one token id per row, or null. A negative target means "no target"
// for that row (its target outputs are NaN / -1); a target >= cols is an error.
// Throws std::invalid_argument on inconsistent shapes or options. Results are
// identical for any thread count.
InvalidCounts divergence(const Matrix& p, const Matrix& q, const int64_t* targets,
                         const DivergenceOptions& options, DivergenceOutputs& out);

// The single-matrix subset: entropy, maxprob, margin, argmax, target stats.
int64_t distribution_stats(const Matrix& p, const int64_t* targets, int threads,
                           SideOutputs& out);

// Reads every byte of the rows once (returns the XOR of their 64-bit words, so
// that nothing is optimised away), on `threads` threads (0: one per CPU): the
// rate no one-pass row kernel can beat on the same rows, to measure against.
uint64_t read_rows(const Matrix& m, int threads);

// e^x for x <= 0 (-inf: 0; NaN stays NaN) exactly as the active vector
// kernel computes it inside the passes: for the accuracy tests.
void kernel_exp(const float* x, float* out, int64_t n);

// Which vector kernel the dispatcher picked ("avx512", "avx2", "baseline").
// QFAIR_ISA=avx512|avx2|baseline in the environment caps the choice (for tests
// and benchmarks); a level the CPU lacks is never chosen.
const char* active_isa();

// The kernels this build has and this CPU runs, widest first (always ends
// with "baseline").
std::vector<std::string> available_isas();

// Re-chooses the kernel with the given cap ("avx512", "avx2", "baseline");
// returns the name of the one now active. Not for use while a call is running.
const char* select_isa(const char* cap);

}  // namespace qfair
