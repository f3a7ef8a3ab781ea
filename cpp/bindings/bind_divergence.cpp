// numpy <-> qfair/divergence.hpp. Zero-copy: arrays are read in place, and an
// array of the wrong dtype or layout is refused with a ValueError that says
// what to do, never copied behind the user's back.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "qfair/divergence.hpp"
#include "qfair/llamacpp.hpp"

namespace py = pybind11;

namespace qfair::py {
namespace {

DType parse_dtype(const ::py::array& a, const std::string& name, const std::string& hint) {
    const ::py::dtype dt = a.dtype();
    const char kind = dt.kind();
    const auto size = dt.itemsize();
    if (hint == "bf16" || hint == "bfloat16") {
        if (size == 2 && (kind == 'u' || kind == 'i' || kind == 'V'))
            return DType::BF16;
        throw ::py::value_error(name + ": dtype='bf16' expects bfloat16 bits in a 2-byte integer array "
                                "(uint16), got " + std::string(::py::str(dt)));
    }
    if (!hint.empty() && hint != "auto")
        throw ::py::value_error("dtype must be None or 'bf16', got '" + hint + "'");
    if (kind == 'f' && size == 4) return DType::F32;
    if (kind == 'f' && size == 2) return DType::F16;
    if (kind == 'u' && size == 2)
        throw ::py::value_error(name + " is uint16: pass dtype='bf16' if it holds bfloat16 bits");
    throw ::py::value_error(name + " has dtype " + std::string(::py::str(dt)) +
                            "; qfair reads float32, float16, or bfloat16 (as uint16 with dtype='bf16'). "
                            "Convert explicitly (e.g. x.astype(np.float32)); qfair never copies silently");
}

Matrix as_matrix(const ::py::array& a, const std::string& name, const std::string& hint) {
    if (a.ndim() != 2)
        throw ::py::value_error(name + " must be 2-D [rows, vocab], got " + std::to_string(a.ndim()) +
                                " dimension(s)");
    Matrix m;
    m.dtype = parse_dtype(a, name, hint);
    const auto item = static_cast<::py::ssize_t>(a.itemsize());
    m.rows = a.shape(0);
    m.cols = a.shape(1);
    if (m.cols < 1) throw ::py::value_error(name + " has an empty vocabulary axis");
    if (m.cols > 1 && a.strides(1) != item)
        throw ::py::value_error(name + " rows are not contiguous (element stride " + std::to_string(a.strides(1)) +
                                " bytes, expected " + std::to_string(item) +
                                "); pass np.ascontiguousarray(x) if you accept a copy");
    const auto rs = m.rows > 1 ? a.strides(0) : static_cast<::py::ssize_t>(m.cols * item);
    if (rs < 0 || rs % item != 0 || rs / item < m.cols)
        throw ::py::value_error(name + " has an unsupported row stride of " + std::to_string(rs) +
                                " bytes; rows must be laid out one after another (C order)");
    m.row_stride = rs / item;
    m.data = a.data();
    return m;
}

std::vector<int64_t> as_targets(const ::py::object& t, int64_t rows) {
    std::vector<int64_t> out;
    if (t.is_none()) return out;
    ::py::array a = ::py::array::ensure(t);
    if (!a) throw ::py::value_error("targets must be an integer array");
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u') throw ::py::value_error("targets must be an integer array (int32 or int64)");
    if (a.ndim() != 1 || a.shape(0) != rows)
        throw ::py::value_error("targets must be 1-D with one token id per row (" + std::to_string(rows) +
                                "), got shape of " + std::to_string(a.ndim()) + " dimension(s)");
    // c_style: a strided view (a column of a 2-D array) is copied, never read as if it were contiguous
    auto converted = ::py::array_t<int64_t, ::py::array::c_style | ::py::array::forcecast>::ensure(a);
    out.assign(converted.data(), converted.data() + rows);
    return out;
}

// Output columns: one freshly allocated numpy array per metric, registered in
// a dict under its name; the core writes into them in place.
class Columns {
   public:
    explicit Columns(int64_t rows) : rows_(rows) {}
    double* f64(const std::string& key) { return add<double>(key); }
    float* f32(const std::string& key) { return add<float>(key); }
    int64_t* i64(const std::string& key) { return add<int64_t>(key); }
    ::py::dict dict() const { return dict_; }

