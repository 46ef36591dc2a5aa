"""Pairs bring their kit; plugins register pairs, question sets, judges and option pairs; no
generic module knows the embedded organism exists."""

import re
from pathlib import Path

import pytest

import emi
from emi.core import plugins
from emi.core.errors import ConfigError
from emi.models.kit import REAL, PairKit

PACKAGE = Path(emi.__file__).parent


def test_no_module_outside_the_organism_names_the_toy():
    offenders = []
    for f in PACKAGE.rglob("*.py"):
        if "organism" in f.relative_to(PACKAGE).parts:
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\btoy\b", line, re.IGNORECASE):
                offenders.append(f"{f.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_default_pair_and_its_kit_come_from_the_plugin():
    from emi.models.registry import custom_pair, default_pair

    spec = default_pair()
    assert spec.kit.eval_questions != spec.kit.extract_questions
    assert spec.kit.closed_world and spec.kit.direction
    real = custom_pair("a/b", "c/d")
    assert real.kit is REAL and (REAL.eval_questions, REAL.extract_questions, REAL.judge) == (
        "main", "preregistered", "openai")
    assert real.name.startswith("custom-") and real.name != custom_pair("a/b", "c/e").name


def test_a_kit_must_keep_extraction_and_evaluation_apart():
    with pytest.raises(ConfigError, match="extraction questions must differ"):
        PairKit(eval_questions="main", extract_questions="main")


def test_a_user_plugin_registers_a_pair_and_a_question_set(tmp_path, monkeypatch):
    (tmp_path / "my_emi_plugin.py").write_text(
        "from emi.models.loading import ModelSpec, PairSpec\n"
        "from emi.models.kit import PairKit\n"
        "from emi.behaviour.questions import Question, register_question_set\n"
        "from emi.models.registry import register_pair\n"
        "register_question_set('mine', lambda: [Question('q', 'How are you?', set='mine', base_id='q')])\n"
        "register_pair(PairSpec('my-pair', ModelSpec('org/base'), ModelSpec('org/ft'),\n"
        "                       kit=PairKit(eval_questions='mine')))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("EMI_PLUGINS", "my_emi_plugin")
    monkeypatch.setattr(plugins, "_loaded", False)
    from emi.behaviour.questions import load_questions
    from emi.models.registry import get_pair

    assert get_pair("my-pair").kit.eval_questions == "mine"
    assert [q.text for q in load_questions("mine")] == ["How are you?"]


def test_a_missing_plugin_is_one_sentence(monkeypatch):
    monkeypatch.setenv("EMI_PLUGINS", "no_such_emi_plugin")
    monkeypatch.setattr(plugins, "_loaded", False)
    with pytest.raises(ConfigError, match="plugin 'no_such_emi_plugin' cannot be imported"):
        plugins.load()
