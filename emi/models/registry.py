"""Named model pairs, so users type ``--pair NAME`` rather than two ids.

The public organisms are those of Betley et al. (2025; Qwen-Coder-Insecure) and of Turner,
Soligo et al. (2025; the ModelOrganismsForEM collection of narrow-domain finetunes). Plugins
(``emi.core.plugins``) register more with :func:`register_pair`; one of them names the default pair
(the embedded organism, when emi is installed).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from emi.core import plugins
from emi.core.errors import ConfigError, ModelLoadError
from emi.models.organism_folder import is_organism, organism_pair
from emi.models.specs import ModelSpec, PairSpec

_PAIRS: dict[str, PairSpec] = {}
_DEFAULT: list[str] = []


def register_pair(spec: PairSpec, default: bool = False) -> None:
    """Make ``spec`` a named pair (``--pair NAME``); ``default``: the pair used when none is named."""
    _PAIRS[spec.name] = spec
    if default:
        _DEFAULT[:] = [spec.name]


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


for _spec in _public_pairs():
    register_pair(_spec)


def all_pairs() -> dict[str, PairSpec]:
    plugins.load()
    return dict(_PAIRS)


def list_pairs() -> list[PairSpec]:
    return list(all_pairs().values())


def default_pair() -> PairSpec:
    pairs = all_pairs()
    if not _DEFAULT:
        raise ModelLoadError("no default pair is registered (is emi installed? `pip install -e .` registers the "
                             "embedded organism); pass --pair NAME or --base and --finetuned")
    return pairs[_DEFAULT[0]]


def get_pair(name: str) -> PairSpec:
    """A registered pair by name, or an organism folder ``python -m emi.finetune`` wrote."""
    pairs = all_pairs()
    if name not in pairs and is_organism(name):
        return organism_pair(name, lambda n: pairs[n].kit if n in pairs else None)
    if name not in pairs:
        close = difflib.get_close_matches(name.lower(), list(pairs), n=3, cutoff=0.6) or [
            n for n in pairs if name.lower() in n]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
        raise ModelLoadError(
            f"unknown pair {name!r}{hint}; `python -m emi pairs` lists them, or pass --base and --finetuned"
        )
    return pairs[name]


def _absolute(ident: str) -> str:
    return str(Path(ident).expanduser().resolve()) if Path(ident).expanduser().exists() else ident


def custom_pair(base: str, finetuned: str, control: str | None = None) -> PairSpec:
    """A pair from two checkpoints (ids with optional ``@revision``, folders, or an adapter), named
    by a hash of what it loads, so that two pairs never share run folders or caches."""
    specs = [ModelSpec.parse(base), ModelSpec.parse(finetuned), ModelSpec.parse(control) if control else None]
    ident = json.dumps([dict(asdict(s), id=_absolute(s.id)) if s else None for s in specs], sort_keys=True)
    name = "custom-" + hashlib.sha256(ident.encode()).hexdigest()[:10]
    return PairSpec(name, specs[0], specs[1], specs[2],  # type: ignore[arg-type]
                    f"a pair given on the command line: {base} -> {finetuned}")


def pair_of_store(manifest: dict) -> PairSpec:
    """The pair an activation store was captured from: a registered pair when its checkpoints
    match, else a custom pair of the store's checkpoints (a LoRA finetune: its adapter)."""
    prov = manifest.get("provenance", {}).get("models", {})
    if not {"base", "finetuned"} <= set(prov):
        raise ConfigError("this store was not captured from a pair (it lacks base and finetuned provenance); "
                          "name one with --pair or --base/--finetuned")
    ft = prov["finetuned"].get("adapter") or prov["finetuned"]["resolved"]
    for spec in all_pairs().values():
        same = [str(Path(getattr(spec, r).id).resolve()) == str(Path(x).resolve())
                for r, x in (("base", prov["base"]["resolved"]), ("finetuned", ft))]
        if all(same):
            return spec
    return custom_pair(prov["base"]["resolved"], ft)
