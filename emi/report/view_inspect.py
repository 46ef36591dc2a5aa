"""A run as Inspect eval logs, written with inspect-ai's own API (the optional extra ``inspect``),
so ``inspect view`` and the Inspect ecosystem open emi runs: one log per run and condition; a
sample per answer (id: the question, epoch: the sample index + 1), its messages, its output, and
one score per judge (``aligned``, ``coherent`` and ``misaligned``; the label as the explanation).

This module imports only the standard library and inspect-ai: :func:`logs_from_payload` runs in
any environment that has inspect-ai, given the viewer's data (:func:`emi.report.view_data.payload`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def require_inspect() -> None:
    try:
        import inspect_ai  # noqa: F401
    except ImportError:
        from emi.core.errors import ConfigError

        raise ConfigError("--inspect needs inspect-ai: pip install 'emi[inspect]' (or pip install inspect-ai); "
                          "the HTML page needs nothing more") from None


def _label(a: float | None, c: float | None, t: dict[str, float]) -> str:
    if a is None or c is None:
        return "unscored"
    if c <= t["coherent_min"]:
        return "incoherent"
    return "misaligned" if a <= t["aligned_max"] else "aligned"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "run"


def logs_from_payload(data: dict[str, Any], out: Path) -> list[Path]:
    """Write one ``.eval`` log per (run, condition) of ``data`` under ``out``; their paths."""
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalMetric,
        EvalResults,
        EvalSample,
        EvalScore,
        EvalSpec,
        write_eval_log,
    )
    from inspect_ai.model import ChatMessageAssistant, ChatMessageUser, ModelOutput
    from inspect_ai.scorer import Score

    cols, tables, t = data["answers"], data["tables"], data["thresholds"]
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (r, c) in enumerate(zip(cols["run"], cols["cond"], strict=True)):
        groups.setdefault((r, c), []).append(i)
    written = []
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for (r, c), idx in groups.items():
        run, cond = data["runs"][r], tables["cond"][c]
        row = next((x for x in run["rows"] if x.get(run["label_key"]) == cond), None)
        model = f"emi/{cond}"
        samples = []
        for i in idx:
            q, meta = tables["q"][cols["q"][i]], tables["meta"][cols["meta"][i]]
            scores = {}
            for name, j in cols["judges"].items():
                if j["s"][i] == 2:
                    continue
                a, co = j["a"][i], j["c"][i]
                lab = _label(a, co, t)
                value = {"aligned": a, "coherent": co, "misaligned": 1 if lab == "misaligned" else 0} if lab != "unscored" \
                    else {"misaligned": "unscored"}
                scores[name] = Score(value=value, answer=cols["text"][i], explanation=lab, metadata={"status": lab})
            samples.append(EvalSample(
                id=q.get("key") or q["id"], epoch=cols["sample"][i] + 1, input=q["text"], target="",
                messages=[ChatMessageUser(content=q["text"]), ChatMessageAssistant(content=cols["text"][i], model=model)],
                output=ModelOutput.from_content(model, cols["text"][i],
                                                stop_reason="max_tokens" if meta.get("finish") == "length" else "stop"),
                scores=scores, metadata={"condition": cond, "sample": cols["sample"][i], **meta}))
        spec = EvalSpec(created=created, task=f"emi/{_slug(run['name'])}", dataset=EvalDataset(
            name=str(run["meta"].get("questions") or "questions"), samples=len({s.id for s in samples})),
            model=model, config=EvalConfig(epochs=max(cols["sample"][i] for i in idx) + 1),
            metadata={"emi_run": run["path"], "command": run["command"], "condition": cond, "provenance": run["meta"]})
        results = None
        if row is not None:
            metrics = {k: EvalMetric(name=k, value=float(row[f"{k}_rate"])) for k in ("em", "em_coherent", "em_scored",
                                                                                   "coherence")
                       if isinstance(row.get(f"{k}_rate"), (int, float))}
            results = EvalResults(total_samples=len(samples), completed_samples=len(samples),
                                  scores=[EvalScore(name=str(row.get("judge") or "judge"), scorer="emi", metrics=metrics)])
        log = EvalLog(status="success" if row is not None else "started", eval=spec, samples=samples, results=results)
        path = out / f"{_slug(run['name'])}_{_slug(cond)}.eval"
        write_eval_log(log, str(path))
        written.append(path)
    return written


def write_logs(runs: Sequence[Path], out: Path) -> list[Path]:
    """Each run (one log per condition) under ``out``."""
    from emi.report.view_data import payload

    return logs_from_payload(payload(runs), out)
