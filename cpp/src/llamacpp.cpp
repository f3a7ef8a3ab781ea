// llama.cpp-compatible per-token KL statistics (see qfair/llamacpp.hpp).
//
// Deliberately scalar: every float operation happens in the order llama.cpp's
// kl_divergence() kernel performs it, with float rounding after each step and
// glibc's expf. CMakeLists.txt compiles this file with -ffp-contract=off and
// without any vector-ISA flag, so the compiler can neither fuse a multiply-add
// nor swap expf for a vector approximation.
#include "qfair/llamacpp.hpp"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "qfair/parallel.hpp"

namespace qfair {
namespace {

float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            exp = 127 - 15 + 1;
            while ((mant & 0x400u) == 0) {
                mant <<= 1;
                --exp;
            }
            mant &= 0x3FFu;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// One row as float (a pointer into the input for F32, else converted into buf).
const float* row_as_float(const Matrix& m, int64_t r, std::vector<float>& buf) {
    if (m.dtype == DType::F32) return static_cast<const float*>(m.data) + r * m.row_stride;
    const uint16_t* src = static_cast<const uint16_t*>(m.data) + r * m.row_stride;
    if (m.dtype == DType::F16) {
        for (int64_t i = 0; i < m.cols; ++i) buf[static_cast<size_t>(i)] = half_to_float(src[i]);
    } else {
        for (int64_t i = 0; i < m.cols; ++i) {
            const uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
            std::memcpy(&buf[static_cast<size_t>(i)], &bits, sizeof(float));
        }
    }
    return buf.data();
}

void token_row(const float* logits, const float* base, int64_t n, int64_t tok, LlamaTokenOutputs& out,
               int64_t r) {
    float max_logit = logits[0];
    int64_t imax = 0;
    for (int64_t i = 1; i < n; ++i) {
        if (logits[i] > max_logit) {
            max_logit = logits[i];
            imax = i;
        }
    }
    double sum_exp = 0.0;
    for (int64_t i = 0; i < n; ++i) sum_exp += ::expf(logits[i] - max_logit);
    const float log_sum_exp = static_cast<float>(::log(sum_exp));
    const float nll = max_logit + log_sum_exp - logits[tok];
    const float nll_base = -base[tok];
    const float shift = max_logit + log_sum_exp;
    double sum = 0.0;
    int64_t imax_base = 0;
    float base_max = 0.f;
    for (int64_t i = 0; i < n; ++i) {
        const float b = base[i];
        if (i == 0 || b > base_max) {
            base_max = b;
            imax_base = i;
        }
        if (b > -16.f) {
            const float p_base = ::expf(b);
            const float term = p_base * (b - logits[i] + shift);
            sum += term;
        }
    }
    const float p_diff = ::expf(-nll) - ::expf(-nll_base);
    if (out.nll) out.nll[r] = nll;
    if (out.nll_base) out.nll_base[r] = nll_base;
    if (out.kld) out.kld[r] = sum;
    if (out.p_diff) out.p_diff[r] = p_diff;
    if (out.argmax_q) out.argmax_q[r] = imax;
    if (out.argmax_base) out.argmax_base[r] = imax_base;
}

}  // namespace

void llamacpp_token_stats(const Matrix& q, const Matrix& base, const int64_t* targets, int threads,
                          LlamaTokenOutputs& out) {
    if (q.rows != base.rows || q.cols != base.cols)
        throw std::invalid_argument("q and base must have the same shape, got [" + std::to_string(q.rows) + ", " +
                                    std::to_string(q.cols) + "] and [" + std::to_string(base.rows) + ", " +
                                    std::to_string(base.cols) + "]");
    const int64_t rows = q.rows, cols = q.cols;
    for (int64_t r = 0; r < rows; ++r)
        if (targets[r] < 0 || targets[r] >= cols)
            throw std::invalid_argument("targets: row " + std::to_string(r) + " has token id " +
                                        std::to_string(targets[r]) + ", outside the vocabulary of size " +
                                        std::to_string(cols));
    auto work = [&](int64_t begin, int64_t end, int /*worker*/) {
        std::vector<float> qb(static_cast<size_t>(cols)), bb(static_cast<size_t>(cols));
        for (int64_t r = begin; r < end; ++r)
            token_row(row_as_float(q, r, qb), row_as_float(base, r, bb), cols, targets[r], out, r);
    };
    parallel_for(rows, resolve_threads(threads, rows), work);
}

}  // namespace qfair
