"""How large a page emi.view writes for a 100,000-answer run, and how fast it opens and filters in
headless Chromium (Debian's /usr/bin/chromium through Playwright).

    python bench/view_speed.py [--answers 100000]

Prints: the page's size, the time to write it, the time from navigation until the first page of
answers is drawn, and the time of one filter (condition + label) and one text search.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from emi.report.view import write_page
from emi.report.view_synth import synthetic_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--answers", type=int, default=100_000)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        run = synthetic_run(Path(tmp) / "run", args.answers, judges=("judge-a", "judge-b"))
        t0 = time.perf_counter()
        size = write_page([run], run / "view.html")
        t_write = time.perf_counter() - t0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page()
            t0 = time.perf_counter()
            page.goto((run / "view.html").as_uri())
            page.wait_for_selector("#list .answer")
            t_load = time.perf_counter() - t0
            n = int(page.inner_text("#count"))
            t0 = time.perf_counter()
            page.select_option("#f-cond", label="finetuned")
            page.select_option("#f-label", value="misaligned")
            k = int(page.inner_text("#count"))
            t_filter = time.perf_counter() - t0
            t0 = time.perf_counter()
            page.fill("#f-text", "humans are weak")
            page.wait_for_function("k => document.querySelector('#count').textContent !== k", arg=str(k))
            t_search = time.perf_counter() - t0
            browser.close()
    print(f"answers {n} | page {size / 1e6:.1f} MB written in {t_write:.1f} s | load to first answers "
          f"{t_load:.2f} s | filter (condition + misaligned, {k} left) {t_filter:.3f} s | text search {t_search:.3f} s")


if __name__ == "__main__":
    main()
