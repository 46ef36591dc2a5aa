"""The served-condition vocabulary: what an engine samples for one condition (:class:`Served`: a
checkpoint, an optional LoRA adapter, and what vllm-lens does per request: :class:`Steering`,
:class:`Ablation`, :class:`Program`), and how a loaded model or a pair's spec is served."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

if TYPE_CHECKING:
    from emi.models.loading import LoadedModel


@dataclass(frozen=True, eq=False)
class Steering:
    """What steering adds after each of ``layers``: ``deltas[i]`` after ``layers[i]``, at ``positions``."""

    layers: tuple[int, ...]
    deltas: Float[torch.Tensor, "layer d_model"]
    positions: str = "all"  # all | prompt | generated


@dataclass(frozen=True, eq=False)
class Ablation:
    """The unit direction ``u`` projected out of the residual stream after each of ``layers``."""

    layers: tuple[int, ...]
    u: Float[torch.Tensor, " d_model"]


@dataclass(frozen=True, eq=False)
class Program:
    """An edit of the residual stream after ``layer``: ``h + f(h)``, ``f`` a torch.export program
    file (an SAE's latents zeroed, emi.directions.sae.export_edit) that the server reads."""

    layer: int
    path: str


@dataclass(frozen=True, eq=False)
class Served:
    """What an engine samples for one condition."""

    checkpoint: str  # the folder (absolute) or hub id the server loads
    adapter: str | None = None  # a LoRA adapter folder served on it
    steering: Steering | None = None
    ablation: Ablation | None = None
    program: Program | None = None

    def key(self) -> str | dict[str, Any]:
        """What answers are keyed by besides the condition (whose identity has the intervention):
        the checkpoint (as answers sampled before adapters were served were keyed), and its adapter."""
        return self.checkpoint if self.adapter is None else {"checkpoint": self.checkpoint, "adapter": self.adapter}

    @property
    def needs_lens(self) -> bool:
        return self.steering is not None or self.ablation is not None or self.program is not None

    @property
    def needs_hooks(self) -> bool:
        """Whether vllm-lens must run emi's functions in the server (not a steering vector alone)."""
        st = self.steering
        return self.ablation is not None or self.program is not None or (st is not None and st.positions != "all")


def local(ident: str) -> str:
    """A folder by its absolute path (as a server is asked for it), a hub id as it is."""
    return str(Path(ident).resolve()) if Path(ident).exists() else ident


def plain(lm: LoadedModel) -> Served:
    """A loaded model as a server loads it: its checkpoint, and its LoRA adapter unless the role
    switches it off (a LoRA pair's base)."""
    prov = lm.provenance
    adapter = prov.get("adapter") if lm.adapter_enabled is not False else None
    return Served(local(str(prov.get("resolved") or lm.spec.id)), local(adapter) if adapter else None)


def pair_adapters(pair: Any) -> list[Served]:
    """The LoRA adapters each checkpoint serves, from the pair's spec (a PairSpec, or a loaded pair's:
    before any model loads), so that vLLM starts once for a LoRA pair's base and adapter roles."""
    from emi.models.loading import locate

    spec = getattr(pair, "spec", pair)
    out = []
    for role in ("finetuned", "control"):
        s = getattr(spec, role, None)
        if s is None:
            continue
        kind, where = locate(s.id, s.revision)
        adapter = where if kind == "adapter" else s.adapter
        if adapter:
            base = locate(spec.base.id, spec.base.revision)[1]
            out.append(Served(local(base), local(locate(adapter, s.adapter_revision)[1])))
    return out
