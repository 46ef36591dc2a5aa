"""Check first, then run: what a command can know about its models before any weight loads.

:func:`plan_pair` reads configs only (``config.json``, ``adapter_config.json``): every role's
folder exists and is a model or an adapter, the base is an architecture emi can hook, and every
finetune has the base's architecture, width, depth and vocabulary. The :class:`PairPlan` it
returns carries the base's width and depth, so layer flags and direction files are checked
against them too. Commands call these before they take a lock, make a folder or load weights;
:func:`emi.models.loading.load_pair` starts from the same plan, so nothing is checked twice in
two ways.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import is_offline_mode

from emi.core.errors import ConfigError, ModelLoadError
from emi.models.specs import ModelSpec, PairSpec

ROLES = ("base", "finetuned", "control")


@dataclass(frozen=True)
class PairPlan:
    """A pair checked from its configs: the base's text config and, per non-base role, whether it
    is a LoRA adapter on the base ("adapter") or a full checkpoint ("model")."""

    spec: PairSpec
    base_where: str
    base_config: Any
    roles: dict[str, tuple[str, ModelSpec]]

    @property
    def d_model(self) -> int | None:
        v = getattr(_text(self.base_config), "hidden_size", None)
        return v if isinstance(v, int) else None

    @property
    def n_layers(self) -> int | None:
        v = getattr(_text(self.base_config), "num_hidden_layers", None)
        return v if isinstance(v, int) else None

    def layers(self, text: str | None, flag: str = "--layers") -> list[int] | None:
        """``text`` (a layer flag's value) as layer indices of the base, or one sentence naming the flag."""
        return check_layers(text, self.n_layers, flag, f"the base {self.spec.base.label()!r}")


def _text(cfg: Any) -> Any:
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def check_layers(text: str | int | None, n_layers: int | None, flag: str = "--layers",
                 what: str = "the model") -> list[int] | None:
    """A layer flag resolved against ``n_layers`` (None: not given); out of range is one sentence."""
    from emi.models.layers import resolve_layers

    if text is None or n_layers is None:
        return None
    try:
        return resolve_layers(text, n_layers)
    except ConfigError as exc:
        raise ConfigError(f"{flag} {text}: {str(exc).replace('this model', what)}") from None


def check_layer_list(layers: tuple[int, ...] | list[int] | None, n_layers: int | None, flag: str,
                     what: str) -> None:
    """Explicit layer indices (e.g. --steer-layers 9) within ``what``'s ``n_layers``."""
    if not layers or n_layers is None:
        return
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ConfigError(f"{flag} {','.join(map(str, layers))} is out of range: {what} has {n_layers} layers "
                          f"(0-{n_layers - 1}); pick layers among those")


def plan_pair(spec: PairSpec, roles: tuple[str, ...] = ("base", "finetuned"), trust_remote_code: bool = False,
              interventions: bool = True) -> PairPlan:
    """The pair's plan from configs alone, or a ModelLoadError saying in one sentence what does not fit."""
    from emi.models import layers

    specs = {"base": spec.base, "finetuned": spec.finetuned, "control": spec.control}
    for role in roles:
        if role not in specs:
            raise ModelLoadError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if specs[role] is None:
            raise ModelLoadError(f"pair {spec.name!r} has no {role} model")
    base_kind, base_where = locate(spec.base.id, spec.base.revision)
    if base_kind == "adapter":
        raise ModelLoadError(f"the base {spec.base.id!r} is a LoRA adapter; the base must be a full model")
    base_cfg = _read_config(base_where, spec.base.revision, trust_remote_code)
    if interventions:
        layers.check_architecture(base_cfg, f"the base {spec.base.label()!r}")
    else:
        layers.check_causal_lm(base_cfg, f"the base {spec.base.label()!r}")
    plan: dict[str, tuple[str, ModelSpec]] = {}
    for role in roles:
        s = specs[role]
        if role == "base" or s is None:
            continue
        kind, where = locate(s.id, s.revision)
        if kind == "adapter" or (s.adapter and s.id == spec.base.id and s.revision == spec.base.revision):
            adapter = where if kind == "adapter" else s.adapter
            assert adapter is not None
            _check_adapter_base(adapter, s.adapter_revision, base_cfg, spec.base.label(), trust_remote_code)
            plan[role] = ("adapter", ModelSpec(spec.base.id, spec.base.revision, adapter, s.adapter_revision))
        else:
            check_compatible(base_cfg, _read_config(where, s.revision, trust_remote_code),
                             spec.base.label(), s.label())
            plan[role] = ("model", s)
    return PairPlan(spec, base_where, base_cfg, plan)

def _check_adapter_base(adapter: str, revision: str | None, base_cfg: Any, base_label: str,
                        trust_remote_code: bool) -> None:
    """Refuse an adapter whose own base (when it can be read here) is another architecture or shape
    than the pair's base; an adapter naming a copy of the same model is fine."""
    named = _adapter_base(adapter, revision)
    if not named:
        return
    try:
        where = locate(named)[1]
        cfg = _read_config(where, None, trust_remote_code)
    except ModelLoadError:
        return  # its base is not here to compare; shapes are still checked when the adapter loads
    try:
        check_compatible(base_cfg, cfg, base_label, named)
    except ModelLoadError:
        raise ModelLoadError(
            f"the LoRA adapter {adapter!r} was trained on {named!r} ({cfg.model_type}, hidden {cfg.hidden_size}, "
            f"{cfg.num_hidden_layers} layers), not on the base {base_label!r} ({base_cfg.model_type}, hidden "
            f"{base_cfg.hidden_size}, {base_cfg.num_hidden_layers} layers); pass the base it was trained on"
        ) from None


def _looks_like_path(ident: str) -> bool:
    return ident.startswith((".", "/", "~")) or ident.count("/") > 1 or os.sep + os.sep in ident


def _not_cached(ident: str) -> ModelLoadError:
    return ModelLoadError(
        f"{ident!r} is not a local folder and is not in the Hugging Face cache, and the hub cannot be "
        f"reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); download it where there is "
        f"internet (`hf download {ident}`) or pass a local folder")


def locate(ident: str, revision: str | None = None) -> tuple[str, str]:
    """Classify ``ident`` as ('model' | 'adapter', local path or hub id); raise clearly if absent."""
    path = Path(os.path.expanduser(ident))
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return "adapter", str(path)
        if (path / "config.json").is_file():
            return "model", str(path)
        raise ModelLoadError(
            f"folder {ident!r} is not a model: it has neither config.json (a full checkpoint) nor "
            f"adapter_config.json (a LoRA adapter); point at the folder that holds them"
        )
    if _looks_like_path(ident) or path.exists():
        raise ModelLoadError(f"model folder {ident!r} does not exist; check the path")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    missing_locally = 0
    for kind, fname in (("adapter", "adapter_config.json"), ("model", "config.json")):
        try:
            hf_hub_download(ident, fname, revision=revision)
            return kind, ident
        except LocalEntryNotFoundError:  # not cached, and the hub is off or unreachable
            missing_locally += 1
            continue
        except EntryNotFoundError:
            continue
        except Exception as exc:  # offline, unknown repo, gated, network down
            if is_offline_mode() or "offline" in str(exc).lower() or "connect" in str(exc).lower():
                raise _not_cached(ident) from None
            if fname == "adapter_config.json":
                continue
            raise ModelLoadError(f"cannot find {ident!r} on the Hugging Face hub: {exc}") from None
    if missing_locally == 2:
        raise _not_cached(ident)
    raise ModelLoadError(f"{ident!r} on the hub has neither config.json nor adapter_config.json")


def text_config(spec: ModelSpec, trust_remote_code: bool = False) -> tuple[Any, str, str | None]:
    """(config, folder or hub id, revision) of a checkpoint, from its config alone (no weights are
    loaded): the text config of a multimodal one; an adapter's base's. Config None where an
    adapter does not name its base."""
    kind, where = locate(spec.id, spec.revision)
    revision = spec.revision if kind == "model" else None
    if kind == "adapter":
        base = _adapter_base(where, spec.revision)
        if base is None:
            return None, where, None
        where, revision = base, None
    cfg = _read_config(where, revision, trust_remote_code)
    return (cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg), where, revision


def context_window(spec: ModelSpec, trust_remote_code: bool = False) -> tuple[int | None, str, str | None]:
    """(context length, folder or hub id, revision) of a checkpoint without loading it:
    ``max_position_embeddings``; None where the config does not say."""
    cfg, where, revision = text_config(spec, trust_remote_code)
    n = getattr(cfg, "max_position_embeddings", None)
    return (int(n) if isinstance(n, int) and n > 0 else None), where, revision


def _read_config(ident: str, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ident, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:
        why = " ".join(str(exc).split())  # one line: transformers' validation errors span several
        raise ModelLoadError(f"cannot read the config of {ident!r}: {why[:300]}") from None


def _adapter_base(adapter: str, revision: str | None) -> str | None:
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(adapter, revision=revision).base_model_name_or_path
    except Exception:
        return None


def check_compatible(a: Any, b: Any, a_label: str, b_label: str) -> None:
    """Refuse a pair whose configs differ in what emi relies on (one sentence saying which)."""
    checks = [("architecture", "model_type"), ("hidden size", "hidden_size"),
              ("layer count", "num_hidden_layers"), ("vocabulary size", "vocab_size")]
    for what, attr in checks:
        va, vb = getattr(a, attr, None), getattr(b, attr, None)
        if va != vb:
            raise ModelLoadError(
                f"base {a_label!r} and finetuned {b_label!r} differ in {what} ({va} vs {vb}); "
                f"a pair must be one architecture finetuned, so pass the finetune's own base model"
            )
