"""python -m emi.figures: publication figures (html, png, svg, pdf) from emi's result files.

Steer ``results.jsonl`` (summary, alpha sweep, EM against KL), evaluate ``judged.jsonl`` (per
question, aligned against coherent), direction ``.json`` files (separation by layer), and an
emi.diff run's ``adl.json`` (logit-lens bars), ``cosines.json`` (heatmap), ``kl.json`` (the KL
ranking, KL against the persona projection) and ``crosscoder.json`` (decoder-norm ratios, latent
scaling), or folders holding them. The figures themselves are :mod:`emi.report.figures` and
:mod:`emi.report.diffing`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emi import cli
from emi.core import jsonl
from emi.core.errors import ConfigError, read_text
from emi.report import diffing
from emi.report.figures import (
    aligned_coherent,
    alpha_sweep,
    browser,
    em_vs_kl,
    has_values,
    layer_separation,
    per_question,
    steer_summary,
)

# emi.diff's files, by name: (figure name, builder over the file's JSON)
DIFF_FIGURES: dict[str, list[tuple[str, Callable[[Any], Any]]]] = {
    "adl.json": [("logit-lens", diffing.logit_lens_bars)],
    "cosines.json": [("cosines", diffing.cosine_heatmap)],
    "kl.json": [("kl-top", diffing.kl_top), ("kl-projection", diffing.kl_projection)],
    "crosscoder.json": [("decoder-ratio", diffing.decoder_ratio_histogram), ("latent-scaling", diffing.latent_scaling)],
}


def main(argv: Sequence[str] | None = None) -> int:
    """Make every figure a results folder or file supports."""
    p = cli.parser("python -m emi.figures", "Figures from emi result files (steer results.jsonl, evaluate "
                   "judged.jsonl, direction .json, emi.diff's adl/cosines/kl/crosscoder .json) or folders "
                   "holding them.")
    p.add_argument("results", nargs="+", help="result files or folders")
    p.add_argument("--out", default="figs", help="output folder (default figs/)")
    p.add_argument("--format", default="html,png", help="comma-separated: html, png, svg, pdf (default html,png)")
    args = p.parse_args(argv)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    out = Path(args.out)
    files = []
    for res in args.results:  # every input found before any figure is drawn
        r = Path(res)
        found = sorted(r.glob("*.json*")) + sorted(r.glob("*/*.json")) if r.is_dir() else [r]
        if not found or not all(f.exists() for f in found):
            raise ConfigError(f"no result files at {res!r}")
        files += found
    made = _draw(files, out, formats)
    if not made:
        raise ConfigError("none of the given files is an emi result emi can plot (results.jsonl, judged.jsonl, "
                          "answers with judgements, a direction .json, or emi.diff's adl/cosines/kl/crosscoder .json)")
    for m in made:
        print(m)
    return 0


def _draw(files: list[Path], out: Path, formats: list[str]) -> list[Path]:
    """Every figure of ``files``; a refused file leaves no figure (nor a new --out) behind."""
    from emi.core.errors import EmiError

    made: list[Path] = []
    existed = out.exists()
    try:
        with browser():
            for f in files:
                made += _figures_for(f, out, formats)
    except EmiError:
        for m in made:
            m.unlink(missing_ok=True)
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return made


def export(fig: Any, path: Path, formats: list[str]) -> list[Path]:
    """Write the figure, or refuse in one sentence when every value in it is null or missing."""
    from emi.report.figures import export as write

    if not has_values(fig):
        raise ConfigError(f"nothing to draw in {path.name}: every value is null (an AUROC undefined at every "
                          f"layer for too few answers, or rates over no answers); sample more answers (--n) and "
                          f"run again")
    return write(fig, path, formats)


def _figures_for(f: Path, out: Path, formats: list[str]) -> list[Path]:
    import json

    stem = f.parent.name + "-" + f.stem
    if f.name == "results.jsonl":
        from emi.experiments.results import read_results

        rows = read_results(f)
        made = export(steer_summary(rows), out / f"{stem}-summary", formats)
        if len({r.alpha for r in rows if r.intervention == "steer"}) > 1:
            made += export(alpha_sweep(rows), out / f"{stem}-alpha", formats)
        if any(r.side_effects is not None for r in rows):
            made += export(em_vs_kl(rows), out / f"{stem}-side-effects", formats)
        return made
    if f.name == "judged.jsonl":
        recs = jsonl.read(f)
        return (export(per_question(recs), out / f"{stem}-per-question", formats)
                + export(aligned_coherent(recs), out / f"{stem}-scatter", formats))
    if f.suffix == ".json":
        try:
            meta = json.loads(read_text(f, "result file"))
        except json.JSONDecodeError:
            return []
        if f.name in DIFF_FIGURES:
            return [m for name, build in DIFF_FIGURES[f.name]
                    for m in export(build(meta), out / f"{f.parent.name}-{name}", formats)]
        if isinstance(meta, dict) and meta.get("format") == "emi.direction/1" and meta.get("separation"):
            return export(layer_separation(meta["separation"], f"Separation by layer ({meta.get('method')}, "
                                           f"{meta.get('positions')})"), out / f"{stem}-layers", formats)
    return []


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
