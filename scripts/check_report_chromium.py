#!/usr/bin/env python3
"""Open a qfair report in headless Chromium and check that it renders cleanly.

    python scripts/check_report_chromium.py qfair-demo/report/report.html [--screenshot out.png]

Checks, with the network disabled:
1. the page loads with no console error and no failed resource request;
2. every <img> has decoded (``complete`` and ``naturalWidth > 0``), and there is
   at least one;
3. optionally, a full-page screenshot is written for a look by eye.

The report itself holds no script; for check 2 a copy of it with a small probe
script appended is loaded from a temporary directory (the probe writes its
verdict into the document title, which ``--dump-dom`` prints).
Exit status 0 when all checks pass, 1 otherwise, 2 when chromium is missing.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.title = 'QFAIR-PROBE images=' + imgs.length + ' broken=' + bad.length +
                   ' width=' + document.documentElement.scrollWidth;
});
</script>"""

ERROR_PATTERNS = (r"Uncaught", r"Failed to load resource", r"net::ERR_", r"Not allowed to load local resource",
                  r"Refused to", r"CONSOLE\(\d+\)\].*error")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def run_chromium(binary: str, url: str, *extra: str, timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="qfair-chromium-") as profile:
        cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", "--enable-logging=stderr", "--v=0",
               f"--user-data-dir={profile}", "--virtual-time-budget=15000",
               # no network: any attempt to fetch something fails loudly
               "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", *extra, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check(html: Path, screenshot: Path | None = None) -> list[str]:
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium")
    problems: list[str] = []
    text = html.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="qfair-probe-") as d:
        probe = Path(d) / "probe.html"
        probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        r = run_chromium(binary, probe.resolve().as_uri(), "--dump-dom")
    m = re.search(r"QFAIR-PROBE images=(\d+) broken=(\d+) width=(\d+)", r.stdout)
    if not m:
        problems.append(f"the probe did not run (chromium exit {r.returncode}); stderr tail: {r.stderr[-600:]}")
    else:
        n, broken = int(m.group(1)), int(m.group(2))
        print(f"images: {n}, broken: {broken}, page width: {m.group(3)} px")
        if n == 0:
            problems.append("the page has no image")
        if broken:
            problems.append(f"{broken} of {n} images did not decode")
    # the report as shipped (no probe): console errors and failed requests
    r2 = run_chromium(binary, html.resolve().as_uri(), "--dump-dom")
    if r2.returncode != 0:
        problems.append(f"chromium exited {r2.returncode} on the report")
    if "</html>" not in r2.stdout and "</body>" not in r2.stdout:
        problems.append("chromium printed no DOM for the report")
    for line in (r.stderr + r2.stderr).splitlines():
        if any(re.search(p, line) for p in ERROR_PATTERNS):
            problems.append(f"console: {line.strip()[:300]}")
    if screenshot is not None:
        r3 = run_chromium(binary, html.resolve().as_uri(), f"--screenshot={screenshot.resolve()}",
                          "--window-size=1280,2400", "--hide-scrollbars")
        if not screenshot.is_file():
            problems.append(f"no screenshot written (chromium exit {r3.returncode})")
        else:
            print(f"screenshot: {screenshot}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("--screenshot", type=Path, default=None)
    a = ap.parse_args(argv)
    if not a.html.is_file():
        print(f"{a.html}: no such file", file=sys.stderr)
        return 1
    try:
        problems = check(a.html, a.screenshot)
    except FileNotFoundError:
        print("chromium is not installed (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    for p in problems:
        print(f"PROBLEM: {p}")
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
