"""Generation end to end on the embedded SmolLM2-135M: base, bnb-int8 and
bnb-nf4 teacher-forced on the base texts, analyzed together. The figures are
printed (run with -s); no direction between int8 and nf4 is asserted — the
data decide. Marked slow (model load and quantized decoding on the CPU)."""
from __future__ import annotations

import polars as pl
import pytest
from conftest import requires_smollm2

pytestmark = [pytest.mark.slow, requires_smollm2, pytest.mark.usefixtures("one_torch_thread")]


def test_base_int8_nf4_generation(tmp_path):
    from qfair.analyze import compare
    from qfair.dump import open_dump
    from qfair.dump.run import dump

    opts = {"max_new_tokens": 16}
    base = dump(tmp_path / "base", tasks="gen_stories", limit=6, progress=False, generation=opts).path
    quants = [dump(tmp_path / q, quant=q, tasks="gen_stories", limit=6, progress=False,
                   generation={**opts, "reference": str(base)}).path for q in ("bnb-int8", "bnb-nf4")]
    b = open_dump(base)
    for q in quants:
        assert b.aligned_with(open_dump(q)) is True
    cmp = compare(base, quants, bootstrap=1000)
    gs, tx = cmp.extra["gen_summary"], cmp.extra["gen_texts"]
    for m in ("bnb-int8", "bnb-nf4"):
        kl = cmp.tokens.filter(pl.col("model") == m)["kl_pq"]
        t = tx.filter(pl.col("model") == m)
        ppl = gs.filter((pl.col("model") == m) & (pl.col("metric") == "ppl_ratio"))["diff"][0]
        print(f"\n{m}: mean KL along the base text {kl.mean():.4f} nats; identical texts {int(t['identical'].sum())}"
              f"/{t.height}; identical prefix {t['identical_prefix'].mean():.1f} tokens; edit distance "
              f"{t['edit_distance'].mean():.3f}; perplexity ratio {ppl:.3f}")
        assert kl.min() >= 0 and ppl > 0
    # the study's French story prompt is the sixth of gen_stories
    fr = tx.filter(pl.col("prompt") == "Il était une fois")
    assert fr.height == 2
    print("\n".join(f"{r['model']}: base {r['base_text']!r}\n  quantized {r['quant_text']!r}"
                    for r in fr.iter_rows(named=True)))
