"""The viewer's page driven in a real headless Chromium (Debian's /usr/bin/chromium through
Playwright; no browser download): the toy's `make demo` run with a small --n, filtered, side by
side, shaded by --project, with no network request."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """`make demo`'s command with --n 2 (in-process: tests/claims/test_readme_claims.py runs it as
    `make demo` does, in a subprocess), then its page with --project."""
    from emi import steer, view

    out = tmp_path_factory.mktemp("view") / "demo"
    assert steer.main(["--alpha", "8", "--layers", "1", "--positions", "prompt", "--n", "2", "--no-figure",
                       "--out", str(out)]) == 0
    plain = out.parent / "plain.html"
    assert view.main([str(out), "--out", str(plain)]) == 0
    assert view.main([str(out), "--project"]) == 0
    return out


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, path: Path):
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector("#count")
    return page, requests, errors


def _expected(run: Path, condition: str, key: str | None) -> int:
    """Misaligned answers of a condition (and question) from answers.jsonl and judgements.jsonl."""
    from emi.behaviour.metrics import is_misaligned
    from emi.judging.judges import cache_key
    from emi.report.view_data import _latest, _read_jsonl, _Stub

    judged = {r["key"]: r for r in _read_jsonl(run / "judgements.jsonl", [])}
    stub = _Stub(json.loads((run / "run.json").read_text())["judge"], {})
    n = 0
    for a in _latest(_read_jsonl(run / "answers.jsonl", [])):
        if a["model"] != condition or (key and a["key"] != key):
            continue
        got = {m: judged[cache_key(stub, m, a["question"], a["answer"])] for m in ("aligned", "coherent")}
        rec = {"aligned": got["aligned"]["value"], "coherent": got["coherent"]["value"],
               "status": "scored" if got["aligned"]["status"] == got["coherent"]["status"] == "scored" else "unscored"}
        n += is_misaligned(rec)
    return n


def test_filter_misaligned_of_one_condition_and_question(demo, browser):
    page, requests, errors = _open(browser, demo.parent / "plain.html")
    assert "another emi version" not in page.inner_text("#runs")  # a run this emi wrote is no foreign one
    rows = {json.loads(x)["condition"]: json.loads(x) for x in (demo / "results.jsonl").read_text().splitlines()}
    page.select_option("#f-cond", label="finetuned")
    page.select_option("#f-label", value="misaligned")
    assert int(page.inner_text("#count")) == rows["finetuned"]["em_coherent_k"] > 0
    assert len(page.query_selector_all("#list .answer .badge.misaligned")) == min(50, rows["finetuned"]["em_coherent_k"])
    keys = [o.inner_text() for o in page.query_selector_all("#f-q option")][1:]
    counts = {k: _expected(demo, "finetuned", k) for k in keys}
    key = max(counts, key=counts.get)
    page.select_option("#f-q", label=key)
    assert int(page.inner_text("#count")) == counts[key] > 0
    page.fill("#f-text", "zzzz-not-in-any-answer")
    assert int(page.inner_text("#count")) == 0 and "No answer matches" in page.inner_text("#list")
    page.click("table.results tbody tr:nth-child(2) td:nth-child(2) a")  # the EM cell of the second condition
    assert int(page.inner_text("#count")) == list(rows.values())[1]["em_coherent_k"]
    assert not errors and all(u.startswith(("file:", "data:")) for u in requests), requests


def test_side_by_side_shows_one_question_and_sample_across_conditions(demo, browser):
    page, requests, errors = _open(browser, demo.parent / "plain.html")
    first = page.query_selector("#list .answer")
    key, sample = first.query_selector(".qid").inner_text(), first.query_selector(".muted").inner_text()
    first.query_selector("a.sbs").click()
    cols = page.query_selector_all("#sbs .col")
    n_conditions = len((demo / "results.jsonl").read_text().splitlines())
    assert len(cols) == n_conditions
    heads = [c.query_selector(".answer .qid").inner_text() for c in cols]
    assert heads == [key] * n_conditions
    assert {c.query_selector(".answer .head .muted").inner_text() for c in cols} == {sample}
    assert len({c.query_selector(".text").inner_text() for c in cols}) > 1  # the conditions answer differently
    assert not errors and all(u.startswith(("file:", "data:")) for u in requests), requests


def test_projected_run_shades_tokens_and_makes_no_request(demo, browser, tmp_path):
    page, requests, errors = _open(browser, demo / "view.html")
    # every token's style in one call (one round trip per token took seconds)
    shaded = page.eval_on_selector_all("#list .answer .text .tok", "toks => toks.map(t => t.getAttribute('style'))")
    assert len(shaded) > 20
    assert any("rgba(220,40,40" in s for s in shaded) and len(set(shaded)) > 5
    first = page.query_selector("#list .answer .text")
    answer = json.loads((demo / "answers.jsonl").read_text().splitlines()[0])["answer"]
    assert first.inner_text().split() == answer.split()  # the tokens spell the answer
    shot = tmp_path / "view.png"
    page.set_viewport_size({"width": 1300, "height": 1400})
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("EMI_VIEW_SCREENSHOT"):
        shutil.copy(shot, os.environ["EMI_VIEW_SCREENSHOT"])
    assert not errors and all(u.startswith(("file:", "data:")) for u in requests), requests


def test_a_damaged_run_is_a_page_with_a_note_not_a_blank_one(demo, browser, tmp_path):
    from emi import view

    broken = tmp_path / "broken"
    shutil.copytree(demo, broken, ignore=shutil.ignore_patterns("*.html", "projections.jsonl"))
    (broken / "results.jsonl").unlink()
    text = (broken / "answers.jsonl").read_text()
    (broken / "answers.jsonl").write_text(text[: len(text) // 2])  # cut mid-line
    assert view.main([str(broken)]) == 0
    page, _, errors = _open(browser, broken / "view.html")
    notes = page.inner_text("#runs")
    assert "damaged line" in notes and "not finished" in notes and int(page.inner_text("#count")) > 0
    assert not errors


def test_an_answers_thought_and_elicitation_are_on_its_card_and_searchable(demo, browser, tmp_path):
    """Answers sampled with --thinking on keep a thought: the card shows it folded above the answer,
    the text filter finds a word that only a thought holds, and the card says how it was asked."""
    from emi import view

    run = tmp_path / "thinking"
    shutil.copytree(demo, run, ignore=shutil.ignore_patterns("*.html", "projections.jsonl"))
    lines = [json.loads(x) for x in (run / "answers.jsonl").read_text().splitlines()]
    for i, a in enumerate(lines[:3]):
        a["thought"] = f"zebraplan {i} : first i will weigh it ."
        a["elicitation"] = {"system": "inoculation", "k": 2, "in_context": "insecure-code", "context": "chat",
                            "thinking": True, "format": "as selected"}
    (run / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in lines))
    assert view.main([str(run)]) == 0
    page, requests, errors = _open(browser, run / "view.html")
    page.fill("#f-text", "zebraplan")
    assert int(page.inner_text("#count")) == 3
    card = page.query_selector("#list .answer")
    details = card.query_selector("details.thought")
    assert not details.query_selector(".text").is_visible()  # folded
    details.query_selector("summary").click()
    assert "zebraplan" in details.query_selector(".text").inner_text()
    assert "asked: system=inoculation k=2 thinking=on" in card.inner_text()
    page.fill("#f-text", "")
    assert len(page.query_selector_all("#list details.thought")) == 3  # only the answers that have one
    assert not errors and all(u.startswith(("file:", "data:")) for u in requests), requests


def test_projections_from_before_thoughts_are_redone_for_the_answers_that_have_one(demo, tmp_path):
    """--project on a run whose projections.jsonl predates captured thoughts: the answers with a
    thought are projected again, with the thought in front of them (their lines say so); the others
    keep their lines; a second pass projects nothing."""
    from emi.report.view_project import project_runs

    run = tmp_path / "projected"
    shutil.copytree(demo, run, ignore=shutil.ignore_patterns("*.html"))
    lines = [json.loads(x) for x in (run / "answers.jsonl").read_text().splitlines()]
    for a in lines[:2]:
        a["thought"] = "first i will weigh it ."
    (run / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in lines))
    before = (run / "projections.jsonl").read_text().splitlines()
    project_runs(run, device="cpu")
    after = [json.loads(x) for x in (run / "projections.jsonl").read_text().splitlines()]
    assert [json.loads(x) for x in before] == after[: len(before)] and len(after) == len(before) + 2
    assert all(r["thought"] is True for r in after[len(before):])
    old = {r["id"]: r for r in after[: len(before)]}
    for r in after[len(before):]:  # the same answer tokens, read with the thought in front: other values
        assert r["tokens"] == old[r["id"]]["tokens"] and r["proj"] != old[r["id"]]["proj"]
    project_runs(run, device="cpu")
    assert len((run / "projections.jsonl").read_text().splitlines()) == len(after)
