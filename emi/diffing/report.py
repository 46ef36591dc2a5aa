"""What ``python -m emi.diff`` prints and writes: the ADL readouts, the cosine table, the KL ranking,
the crosscoder's latents; each written as JSON beside the directions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emi.core.atomic import write_json


def _tokens(tv: Sequence[Sequence[Any]], k: int = 6) -> str:
    return " ".join(f"{t!r}:{v:.3f}" for t, v in list(tv)[:k])


def print_adl(rows: Sequence[dict[str, Any]], file: Any = None) -> None:
    """Per delta_j: its norm, cosines, logit lens through each model, the Patchscope readout per
    scale, and the coherent steering strength."""
    for r in rows:
        cos = ", ".join(f"cos {k} {v:+.3f}" for k, v in r["cosines"].items() if v is not None)
        print(f"delta_{r['position']} @ layer {r['layer']}: |delta| {r['norm']:.3f} "
              f"({r['norm'] / max(r['resid_norm'], 1e-12):.2f} x residual){', ' + cos if cos else ''}", file=file)
        for role in ("base", "finetuned"):
            print(f"  logit lens ({role}): {_tokens(r['logit_lens'][role])}", file=file)
        for s, tv in r["patchscope"].items():
            print(f"  patchscope x{s}: {_tokens(tv, 5)}", file=file)
        if r.get("strength") is not None:
            print(f"  largest coherent steering strength (base): {r['strength']:.3g}", file=file)


def print_cosines(table: Sequence[dict[str, Any]], file: Any = None) -> None:
    names = [k for k in table[0] if k != "direction"] if table else []
    rows = [{"direction": t["direction"], **{n: f"{t[n]:+.3f}" for n in names}} for t in table]
    print("cosines at the diffing layer:", file=file)
    print_table(rows, [("direction", "direction")] + [(n, n) for n in names], file=file)


def print_kl(rows: Sequence[dict[str, Any]], file: Any = None) -> None:
    table = [{"rank": str(i + 1), "source": r["source"], "kl": f"{r['kl']:.3f}", "token": repr(r["token"]),
              "next": repr(r["next_ft"]) + " / " + repr(r["next_base"]),
              "proj": "" if r.get("projection") is None else f"{r['projection']:+.2f}",
              "context": r["context"][-60:].replace("\n", " \\n ")} for i, r in enumerate(rows)]
    print_table(table, [("rank", "#"), ("source", "text"), ("kl", "KL(ft||base)"), ("token", "at token"),
                            ("next", "top next: finetuned / base"), ("proj", "persona proj"), ("context", "context")],
                    file=file)


def write(out: Path, name: str, obj: Any) -> Path:
    path = out / f"{name}.json"
    write_json(path, obj)
    return path


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], file: Any = None) -> None:
    """Left-aligned columns under a dashed header (the commands' table style)."""
    width = {k: max([len(t)] + [len(str(r.get(k, ""))) for r in rows]) for k, t in columns}
    print("  ".join(t.ljust(width[k]) for k, t in columns), file=file)
    print("  ".join("-" * width[k] for k, _ in columns), file=file)
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(width[k]) for k, _ in columns), file=file)
