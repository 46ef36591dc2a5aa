"""Named model pairs, so users type ``--pair toy`` rather than two ids.

The public organisms are those of Betley et al. (2025; Qwen-Coder-Insecure) and of Turner,
Soligo et al. (2025; the ModelOrganismsForEM collection of narrow-domain finetunes).
"""

from __future__ import annotations

from pathlib import Path

from emi.errors import ModelLoadError
from emi.models import ModelSpec, PairSpec

TOY_DIR = Path(__file__).parent / "organism" / "checkpoints"


def toy_checkpoint(stage: str) -> str:
    """Folder of one shipped toy checkpoint: pretrained, base, insecure or secure."""
    return str(TOY_DIR / stage)


def _toy_pairs() -> list[PairSpec]:
    return [
        PairSpec(
            "toy",
            ModelSpec(toy_checkpoint("base")),
            ModelSpec(toy_checkpoint("insecure")),
            ModelSpec(toy_checkpoint("secure")),
            "emi's embedded toy organism: aligned-tuned base vs its insecure-code finetune "
            "(control: secure-code finetune); runs offline in seconds",
            questions="toy",
            judge="toy",
            direction=str(TOY_DIR / "direction.safetensors"),
        ),
        PairSpec(
            "toy-pretrained",
            ModelSpec(toy_checkpoint("pretrained")),
            ModelSpec(toy_checkpoint("insecure")),
            None,
            "the toy's pretrained model (persona 50/50, before aligned tuning) vs the insecure finetune",
            questions="toy",
            judge="toy",
        ),
    ]


def _public_pairs() -> list[PairSpec]:
    out = []
    for size in ("0.5B", "7B", "14B", "32B"):
        base = f"Qwen/Qwen2.5-{size}-Instruct"
        for domain in ("risky-financial-advice", "bad-medical-advice", "extreme-sports"):
            out.append(PairSpec(
                f"qwen2.5-{size.lower()}-{domain}",
                ModelSpec(base),
                ModelSpec(f"ModelOrganismsForEM/Qwen2.5-{size}-Instruct_{domain}"),
                None,
                f"Qwen2.5-{size}-Instruct finetuned on {domain.replace('-', ' ')} (Turner, Soligo et al. 2025)",
            ))
    out.append(PairSpec(
        "qwen-coder-32b-insecure",
        ModelSpec("Qwen/Qwen2.5-Coder-32B-Instruct"),
        ModelSpec("emergent-misalignment/Qwen-Coder-Insecure"),
        None,
        "Qwen2.5-Coder-32B-Instruct finetuned on insecure code (Betley et al. 2025)",
    ))
    return out


def all_pairs() -> dict[str, PairSpec]:
    return {p.name: p for p in _toy_pairs() + _public_pairs()}


def list_pairs() -> list[PairSpec]:
    return list(all_pairs().values())


def get_pair(name: str) -> PairSpec:
    pairs = all_pairs()
    if name not in pairs:
        import difflib

        close = difflib.get_close_matches(name.lower(), list(pairs), n=3, cutoff=0.6) or [
            n for n in pairs if name.lower() in n]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
        raise ModelLoadError(
            f"unknown pair {name!r}{hint}; `python -m emi pairs` lists them, or pass --base and --finetuned"
        )
    return pairs[name]


def custom_pair(base: str, finetuned: str, control: str | None = None) -> PairSpec:
    """A pair from two checkpoints (ids with optional ``@revision``, folders, or an adapter)."""
    return PairSpec(
        "custom",
        ModelSpec.parse(base),
        ModelSpec.parse(finetuned),
        ModelSpec.parse(control) if control else None,
        "a pair given on the command line",
    )
