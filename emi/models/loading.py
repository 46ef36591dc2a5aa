"""Loading checkpoints and model pairs: Hugging Face ids, local folders and LoRA adapters.

A :class:`ModelPair` holds a base and a finetuned model (and optionally a control finetune)
sharing one tokenizer. When the finetuned model is a LoRA adapter on the base, one copy of
the base weights serves both roles: the adapter is switched off for the base role.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from emi.core.errors import ModelLoadError
from emi.core.paths import DTYPES
from emi.models import layers
from emi.models.plan import (  # noqa: F401
    _adapter_base,
    _check_adapter_base,
    _read_config,
    check_compatible,
    context_window,
    locate,
    plan_pair,
    text_config,
)
from emi.models.specs import ModelSpec, PairSpec

ROLES = ("base", "finetuned", "control")


class ModelProvenance(TypedDict, total=False):
    """Where a loaded role came from, as stores, answers and result tables record it."""

    id: str
    revision: str | None
    adapter: str | None
    resolved: str
    commit: str | None
    fingerprint: str | None
    adapter_fingerprint: str | None
    model_type: str
    dtype: str
    device: str
    loaded: bool  # False: a role of the pair this run never loaded


class LoadOptions(TypedDict):
    """How :func:`load_pair` loads each of its checkpoints (:func:`load_model`'s keywords)."""

    dtype: str | torch.dtype | None
    device: str | None
    device_map: Any
    trust_remote_code: bool
    tokenizer: Any


class PairLoadOptions(TypedDict, total=False):
    """:func:`load_pair`'s keywords for how its checkpoints load (a caller that loads many pairs alike keeps one)."""

    dtype: str | torch.dtype | None
    device: str | None
    device_map: Any
    trust_remote_code: bool


@dataclass
class LoadedModel:
    """One role of a pair: the module to run, its tokenizer, and where it came from."""

    role: str
    model: nn.Module
    tokenizer: Any
    spec: ModelSpec
    adapter_enabled: bool | None = None  # None: not served through a shared adapter
    provenance: ModelProvenance = field(default_factory=lambda: ModelProvenance())
    adapter_name: str | None = None  # the peft adapter this role switches on (shared-base roles)

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        """Yield the module in this role's state (adapter on or off), restoring it after."""
        yield self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def identity(self) -> dict[str, str | None]:
        """What makes this role's outputs what they are (keys answers, stores and results):
        checkpoint, revision, adapter, weights fingerprints, dtype; not the device."""
        keys = ("id", "revision", "adapter", "resolved", "commit", "fingerprint", "adapter_fingerprint", "dtype")
        prov: dict[str, object] = dict(self.provenance)
        return {k: None if prov.get(k) is None else str(prov[k]) for k in keys}

    @property
    def n_layers(self) -> int:
        return layers.n_layers(self.model)

    @property
    def d_model(self) -> int:
        return layers.d_model(self.model)


def as_loaded(model: LoadedModel | nn.Module, tokenizer: Any = None, role: str = "model") -> LoadedModel:
    """Accept either a :class:`LoadedModel` or a bare Hugging Face model and its tokenizer."""
    if isinstance(model, LoadedModel):
        return model
    if tokenizer is None:
        raise ModelLoadError("a bare model needs its tokenizer: pass tokenizer=...")
    ident = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
    return LoadedModel(role, model, tokenizer, ModelSpec(str(ident)))


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def parse_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    if name is None or name == "auto":
        return default_dtype(device)
    if isinstance(name, torch.dtype):
        return name
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, **DTYPES}
    if name not in table:
        raise ModelLoadError(f"unknown dtype {name!r}; expected one of {', '.join(table)} or auto")
    return table[name]