   private:
    template <class T>
    T* add(const std::string& key) {
        ::py::array_t<T> a(static_cast<::py::ssize_t>(rows_));
        dict_[key.c_str()] = a;
        return a.mutable_data();
    }
    int64_t rows_;
    ::py::dict dict_;
};

// The metrics a caller may leave out (the core then skips their work); the
// overlap and target columns follow topk and targets instead.
const std::vector<std::string>& selectable_metrics() {
    static const std::vector<std::string> names{"kl_pq",     "kl_qp",     "js",       "tv",       "entropy_p",
                                                "entropy_q", "maxprob_p", "maxprob_q", "margin_p", "margin_q",
                                                "argmax_p",  "argmax_q",  "top1_agree"};
    return names;
}

// Wires one output column per wanted metric (all when `metrics` is None; plus
// overlap_at_K per K, and the target columns when there are targets) into the
// core's output struct.
DivergenceOutputs divergence_outputs(Columns& c, const std::vector<int>& topk, bool with_targets,
                                     const ::py::object& metrics) {
    std::vector<std::string> wanted;
    if (!metrics.is_none()) {
        wanted = metrics.cast<std::vector<std::string>>();
        for (const std::string& name : wanted)
            if (std::find(selectable_metrics().begin(), selectable_metrics().end(), name) ==
                selectable_metrics().end())
                throw ::py::value_error("metrics: unknown metric '" + name +
                                        "' (the selectable ones: kl_pq, kl_qp, js, tv, entropy_p, entropy_q, "
                                        "maxprob_p, maxprob_q, margin_p, margin_q, argmax_p, argmax_q, top1_agree)");
    }
    auto want = [&](const char* name) {
        return metrics.is_none() || std::find(wanted.begin(), wanted.end(), name) != wanted.end();
    };
    DivergenceOutputs out;
    if (want("kl_pq")) out.kl_pq = c.f64("kl_pq");
    if (want("kl_qp")) out.kl_qp = c.f64("kl_qp");
    if (want("js")) out.js = c.f64("js");
    if (want("tv")) out.tv = c.f64("tv");
    if (want("entropy_p")) out.p.entropy = c.f64("entropy_p");
    if (want("entropy_q")) out.q.entropy = c.f64("entropy_q");
    if (want("maxprob_p")) out.p.maxprob = c.f64("maxprob_p");
    if (want("maxprob_q")) out.q.maxprob = c.f64("maxprob_q");
    if (want("margin_p")) out.p.margin = c.f64("margin_p");
    if (want("margin_q")) out.q.margin = c.f64("margin_q");
    if (want("argmax_p")) out.p.argmax = c.i64("argmax_p");
    if (want("argmax_q")) out.q.argmax = c.i64("argmax_q");
    if (want("top1_agree")) out.top1_agree = c.f32("top1_agree");
    for (int k : topk) out.overlap.push_back(c.f32("overlap_at_" + std::to_string(k)));
    if (with_targets) {
        out.p.logprob = c.f64("logprob_p");
        out.q.logprob = c.f64("logprob_q");
        out.delta_p = c.f64("delta_p");
        out.p.rank = c.i64("rank_p");
        out.q.rank = c.i64("rank_q");
    }
    return out;
}

SideOutputs side_outputs(Columns& c, bool with_targets) {
    SideOutputs out;
    out.entropy = c.f64("entropy");
    out.maxprob = c.f64("maxprob");
    out.margin = c.f64("margin");
    out.argmax = c.i64("argmax");
    if (with_targets) {
        out.logprob = c.f64("logprob");
        out.rank = c.i64("rank");
    }
    return out;
}

// ValueError unless a and b (named `names`, e.g. "p and q") have the same shape.
void same_shape(const Matrix& a, const Matrix& b, const char* names) {
    if (a.rows != b.rows || a.cols != b.cols)
        throw ::py::value_error(std::string(names) + " must have the same shape, got [" + std::to_string(a.rows) +
                                ", " + std::to_string(a.cols) + "] and [" + std::to_string(b.rows) + ", " +
                                std::to_string(b.cols) + "]");
}

::py::dict divergence_py(const ::py::array& p, const ::py::array& q, const ::py::object& targets,
                         std::vector<int> topk, int threads, const std::string& dtype,
                         const ::py::object& metrics) {
    Matrix mp = as_matrix(p, "p", dtype);
    Matrix mq = as_matrix(q, "q", dtype);
    same_shape(mp, mq, "p and q");
    std::vector<int64_t> t = as_targets(targets, mp.rows);
    Columns c(mp.rows);
    DivergenceOutputs out = divergence_outputs(c, topk, !targets.is_none(), metrics);
    DivergenceOptions opt;
    opt.topk = std::move(topk);
    opt.threads = threads;
    InvalidCounts counts;
    {
        ::py::gil_scoped_release release;
        counts = divergence(mp, mq, t.empty() ? nullptr : t.data(), opt, out);
    }
    ::py::dict result;
    result["metrics"] = c.dict();
    result["invalid_p"] = counts.p;
    result["invalid_q"] = counts.q;
    result["invalid_rows"] = counts.rows;
    return result;
}

::py::dict distribution_stats_py(const ::py::array& p, const ::py::object& targets, int threads,
                                 const std::string& dtype) {
    Matrix mp = as_matrix(p, "p", dtype);
    std::vector<int64_t> t = as_targets(targets, mp.rows);
    Columns c(mp.rows);
    SideOutputs out = side_outputs(c, !targets.is_none());
    int64_t invalid;
    {
        ::py::gil_scoped_release release;
        invalid = distribution_stats(mp, t.empty() ? nullptr : t.data(), threads, out);
    }
    ::py::dict result;
    result["metrics"] = c.dict();
    result["invalid_rows"] = invalid;
    return result;
}

::py::dict llamacpp_token_stats_py(const ::py::array& q, const ::py::array& base, const ::py::object& targets,
                                   int threads, const std::string& dtype) {
    Matrix mq = as_matrix(q, "q", dtype);
    Matrix mb = as_matrix(base, "base", dtype);
    same_shape(mq, mb, "q and base");
    if (targets.is_none()) throw ::py::value_error("targets are required (one scored token id per row)");
    std::vector<int64_t> t = as_targets(targets, mq.rows);
    Columns c(mq.rows);
    LlamaTokenOutputs out;
    out.nll = c.f32("nll");
    out.nll_base = c.f32("nll_base");
    out.kld = c.f64("kld");
    out.p_diff = c.f32("p_diff");
    out.argmax_q = c.i64("argmax_q");
    out.argmax_base = c.i64("argmax_base");
    {
        ::py::gil_scoped_release release;
        llamacpp_token_stats(mq, mb, t.data(), threads, out);
    }
    return c.dict();
}

uint64_t read_rows_py(const ::py::array& p, int threads, const std::string& dtype) {
    Matrix mp = as_matrix(p, "p", dtype);
    ::py::gil_scoped_release release;
    return read_rows(mp, threads);
}

}  // namespace

void bind_divergence(::py::module_& m) {
    m.def("read_rows", &read_rows_py, ::py::arg("p"), ::py::arg("threads") = 0, ::py::arg("dtype") = "",
          "Reads every byte of the [rows, vocab] array once (XOR of its 64-bit words): the memory-bound "
          "ceiling of a one-pass row kernel on the same rows, for benchmarks.");
    m.def("divergence", &divergence_py, ::py::arg("p"), ::py::arg("q"), ::py::arg("targets") = ::py::none(),
          ::py::arg("topk") = std::vector<int>{1, 5, 10}, ::py::arg("threads") = 0, ::py::arg("dtype") = "",
          ::py::arg("metrics") = ::py::none(),
          "Row-wise divergences between two [rows, vocab] arrays of logits or log-probs. "
          "metrics: the names wanted (None: all); the work of the others is skipped. "
          "Returns {'metrics': {name: array}, 'invalid_p', 'invalid_q', 'invalid_rows'}.");
    m.def("distribution_stats", &distribution_stats_py, ::py::arg("p"), ::py::arg("targets") = ::py::none(),
          ::py::arg("threads") = 0, ::py::arg("dtype") = "",
          "Row-wise entropy, max prob, margin, argmax and target stats of one [rows, vocab] array.");
    m.def("llamacpp_token_stats", &llamacpp_token_stats_py, ::py::arg("q"), ::py::arg("base"),
          ::py::arg("targets"), ::py::arg("threads") = 0, ::py::arg("dtype") = "",
          "Per-token statistics of llama-perplexity --kl-divergence (q used as logits, base as "
          "log-probs as they are). Returns {nll, nll_base, kld, p_diff, argmax_q, argmax_base}.");
}

}  // namespace qfair::py
