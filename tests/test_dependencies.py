"""The declared dependency ranges admit only tested releases of the libraries emi's numbers rest on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _resolve_module():
    spec = importlib.util.spec_from_file_location("ci_resolve", ROOT / ".ci" / "resolve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ranges() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


def test_ranges_exclude_the_releases_known_to_break_emi():
    r = _ranges()
    assert "5.23.0" in r["transformers"].specifier
    assert "5.24.0" not in r["transformers"].specifier  # KV-cache position steering changes meaning
    assert "3.9.0" in r["transformer-lens"].specifier
    assert "4.0.0" not in r["transformer-lens"].specifier and "4.3.0" not in r["transformer-lens"].specifier
    assert "6.51.1" not in r["sae-lens"].specifier  # allows TransformerLens 4, then fails at import
    assert "2.14.0" not in r["torch"].specifier


def test_every_bounded_library_admits_its_tested_pin_and_no_later_minor():
    mod = _resolve_module()
    pins = mod.pins(ROOT / "constraints.txt")
    r = _ranges()
    for name in mod.TESTED:
        assert pins[name] in r[name].specifier, name
        major, minor, *_ = (int(x) for x in pins[name].split(".")[:2] + ["0"])
        assert f"{major}.{minor + 1}.0" not in r[name].specifier, f"{name} admits an untested minor release"


def test_resolution_check_flags_an_untested_release():
    mod = _resolve_module()
    tested = {n: "1.0.0" for n in mod.TESTED}
    got = dict(tested, torch="1.0.0+cu128")
    assert mod.untested(tested, got) == []
    assert mod.untested(tested, dict(got, transformers="1.1.0")) == ["transformers"]
    assert mod.untested(tested, {k: v for k, v in got.items() if k != "peft"}) == ["peft"]


def test_legacy_hooked_transformer_refuses_transformer_lens_4_in_one_sentence(monkeypatch):
    import importlib.metadata

    import pytest
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from emi.core.errors import ConfigError
    from emi.models import layers

    model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "4.3.0" if name == "transformer-lens" else real(name))
    with pytest.raises(ConfigError, match="TransformerLens 4.3.0 has no HookedTransformer.*tl_bridge"):
        layers.hooked_transformer(model, tokenizer=None)


def test_sae_path_refuses_an_unimportable_sae_lens_in_one_sentence(monkeypatch):
    import sys

    import pytest

    from emi.core.errors import ConfigError
    from emi.directions import sae

    monkeypatch.setitem(sys.modules, "sae_lens", None)  # what TransformerLens 4 beside sae-lens 6.51 gives
    with pytest.raises(ConfigError, match="sae-lens cannot be imported.*transformer-lens 3.x"):
        sae.load_sae("anything")
