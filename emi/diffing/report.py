"""What ``python -m emi.diff`` prints and writes: the ADL readouts, the cosine table, the KL ranking,
the crosscoder's latents; each written as JSON beside the directions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO

from emi.diffing.records import AdlPosition, CosineRow, KlToken, TokenValues


def _tokens(tv: TokenValues, k: int = 6) -> str:
    return " ".join(f"{t!r}:{v:.3f}" for t, v in list(tv)[:k])


def print_adl(rows: Sequence[AdlPosition], file: IO[str] | None = None) -> None:
    """Per delta_j: its norm, cosines, logit lens through each model, the Patchscope readout per
    scale, and the coherent steering strength."""
    for r in rows:
        cos = ", ".join(f"cos {k} {v:+.3f}" for k, v in r.cosines.items() if v is not None)
        print(f"delta_{r.position} @ layer {r.layer}: |delta| {r.norm:.3f} "
              f"({r.norm / max(r.resid_norm, 1e-12):.2f} x residual){', ' + cos if cos else ''}", file=file)
        for role in ("base", "finetuned"):
            print(f"  logit lens ({role}): {_tokens(r.logit_lens[role])}", file=file)
        for s, tv in r.patchscope.items():
            print(f"  patchscope x{s}: {_tokens(tv, 5)}", file=file)
        if r.strength is not None:
            print(f"  largest coherent steering strength (base): {r.strength:.3g}", file=file)


def print_cosines(table: Sequence[CosineRow], file: IO[str] | None = None) -> None:
    names = list(table[0].cosines) if table else []
    rows = [{"direction": t.direction, **{n: f"{t.cosines[n]:+.3f}" for n in names}} for t in table]
    print("cosines at the diffing layer:", file=file)
    print_table(rows, [("direction", "direction")] + [(n, n) for n in names], file=file)


def print_kl(rows: Sequence[KlToken], file: IO[str] | None = None) -> None:
    table = [{"rank": str(i + 1), "source": r.source, "kl": f"{r.kl:.3f}", "token": repr(r.token),
              "next": repr(r.next_ft) + " / " + repr(r.next_base),
              "proj": "" if r.projection is None else f"{r.projection:+.2f}",
              "context": r.context[-60:].replace("\n", " \\n ")} for i, r in enumerate(rows)]
    print_table(table, [("rank", "#"), ("source", "text"), ("kl", "KL(ft||base)"), ("token", "at token"),
                            ("next", "top next: finetuned / base"), ("proj", "persona proj"), ("context", "context")],
                    file=file)


def print_table(rows: Sequence[Mapping[str, str]], columns: Sequence[tuple[str, str]], file: IO[str] | None = None
                ) -> None:
    """Left-aligned columns under a dashed header (the commands' table style)."""
    width = {k: max([len(t)] + [len(str(r.get(k, ""))) for r in rows]) for k, t in columns}
    print("  ".join(t.ljust(width[k]) for k, t in columns), file=file)
    print("  ".join("-" * width[k] for k, _ in columns), file=file)
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(width[k]) for k, _ in columns), file=file)
