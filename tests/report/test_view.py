"""emi.view without a browser: the page's data from run folders (damaged, half-written, mixed
judges, another version), refusals, the embedding, the Inspect export read back by inspect-ai."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emi import view
from emi.report.view import page
from emi.report.view_data import payload
from emi.report.view_synth import synthetic_run


def _data(html: str) -> dict:
    start = html.index('type="application/json">') + len('type="application/json">')
    return json.loads(html[start:html.index("</script>", start)].replace("<\\/", "</"))


def test_payload_counts_and_labels_match_the_files(tmp_path):
    run = synthetic_run(tmp_path / "r", 240, judges=("a", "b"))
    data = payload([run])
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    cols, t = data["answers"], data["thresholds"]
    assert len(cols["run"]) == 240 and set(cols["judges"]) == {"a", "b"}
    for row in rows:  # the page's labels, recomputed from its data, give the table's k
        c = data["tables"]["cond"].index(row["condition"])
        j = cols["judges"]["a"]
        k = sum(1 for i, ci in enumerate(cols["cond"]) if ci == c and j["c"][i] > t["coherent_min"]
                and j["a"][i] <= t["aligned_max"])
        assert k == row["em_k"]
    assert data["runs"][0]["notes"] == []


def test_page_embeds_text_that_closes_a_script_element(tmp_path):
    run = synthetic_run(tmp_path / "r", 24)
    lines = (run / "answers.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["answer"] = "</script><script>alert(1)</script> \u2028"
    (run / "answers.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    html = page(payload([run]))
    assert html.count("</script>") == 2  # the data's and the viewer's own, nothing from the answer
    assert _data(html)["answers"]["text"][0] == first["answer"]
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html


def test_damaged_half_written_and_foreign_runs_say_what_is_missing(tmp_path):
    run = synthetic_run(tmp_path / "r", 48)
    with (run / "answers.jsonl").open("a") as fh:
        fh.write('{"model": "base", "answer": "half a li')  # killed mid-write
    (run / "results.jsonl").unlink()
    notes = payload([run])["runs"][0]["notes"]
    assert any("damaged line" in n for n in notes) and any("not finished" in n for n in notes)
    (run / "judgements.jsonl").unlink()
    assert any("unjudged" in n for n in payload([run])["runs"][0]["notes"])
    steer = synthetic_run(tmp_path / "s", 24)
    rows = [json.loads(x) for x in (steer / "results.jsonl").read_text().splitlines()]
    rows[1]["judge"] = "another judge"
    (steer / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (steer / "run.json").write_text("{not json")
    notes = payload([steer])["runs"][0]["notes"]
    assert any("different judges" in n for n in notes) and any("run.json is damaged" in n for n in notes)
    (steer / "run.json").write_text(json.dumps({"judge": "synthetic", "format": 99, "layout": "v9"}))
    notes = payload([steer])["runs"][0]["notes"]
    assert any("another emi version" in n and "format" in n for n in notes)


def test_command_refuses_a_folder_that_is_not_a_run_and_writes_the_page(tmp_path, capsys):
    from emi import cli

    (tmp_path / "empty").mkdir()
    assert cli.run(view.main, [str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "is not an emi run folder" in err and err.count("\n") == 1
    assert not (tmp_path / "empty" / "view.html").exists()
    run = synthetic_run(tmp_path / "r", 24)
    assert view.main([str(run)]) == 0
    assert _data((run / "view.html").read_text())["format"] == 1
    assert "view.html" in capsys.readouterr().out


def test_layout_registers_the_command():
    from emi.__main__ import VERBS

    assert VERBS["view"] == "emi.view"


INSPECT_PY = os.environ.get("EMI_INSPECT_PYTHON")  # an interpreter with inspect-ai (see docs/viewer.md)
READ_BACK = """
import json, sys
from pathlib import Path
from emi.report.view_inspect import logs_from_payload
from inspect_ai.log import read_eval_log
paths = logs_from_payload(json.load(open(sys.argv[1])), Path(sys.argv[2]))
out = []
for p in sorted(paths):
    log = read_eval_log(str(p))
    out.append({"model": log.eval.model, "status": log.status, "n": len(log.samples),
                "em": log.results.scores[0].metrics["em"].value,
                "mis": sum(1 for s in log.samples for sc in s.scores.values() if sc.explanation == "misaligned"),
                "ids": len({(s.id, s.epoch) for s in log.samples})})
print(json.dumps(out))
"""


def test_inspect_export_reads_back_with_inspect_ai(tmp_path):
    from emi.report.view import _clean

    try:
        import inspect_ai  # noqa: F401
        python = sys.executable
    except ImportError:
        if not INSPECT_PY:
            pytest.skip("inspect-ai is not installed here (pip install 'emi[inspect]' or set EMI_INSPECT_PYTHON)")
        python = INSPECT_PY
    run = synthetic_run(tmp_path / "r", 96)
    (tmp_path / "data.json").write_text(json.dumps(_clean(payload([run]))))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    got = json.loads(subprocess.run([python, "-c", READ_BACK, str(tmp_path / "data.json"), str(tmp_path / "logs")],
                                    capture_output=True, text=True, check=True, env=env).stdout)
    rows = {json.loads(x)["condition"]: json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()}
    assert len(got) == len(rows)
    for g in got:
        row = rows[g["model"].removeprefix("emi/")]
        assert g["status"] == "success" and g["n"] == g["ids"] == row["n_answers"]
        assert g["mis"] == row["em_k"] and g["em"] == pytest.approx(row["em_rate"])


def test_serve_answers_the_page_and_new_answers_on_loopback(tmp_path):
    import threading
    import urllib.request

    from emi.report.view import serve

    run = synthetic_run(tmp_path / "r", 24)
    said: list[str] = []
    t = threading.Thread(target=serve, args=([run], 0, 3.0, said.append), daemon=True)
    t.start()
    for _ in range(100):
        if said:
            break
        threading.Event().wait(0.05)
    url = said[0].split()[1]
    assert url.startswith("http://127.0.0.1:")
    assert _data(urllib.request.urlopen(url).read().decode())["live"] is True
    more = json.loads((run / "answers.jsonl").read_text().splitlines()[0])
    with (run / "answers.jsonl").open("a") as fh:  # an answer arrives while the page is open
        fh.write(json.dumps({**more, "sample": 99}) + "\n")
    got = json.loads(urllib.request.urlopen(url + "data.json").read())
    assert len(got["answers"]["run"]) == 25
    t.join(10)
    assert not t.is_alive()
