// llama.cpp-compatible per-token statistics of `llama-perplexity --kl-divergence`.
//
// The arithmetic follows llama.cpp's tools/perplexity/perplexity.cpp operation
// for operation (float32 where it uses float, double accumulators where it uses
// double, glibc expf / log), so that the summary qfair prints from these values
// agrees with llama.cpp's to every printed digit. The file holding this code is
// compiled without FMA contraction for the same reason.
//
// Per row r (one scored token):
//   q     = row r of the model under test, used as logits (normalised here by
//           its own log-sum-exp over the whole vocabulary),
//   base  = row r of the reference, used as log-probabilities as they are
//           (llama.cpp's decoded .kld row; no re-normalisation),
//   t     = the scored token.
// Outputs (caller-owned arrays of `rows` entries):
//   nll       float   -log q[t] after normalisation   ((max + lse) - q[t], in float)
//   nll_base  float   -base[t]
//   kld       double  sum over v with base[v] > -16 of expf(base[v]) * (base[v] - q[v] + max + lse)
//   p_diff    float   expf(-nll) - expf(-nll_base)
//   argmax_q, argmax_base   int64  first index of the maximum
#pragma once

#include <cstdint>

#include "qfair/divergence.hpp"

namespace qfair {

struct LlamaTokenOutputs {
    float* nll = nullptr;
    float* nll_base = nullptr;
    double* kld = nullptr;
    float* p_diff = nullptr;
    int64_t* argmax_q = nullptr;
    int64_t* argmax_base = nullptr;
};

// q and base: same shape; any of F32 / F16 / BF16 (converted to float exactly).
// Throws std::invalid_argument for a shape mismatch or a target outside the vocabulary.
void llamacpp_token_stats(const Matrix& q, const Matrix& base, const int64_t* targets, int threads,
                          LlamaTokenOutputs& out);

}  // namespace qfair