def fingerprint(folder: str | Path) -> str | None:
    """A cheap content fingerprint of a local checkpoint or adapter folder (None for hub ids): its
    config files and, per weight file, its size and a hash of its first and last MiB. Two folders
    with the same path but other weights get different fingerprints."""
    path = Path(folder)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix == ".json":
            h.update(f.name.encode() + f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt"):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(2**20))
                fh.seek(max(0, size - 2**20))
                h.update(fh.read(2**20))
    return h.hexdigest()[:16]


def load_tokenizer(ident: str, revision: str | None = None, trust_remote_code: bool = False, chat: bool = True
                   ) -> Any:
    """The tokenizer of ``ident``, padding on the left; ``chat``: it must have a chat template (a base
    checkpoint without one is asked with --context none or code, emi.behaviour.elicitation)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ident, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if chat and getattr(tok, "chat_template", None) is None:
        raise ModelLoadError(
            f"the tokenizer of {ident!r} has no chat template; emi needs a chat model's tokenizer "
            f"(e.g. a Qwen2.5 *-Instruct checkpoint), or --context none or code for a base checkpoint"
        )
    return tok


def _load_full(ident: str, revision: str | None, dtype: torch.dtype, device: str,
               device_map: Any, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(revision=revision, dtype=dtype, trust_remote_code=trust_remote_code)
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(ident, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model {ident!r}: {exc}") from None
    if device_map is None:
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model


def _attach_adapter(model: nn.Module, adapter: str, revision: str | None, base_label: str) -> nn.Module:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter, revision=revision)
    except Exception as exc:  # size mismatch, missing target modules, ...
        msg = str(exc).splitlines()[0][:300]
        raise ModelLoadError(
            f"the LoRA adapter {adapter!r} does not fit the base {base_label!r} ({msg}); "
            f"load it on the base model it was trained from"
        ) from None
    peft_model.eval()
    return peft_model


RESIDENT = ("all", "one")


@dataclass
class ModelPair:
    """A base and a finetuned model (and optionally a control) with one tokenizer.

    ``resident="all"`` holds every role in memory. ``resident="one"`` loads a role when it is first
    asked for and frees the others first, so a pair of two full finetunes never needs two models'
    memory (LoRA roles share one base, so they count as one model and stay together).
    """

    spec: PairSpec
    tokenizer: Any
    models: dict[str, LoadedModel]
    units: dict[str, str] = field(default_factory=dict)  # role -> what loads it (roles sharing a base share one)
    loaders: dict[str, Callable[[], dict[str, LoadedModel]]] = field(default_factory=dict)
    resident: str = "all"
    seen: dict[str, ModelProvenance] = field(default_factory=dict)  # provenance of every role loaded so far

    @property
    def roles(self) -> list[str]:
        return list(self.units) if self.units else list(self.models)

    @property
    def base(self) -> LoadedModel:
        return self["base"]

    @property
    def finetuned(self) -> LoadedModel:
        return self["finetuned"]

    @property
    def control(self) -> LoadedModel | None:
        return self["control"] if "control" in self.roles else None

    def __getitem__(self, role: str) -> LoadedModel:
        if role in self.models:
            return self.models[role]
        if role not in self.units:
            raise ModelLoadError(f"this pair has no {role!r} model; it has {', '.join(self.roles)}")
        unit = self.units[role]
        if self.resident == "one":
            self.release(keep=unit)
        loaded = self.loaders[unit]()
        self.models.update(loaded)
        self.seen.update({r: m.provenance for r, m in loaded.items()})
        return self.models[role]

    def shares_weights(self, roles: Sequence[str]) -> bool:
        """Whether these roles are served by one copy of the weights (all LoRA on one base)."""
        return len({self.units.get(r, r) for r in roles}) <= 1

    def release(self, keep: str | None = None) -> None:
        """Free every loaded role (except those of unit ``keep``); they load again when asked for."""
        drop = [r for r in self.models if r in self.units and self.units[r] != keep]
        for r in drop:
            del self.models[r]
        if drop:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def provenance(self) -> dict[str, object]:
        """The pair's name and each role's :class:`ModelProvenance` (a role not loaded: its id)."""
        out: dict[str, object] = {"pair": self.spec.name}
        for r in self.roles:
            prov = self.models[r].provenance if r in self.models else self.seen.get(r)
            out[r] = prov or ModelProvenance(id=getattr(self.spec, r).label(), loaded=False)
        return out


def load_model(spec: ModelSpec, *, role: str = "model", dtype: str | torch.dtype | None = None,
               device: str | None = None, device_map: Any = None,
               trust_remote_code: bool = False, tokenizer: Any = None) -> LoadedModel:
    """Load one checkpoint (a full model, or a LoRA adapter on a full model)."""
    device = device or default_device()
    torch_dtype = parse_dtype(dtype, device)
    kind, where = locate(spec.id, spec.revision)
    ident, adapter = (where, spec.adapter)
    if kind == "adapter":  # an adapter given on its own: find its base
        adapter, base_id = where, _adapter_base(where, spec.revision)
        if not base_id:
            raise ModelLoadError(f"adapter {spec.id!r} does not name its base model; pass the base explicitly")
        ident = locate(base_id)[1]
    tok = tokenizer or load_tokenizer(ident, spec.revision if kind == "model" else None, trust_remote_code)
    model = _load_full(ident, spec.revision if kind == "model" else None, torch_dtype, device,
                       device_map, trust_remote_code)
    if adapter:
        model = _attach_adapter(model, locate(adapter, spec.adapter_revision)[1], spec.adapter_revision, ident)
    prov = ModelProvenance(id=spec.id, revision=spec.revision, adapter=adapter, resolved=ident,
                           commit=getattr(model.config, "_commit_hash", None), fingerprint=fingerprint(ident),
                           adapter_fingerprint=fingerprint(adapter) if adapter else None,
                           model_type=layers.model_type(model), dtype=str(torch_dtype).replace("torch.", ""),
                           device=device)
    return LoadedModel(role, model, tok, spec, None, prov)


def load_pair(pair: str | PairSpec, *, roles: tuple[str, ...] = ("base", "finetuned"),
              dtype: str | torch.dtype | None = None, device: str | None = None,
              device_map: Any = None, trust_remote_code: bool = False, resident: str = "all",
              interventions: bool = True, chat: bool = True) -> ModelPair:
    """Load a named pair (see :func:`emi.models.registry.list_pairs`) or a :class:`PairSpec`.

    ``interventions=False``: the pair is only sampled (``emi.evaluate``), so any causal LM will do;
    otherwise the architecture must be one whose module paths :mod:`emi.models.layers` knows.
    ``chat=False``: the tokenizer may lack a chat template (a base checkpoint asked with --context
    none or code).

    A finetuned (or control) model that is a LoRA adapter on the base shares the base's weights.
    Everything is checked first (folders, configs, architectures); ``resident="one"`` then loads
    each role only when it is used, one model's worth at a time (see :class:`ModelPair`).
    """
    from emi.models.registry import get_pair

    if resident not in RESIDENT:
        raise ModelLoadError(f"resident must be one of {', '.join(RESIDENT)}, found {resident!r}")
    spec = get_pair(pair) if isinstance(pair, str) else pair
    checked = plan_pair(spec, roles, trust_remote_code, interventions)
    base_where, plan = checked.base_where, checked.roles
    tok = load_tokenizer(base_where, spec.base.revision, trust_remote_code, chat)
    common = LoadOptions(dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code,
                         tokenizer=tok)
    adapters = {r: p[1] for r, p in plan.items() if p[0] == "adapter"}
    units: dict[str, str] = {}
    loaders: dict[str, Callable[[], dict[str, LoadedModel]]] = {}
    if adapters:  # one copy of the base weights serves the base and every adapter role
        shared_roles = [r for r in roles if r == "base" or r in adapters]
        units.update({r: "shared" for r in shared_roles})
        def shared() -> dict[str, LoadedModel]:
            return _load_shared(spec, adapters, "base" in roles, common)

        loaders["shared"] = shared
    elif "base" in roles:
        units["base"] = "base"
        loaders["base"] = _full_loader("base", spec.base, common)
    for role, (kind, s) in plan.items():
        if kind == "model":
            units[role] = role
            loaders[role] = _full_loader(role, s, common)
    loaded = ModelPair(spec, tok, {}, {r: units[r] for r in roles}, loaders, resident)
    if resident == "all":
        for role in roles:
            loaded[role]
    return loaded


def _full_loader(role: str, spec: ModelSpec, common: LoadOptions) -> Callable[[], dict[str, LoadedModel]]:
    return lambda: {role: load_model(spec, role=role, **common)}


def _load_shared(spec: PairSpec, adapters: dict[str, ModelSpec], with_base: bool,
                 common: LoadOptions) -> dict[str, LoadedModel]:
    """The base with every adapter role attached (peft), and the base role with adapters off."""
    shared = load_model(spec.base, role="base", **common)
    peft_model: Any = None
    names: dict[str, str] = {}
    for role, s in adapters.items():
        assert s.adapter is not None
        path = locate(s.adapter, s.adapter_revision)[1]
        if peft_model is None:  # peft names the first adapter "default"
            peft_model = _attach_adapter(shared.model, path, s.adapter_revision, spec.base.label())
            names[role] = "default"
        else:
            try:
                peft_model.load_adapter(path, adapter_name=role)
            except Exception as exc:
                raise ModelLoadError(f"the LoRA adapter {s.adapter!r} does not fit the base "
                                     f"{spec.base.label()!r} ({str(exc).splitlines()[0][:200]})") from None
            names[role] = role
    models: dict[str, LoadedModel] = {}
    tok = common["tokenizer"]
    for role, s in adapters.items():
        prov = ModelProvenance(**shared.provenance)
        prov["adapter"] = s.adapter
        prov["adapter_fingerprint"] = fingerprint(locate(s.adapter, s.adapter_revision)[1])  # type: ignore[arg-type]
        models[role] = _AdapterRole(role, peft_model, tok, s, True, prov, adapter_name=names[role])
    if with_base:
        models["base"] = _AdapterRole("base", peft_model, tok, spec.base, False, shared.provenance)
    return models


class _AdapterRole(LoadedModel):
    """A role served by a shared PeftModel: the base with adapters off, or one adapter on."""

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        if self.adapter_enabled is False:
            with self.model.disable_adapter():  # type: ignore[operator]
                yield self.model
            return
        previous = self.model.active_adapter  # type: ignore[attr-defined]
        self.model.set_adapter(self.adapter_name)  # type: ignore[operator]
        try:
            yield self.model
        finally:
            self.model.set_adapter(previous)  # type: ignore[operator]
