// Bindings for the resampling statistics (qfair/stats.hpp). Owned by the analyze work.
// Thin: check dtype / layout (ValueError, never a silent copy), release the GIL
// around the work, hand back numpy arrays and plain dicts.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>

#include "qfair/stats.hpp"

namespace py = pybind11;
namespace st = qfair::stats;

namespace qfair::py {
namespace {

using F64 = ::py::array_t<double, ::py::array::c_style>;
using I64 = ::py::array_t<int64_t, ::py::array::c_style>;

// A 1-D C-contiguous float64 array of length n (n < 0: any length, set here).
const double* f64(const ::py::handle& h, const char* name, int64_t* n) {
    if (!::py::isinstance<F64>(h))
        throw ::py::value_error(std::string(name) +
                                ": expected a C-contiguous float64 numpy array");
    auto a = ::py::reinterpret_borrow<F64>(h);
    if (a.ndim() != 1) throw ::py::value_error(std::string(name) + ": expected a 1-D array");
    if (*n < 0) *n = a.shape(0);
    if (a.shape(0) != *n)
        throw ::py::value_error(std::string(name) + ": length " + std::to_string(a.shape(0)) +
                                ", expected " + std::to_string(*n));
    return a.data();
}

const double* f64_opt(const ::py::handle& h, const char* name, int64_t* n) {
    if (h.is_none()) return nullptr;
    return f64(h, name, n);
}

st::Binning parse_binning(const std::string& s) {
    if (s == "width") return st::Binning::Width;
    if (s == "mass") return st::Binning::Mass;
    throw ::py::value_error("binning: expected 'width' or 'mass', got '" + s + "'");
}

st::CalMeasure parse_measure(const std::string& s) {
    if (s == "ece") return st::CalMeasure::ECE;
    if (s == "mce") return st::CalMeasure::MCE;
    if (s == "rms") return st::CalMeasure::RMS;
    if (s == "l2_debiased") return st::CalMeasure::L2Debiased;
    throw ::py::value_error("measure: expected ece, mce, rms or l2_debiased, got '" + s + "'");
}

::py::array_t<double> to_array(const std::vector<double>& v) {
    ::py::array_t<double> a(static_cast<::py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

// ---- wilson ------------------------------------------------------------------

::py::tuple wilson_py(const ::py::handle& k, const ::py::handle& n, double confidence) {
    if (!::py::isinstance<I64>(k) || !::py::isinstance<I64>(n))
        throw ::py::value_error("wilson: k and n must be C-contiguous int64 arrays");
    auto ka = ::py::reinterpret_borrow<I64>(k);
    auto na = ::py::reinterpret_borrow<I64>(n);
    if (ka.ndim() != 1 || na.ndim() != 1 || ka.shape(0) != na.shape(0))
        throw ::py::value_error("wilson: k and n must be 1-D arrays of equal length");
    const auto len = ka.shape(0);
    ::py::array_t<double> lo(len), hi(len);
    const int64_t* kp = ka.data();
    const int64_t* np_ = na.data();
    double* lp = lo.mutable_data();
    double* hp = hi.mutable_data();
    {
        ::py::gil_scoped_release nogil;
        for (::py::ssize_t i = 0; i < len; ++i) {
            const auto iv = st::wilson(kp[i], np_[i], confidence);
            lp[i] = iv.lo;
            hp[i] = iv.hi;
        }
    }
    return ::py::make_tuple(lo, hi);
}

// ---- calibration -------------------------------------------------------------

::py::tuple bin_assign_py(const ::py::handle& conf, int bins, const std::string& binning) {
    int64_t n = -1;
    const double* c = f64(conf, "conf", &n);
    const auto bn = parse_binning(binning);
    ::py::array_t<int32_t> out(n);
    int32_t* o = out.mutable_data();
    std::vector<double> upper;
    {
        ::py::gil_scoped_release nogil;
        st::bin_assign(c, n, bins, bn, o, &upper);
    }
    return ::py::make_tuple(out, to_array(upper));
}

::py::dict calibration_dict(const st::CalibrationResult& r) {
    ::py::dict d;
    d["ece"] = r.ece;
    d["mce"] = r.mce;
    d["rms"] = r.rms;
    d["ce2_debiased"] = r.ce2_debiased;
    d["l2_debiased"] = r.l2_debiased;
    d["lo"] = to_array(r.lo);
    d["hi"] = to_array(r.hi);
    d["conf_mean"] = to_array(r.conf_mean);
    d["acc_mean"] = to_array(r.acc_mean);
    ::py::array_t<int64_t> cnt(static_cast<::py::ssize_t>(r.count.size()));
    std::copy(r.count.begin(), r.count.end(), cnt.mutable_data());
    d["count"] = cnt;
    return d;
}

::py::dict calibration_py(const ::py::handle& conf, const ::py::handle& correct, int bins,
                          const std::string& binning) {
    int64_t n = -1;
    const double* c = f64(conf, "conf", &n);
    const double* a = f64(correct, "correct", &n);
    const auto bn = parse_binning(binning);
    st::CalibrationResult r;
    {
        ::py::gil_scoped_release nogil;
        r = st::calibration(c, a, n, bins, bn);
    }
    return calibration_dict(r);
}

// ---- bootstrap ---------------------------------------------------------------

// The statistics described by the Python specs (dicts; see qfair/stats.py),
// reading the caller's arrays in place: the specs must outlive them. All
// arrays must have one length, returned in *n.
std::vector<std::unique_ptr<st::Statistic>> parse_statistics(const ::py::list& specs, int64_t* n) {
    std::vector<std::unique_ptr<st::Statistic>> owned;
    for (auto item : specs) {
        if (!::py::isinstance<::py::dict>(item))
            throw ::py::value_error("bootstrap spec: expected a dict");
        auto d = ::py::reinterpret_borrow<::py::dict>(item);
        auto get = [&](const char* key) -> ::py::object {
            return d.contains(key) ? ::py::object(d[key]) : ::py::none();
        };
        const auto kind = get("kind").is_none() ? std::string() : get("kind").cast<std::string>();
        if (kind == "mean") {
            const double* x = f64_opt(get("x"), "x", n);
            const double* y = f64(get("y"), "y", n);
            owned.push_back(st::make_mean_diff(x, y, *n));
        } else if (kind == "calibration") {
            const double* cx = f64_opt(get("conf_x"), "conf_x", n);
            const double* ax = f64_opt(get("correct_x"), "correct_x", n);
            const double* cy = f64(get("conf_y"), "conf_y", n);
            const double* ay = f64(get("correct_y"), "correct_y", n);
            const int bins = get("bins").is_none() ? 15 : get("bins").cast<int>();
            const auto bn = parse_binning(get("binning").is_none() ? "width" : get("binning").cast<std::string>());
            const auto ms = parse_measure(get("measure").is_none() ? "ece" : get("measure").cast<std::string>());
            owned.push_back(st::make_calibration_diff(cx, ax, cy, ay, *n, bins, bn, ms));
        } else {
            throw ::py::value_error("bootstrap spec kind: expected 'mean' or 'calibration', got '" + kind + "'");
        }
    }
    return owned;
}

::py::dict bootstrap_dict(const st::BootstrapResult& r, bool keep_distribution) {
    ::py::dict d;
    d["estimate"] = r.estimate;
    d["se"] = r.se;
    d["bias"] = r.bias;
    d["pct_lo"] = r.pct_lo;
    d["pct_hi"] = r.pct_hi;
    d["bca_lo"] = r.bca_lo;
    d["bca_hi"] = r.bca_hi;
    d["z0"] = r.z0;
    d["accel"] = r.accel;
    d["p"] = r.p;
    d["distribution"] = keep_distribution ? ::py::object(to_array(r.distribution)) : ::py::none();
    return d;
}

::py::list paired_bootstrap_py(const ::py::list& specs, int64_t resamples, uint64_t seed, double confidence,
                               int threads, bool keep_distribution) {
    int64_t n = -1;
    const auto owned = parse_statistics(specs, &n);
    std::vector<const st::Statistic*> stats;
    for (const auto& s : owned) stats.push_back(s.get());
    st::BootstrapOptions opt;
    opt.resamples = resamples;
    opt.seed = seed;
    opt.confidence = confidence;
    opt.threads = threads;
    opt.keep_distribution = keep_distribution;
    std::vector<st::BootstrapResult> results;
    {
        ::py::gil_scoped_release nogil;
        results = st::paired_bootstrap(stats, opt);
    }
    ::py::list out;
    for (const auto& r : results) out.append(bootstrap_dict(r, keep_distribution));
    return out;
}

::py::array_t<uint32_t> bootstrap_counts_py(int64_t n, uint64_t seed, int64_t b) {
    if (n < 1) throw ::py::value_error("bootstrap_counts: n must be >= 1");
    ::py::array_t<uint32_t> out(n);
    uint32_t* o = out.mutable_data();
    {
        ::py::gil_scoped_release nogil;
        st::bootstrap_counts(n, seed, b, o);
    }
    return out;
}

::py::array bootstrap_count_rows_py(int64_t n, uint64_t seed, int64_t b0, int64_t rows, const std::string& dtype,
                                    int threads) {
    if (n < 1) throw ::py::value_error("bootstrap_count_rows: n must be >= 1");
    if (rows < 0) throw ::py::value_error("bootstrap_count_rows: rows must be >= 0");
    if (dtype == "uint32") {
        ::py::array_t<uint32_t> out({rows, n});
        uint32_t* o = out.mutable_data();
        ::py::gil_scoped_release nogil;
        st::bootstrap_count_rows(n, seed, b0, rows, threads, o);
        return std::move(out);
    }
    if (dtype != "uint16") throw ::py::value_error("dtype: expected 'uint16' or 'uint32', got '" + dtype + "'");
    ::py::array_t<uint16_t> out({rows, n});
    uint16_t* o = out.mutable_data();
    bool fits;
    {
        ::py::gil_scoped_release nogil;
        fits = st::bootstrap_count_rows(n, seed, b0, rows, threads, o);
    }
    if (!fits) throw std::overflow_error("bootstrap_count_rows: a multiplicity exceeds 65535 (use uint32)");
    return std::move(out);
}

// ---- per-cell sums under multiplicities ---------------------------------------------

template <class C>
bool cell_sums_typed(const ::py::handle& counts, const int64_t* cells, bool per_row, int64_t n_cells,
                     const double* v, int64_t k, int threads, double* o) {
    using A = ::py::array_t<C, ::py::array::c_style>;
    if (!::py::isinstance<A>(counts)) return false;
    auto a = ::py::reinterpret_borrow<A>(counts);
    const C* c = a.data();
    const int64_t m = a.shape(0), n = a.shape(1);
    ::py::gil_scoped_release nogil;
    st::cell_sums(c, m, n, cells, per_row, n_cells, v, k, threads, o);
    return true;
}

::py::array_t<double> cell_sums_py(const ::py::handle& counts, const ::py::handle& cells, int64_t n_cells,
                                   const ::py::handle& values, int threads) {
    if (!::py::isinstance<::py::array>(counts)) throw ::py::value_error("counts: expected a numpy array");
    auto ca = ::py::reinterpret_borrow<::py::array>(counts);
    if (ca.ndim() != 2) throw ::py::value_error("counts: expected a 2-D array [resamples, items]");
    const int64_t m = ca.shape(0), n = ca.shape(1);
    if (!::py::isinstance<I64>(cells)) throw ::py::value_error("cells: expected a C-contiguous int64 numpy array");
    auto cl = ::py::reinterpret_borrow<I64>(cells);
    const bool per_row = cl.ndim() == 2;
    if (!(cl.ndim() == 1 && cl.shape(0) == n) && !(per_row && cl.shape(0) == m && cl.shape(1) == n))
        throw ::py::value_error("cells: expected shape [items] or [resamples, items] matching counts");
    if (!::py::isinstance<F64>(values)) throw ::py::value_error("values: expected a C-contiguous float64 numpy array");
    auto va = ::py::reinterpret_borrow<F64>(values);
    if (va.ndim() != 2 || va.shape(0) != n) throw ::py::value_error("values: expected shape [items, k]");
    const int64_t k = va.shape(1);
    if (n_cells < 1) throw ::py::value_error("n_cells: must be >= 1");
    ::py::array_t<double> out({k + 1, m, n_cells});
    double* o = out.mutable_data();
    if (!cell_sums_typed<uint16_t>(counts, cl.data(), per_row, n_cells, va.data(), k, threads, o) &&
        !cell_sums_typed<uint32_t>(counts, cl.data(), per_row, n_cells, va.data(), k, threads, o) &&
        !cell_sums_typed<double>(counts, cl.data(), per_row, n_cells, va.data(), k, threads, o))
        throw ::py::value_error("counts: expected a C-contiguous uint16, uint32 or float64 array");
    return out;
}

// counts @ v.T when counts is a C-contiguous [m, n] array of C (else false, nothing done).
template <class C>
bool weighted_dots_typed(const ::py::handle& counts, const F64& v, int threads, ::py::array_t<double>* out) {
    using A = ::py::array_t<C, ::py::array::c_style>;
    if (!::py::isinstance<A>(counts)) return false;
    auto a = ::py::reinterpret_borrow<A>(counts);
    if (a.ndim() != 2) throw ::py::value_error("counts: expected a 2-D array [resamples, items]");
    const int64_t m = a.shape(0), n = a.shape(1), k = v.shape(0);
    if (v.shape(1) != n) throw ::py::value_error("values: expected shape [k, items] matching counts");
    *out = ::py::array_t<double>({m, k});
    const C* c = a.data();
    const double* vp = v.data();
    double* o = out->mutable_data();
    ::py::gil_scoped_release nogil;
    st::weighted_dots(c, m, n, vp, k, threads, o);
    return true;
}

::py::array_t<double> weighted_dots_py(const ::py::handle& counts, const ::py::handle& values, int threads) {
    if (!::py::isinstance<F64>(values)) throw ::py::value_error("values: expected a C-contiguous float64 numpy array");
    auto va = ::py::reinterpret_borrow<F64>(values);
    if (va.ndim() != 2) throw ::py::value_error("values: expected a 2-D array [k, items]");
    ::py::array_t<double> out;
    if (!weighted_dots_typed<uint16_t>(counts, va, threads, &out) &&
        !weighted_dots_typed<uint32_t>(counts, va, threads, &out))
        throw ::py::value_error("counts: expected a C-contiguous uint16 or uint32 array");
    return out;
}

// ---- Spearman under multiplicities ---------------------------------------------

// A C-contiguous int64 array of `ndim` dimensions.
I64 i64(const ::py::handle& h, const char* name, int ndim) {
    if (!::py::isinstance<I64>(h))
        throw ::py::value_error(std::string(name) + ": expected a C-contiguous int64 numpy array");
    auto a = ::py::reinterpret_borrow<I64>(h);
    if (a.ndim() != ndim)
        throw ::py::value_error(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array");
    return a;
}

::py::array_t<double> weighted_spearman_py(const ::py::handle& counts, const ::py::handle& clusters,
                                           const ::py::handle& x_order, const ::py::handle& x_end,
                                           const ::py::handle& y_order, const ::py::handle& y_end, int threads) {
    // the kept draw's uint16 counts, uint32 rows or float64 multiplicities, read in place
    const bool u16 = ::py::isinstance<::py::array_t<uint16_t, ::py::array::c_style>>(counts);
    const bool u32 = ::py::isinstance<::py::array_t<uint32_t, ::py::array::c_style>>(counts);
    if (!u16 && !u32 && !::py::isinstance<F64>(counts))
        throw ::py::value_error("counts: expected a C-contiguous float64, uint16 or uint32 numpy array");
    auto c = ::py::reinterpret_borrow<::py::array>(counts);
    if (c.ndim() != 2) throw ::py::value_error("counts: expected a 2-D array [resamples, drawn units]");
    auto xo = i64(x_order, "x_order", 1), xe = i64(x_end, "x_end", 1);
    auto yo = i64(y_order, "y_order", 2), ye = i64(y_end, "y_end", 2);
    const int64_t n = xo.shape(0), k = yo.shape(0), m = c.shape(0), n_draw = c.shape(1);
    if (xe.shape(0) != n || yo.shape(1) != n || ye.shape(0) != k || ye.shape(1) != n)
        throw ::py::value_error("weighted_spearman: x_order, x_end [n] and y_order, y_end [k, n] must agree");
    const int64_t* cl = nullptr;
    I64 cla;
    if (!clusters.is_none()) {
        cla = i64(clusters, "clusters", 1);
        if (cla.shape(0) != n) throw ::py::value_error("clusters: one entry per item expected");
        cl = cla.data();
    }
    ::py::array_t<double> out({k, m});
    double* o = out.mutable_data();
    {
        ::py::gil_scoped_release nogil;
        const void* cp = c.data();
        if (u16)
            st::weighted_spearman(static_cast<const uint16_t*>(cp), m, n_draw, cl, n, xo.data(), xe.data(),
                                  yo.data(), ye.data(), k, threads, o);
        else if (u32)
            st::weighted_spearman(static_cast<const uint32_t*>(cp), m, n_draw, cl, n, xo.data(), xe.data(),
                                  yo.data(), ye.data(), k, threads, o);
        else
            st::weighted_spearman(static_cast<const double*>(cp), m, n_draw, cl, n, xo.data(), xe.data(),
                                  yo.data(), ye.data(), k, threads, o);
    }
    return out;
}

// ---- permutation nulls ------------------------------------------------------------

// `resamples` doubles filled by `fill` without the GIL.
template <class Fill>
::py::array_t<double> null_distribution(int64_t resamples, const char* what, Fill&& fill) {
    if (resamples < 0) throw ::py::value_error(std::string(what) + ": resamples must be >= 0");
    ::py::array_t<double> out(resamples);
    double* o = out.mutable_data();
    {
        ::py::gil_scoped_release nogil;
        fill(o);
    }
    return out;
}

::py::array_t<double> pairings_dot_py(const ::py::handle& a, const ::py::handle& b, int64_t resamples,
                                      uint64_t seed, int threads) {
    int64_t n = -1;
    const double* ap = f64(a, "a", &n);
    if (!::py::isinstance<F64>(b)) throw ::py::value_error("b: expected a C-contiguous float64 numpy array");
    auto ba = ::py::reinterpret_borrow<F64>(b);
    if (ba.ndim() == 1) {
        const double* bp = f64(b, "b", &n);
        return null_distribution(resamples, "pairings_dot",
                                 [&](double* o) { st::pairings_dot(ap, bp, 1, n, resamples, seed, threads, o); });
    }
    if (ba.ndim() != 2 || ba.shape(1) != n || ba.shape(0) < 1)
        throw ::py::value_error("b: expected [n] or [k >= 1, n] with n = len(a)");
    if (resamples < 0) throw ::py::value_error("pairings_dot: resamples must be >= 0");
    const int64_t k = ba.shape(0);
    ::py::array_t<double> out({k, resamples});
    double* o = out.mutable_data();
    const double* bp = ba.data();
    {
        ::py::gil_scoped_release nogil;
        st::pairings_dot(ap, bp, k, n, resamples, seed, threads, o);
    }
    return out;
}

::py::array_t<double> subset_sums_py(const ::py::handle& z, int64_t k, int64_t resamples, uint64_t seed,
                                     int threads) {
    int64_t n = -1;
    const double* zp = f64(z, "z", &n);
    return null_distribution(resamples, "subset_sums",
                             [&](double* o) { st::subset_sums(zp, n, k, resamples, seed, threads, o); });
}

// ---- permutation test ----------------------------------------------------------

::py::dict permutation_dict(const st::PermutationResult& r) {
    ::py::dict o;
    o["statistic"] = r.statistic;
    o["p"] = r.p;
    o["resamples"] = r.resamples;
    o["exact"] = r.exact;
    return o;
}

::py::dict sign_flip_test_py(const ::py::handle& d, int64_t resamples, uint64_t seed, int threads) {
    int64_t n = -1;
    const double* p = f64(d, "d", &n);
    st::PermutationResult r;
    {
        ::py::gil_scoped_release nogil;
        r = st::sign_flip_test(p, n, resamples, seed, threads);
    }
    return permutation_dict(r);
}

// ---- multiple comparisons ------------------------------------------------------

template <void (*Fn)(const double*, int64_t, double*)>
::py::array_t<double> adjust_py(const ::py::handle& p) {
    int64_t n = -1;
    const double* ptr = f64(p, "p", &n);
    ::py::array_t<double> out(n);
    double* o = out.mutable_data();
    {
        ::py::gil_scoped_release nogil;
        Fn(ptr, n, o);
    }
    return out;
}

::py::tuple mcnemar_py(int64_t b, int64_t c) {
    const auto r = st::mcnemar(b, c);
    return ::py::make_tuple(r.p_exact, r.p_mid);
}

}  // namespace

void bind_stats(::py::module_& m) {
    m.def("norm_ppf", &st::norm_ppf, ::py::arg("p"), "Inverse of the standard normal CDF.");
    m.def("wilson", &wilson_py, ::py::arg("k"), ::py::arg("n"), ::py::arg("confidence") = 0.95,
          "Wilson score intervals (lo, hi) for k successes in n trials (elementwise).");
    m.def("mcnemar", &mcnemar_py, ::py::arg("b"), ::py::arg("c"),
          "McNemar test on discordant counts: (exact two-sided p, mid-p).");
    m.def("holm", &adjust_py<&st::holm>, ::py::arg("p"),
          "Holm step-down adjusted p-values (NaN entries excluded from the family).");
    m.def("benjamini_hochberg", &adjust_py<&st::benjamini_hochberg>, ::py::arg("p"),
          "Benjamini-Hochberg adjusted p-values (NaN entries excluded from the family).");
    m.def("bin_assign", &bin_assign_py, ::py::arg("conf"), ::py::arg("bins") = 15,
          ::py::arg("binning") = "width", "Calibration bin of each confidence and the bins' upper edges.");
    m.def("calibration", &calibration_py, ::py::arg("conf"), ::py::arg("correct"), ::py::arg("bins") = 15,
          ::py::arg("binning") = "width",
          "Top-label calibration: ECE, MCE, RMS-CE, debiased L2 and per-bin reliability data.");
    m.def("bootstrap_counts", &bootstrap_counts_py, ::py::arg("n"), ::py::arg("seed"), ::py::arg("b"),
          "Multiplicities of bootstrap resample b (the draw every statistic shares).");
    m.def("paired_bootstrap", &paired_bootstrap_py, ::py::arg("specs"), ::py::arg("resamples") = 10000,
          ::py::arg("seed") = 0, ::py::arg("confidence") = 0.95, ::py::arg("threads") = 0,
          ::py::arg("keep_distribution") = false,
          "Paired bootstrap of several statistics over one shared index draw per resample.");
    m.def("bootstrap_count_rows", &bootstrap_count_rows_py, ::py::arg("n"), ::py::arg("seed"), ::py::arg("b0"),
          ::py::arg("rows"), ::py::arg("dtype") = "uint16", ::py::arg("threads") = 0,
          "Multiplicities of resamples b0 .. b0 + rows - 1 as a [rows, n] array (OverflowError: a count "
          "does not fit uint16).");
    m.def("cell_sums", &cell_sums_py, ::py::arg("counts"), ::py::arg("cells"), ::py::arg("n_cells"),
          ::py::arg("values"), ::py::arg("threads") = 0,
          "Per row of multiplicities and cell: the sum of w and of w * v for each value column "
          "([k + 1, rows, n_cells], item order).");
    m.def("weighted_dots", &weighted_dots_py, ::py::arg("counts"), ::py::arg("values"), ::py::arg("threads") = 0,
          "counts @ values.T for [m, n] uint16/uint32 multiplicities and [k, n] float64 columns ([m, k]).");
    m.def("weighted_spearman", &weighted_spearman_py, ::py::arg("counts"), ::py::arg("clusters"),
          ::py::arg("x_order"), ::py::arg("x_end"), ::py::arg("y_order"), ::py::arg("y_end"),
          ::py::arg("threads") = 0,
          "Spearman's rho of x against each y under every row of bootstrap multiplicities ([k, m]).");
    m.def("pairings_dot", &pairings_dot_py, ::py::arg("a"), ::py::arg("b"), ::py::arg("resamples"),
          ::py::arg("seed") = 0, ::py::arg("threads") = 0,
          "sum_i a[i] * b[perm_r(i)] for `resamples` uniform random permutations; b [k, n]: one row of "
          "sums per row of b ([k, resamples]), the permutations shared, each row as b[t] alone.");
    m.def("subset_sums", &subset_sums_py, ::py::arg("z"), ::py::arg("k"), ::py::arg("resamples"),
          ::py::arg("seed") = 0, ::py::arg("threads") = 0,
          "Sums of z over `resamples` uniform random k-subsets.");
    m.def("sign_flip_test", &sign_flip_test_py, ::py::arg("d"), ::py::arg("resamples") = 10000,
          ::py::arg("seed") = 0, ::py::arg("threads") = 0,
          "Paired sign-flip permutation test of mean(d) = 0 (two-sided).");
}

}  // namespace qfair::py
