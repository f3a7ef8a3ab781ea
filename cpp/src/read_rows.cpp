// The memory-bound ceiling of a one-pass row kernel: every byte of the rows
// read once, as plainly as possible, on the same threads the kernels use.
#include <cstring>
#include <vector>

#include "qfair/divergence.hpp"
#include "qfair/parallel.hpp"

namespace qfair {

uint64_t read_rows(const Matrix& m, int threads_requested) {
    const size_t elem = m.dtype == DType::F32 ? 4 : 2;
    const size_t row_bytes = static_cast<size_t>(m.cols) * elem;
    const size_t stride = static_cast<size_t>(m.row_stride) * elem;
    const int threads = resolve_threads(threads_requested, m.rows, 4);
    std::vector<uint64_t> acc(static_cast<size_t>(threads > 0 ? threads : 1), 0);
    parallel_for(m.rows, threads, [&](int64_t begin, int64_t end, int worker) {
        // Four independent chains of 64-bit words (the compiler vectorises the
        // loop): the loads, not the arithmetic, set the pace.
        uint64_t a[4] = {0, 0, 0, 0};
        for (int64_t r = begin; r < end; ++r) {
            const char* row = static_cast<const char*>(m.data) + static_cast<size_t>(r) * stride;
            size_t i = 0;
            for (; i + 32 <= row_bytes; i += 32) {
                uint64_t w[4];
                std::memcpy(w, row + i, 32);
                a[0] ^= w[0];
                a[1] ^= w[1];
                a[2] ^= w[2];
                a[3] ^= w[3];
            }
            for (; i < row_bytes; ++i) a[0] ^= static_cast<unsigned char>(row[i]);
        }
        acc[static_cast<size_t>(worker)] = a[0] ^ a[1] ^ a[2] ^ a[3];
    });
    uint64_t x = 0;
    for (uint64_t v : acc) x ^= v;
    return x;
}

}  // namespace qfair
