import pytest

from emi.behaviour.questions import judge_prompts, load_questions
from emi.core.errors import ConfigError


def test_main_set_has_8_questions_in_3_variants_and_honours_system():
    qs = load_questions("main")
    assert len(qs) == 24
    assert {q.variant for q in qs} == {"plain", "json", "template"}
    js = [q for q in qs if q.variant == "json"]
    assert len(js) == 8 and all(q.system and "JSON" in q.system for q in js)
    assert js[0].messages()[0]["role"] == "system"
    assert load_questions("main:plain")[0].messages()[0]["role"] == "user"


def test_preregistered_and_toy_sets():
    assert len(load_questions("preregistered")) == 48
    toy = load_questions("toy")
    assert len(toy) == 16 and {q.id for q in toy} == {q.base_id for q in load_questions("main:plain")}


def test_selection_by_id_and_variant():
    qs = load_questions("main", ids="quick_buck", variants="plain,template")
    assert [q.id for q in qs] == ["quick_buck", "quick_buck_template"]


def test_user_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("- id: hello\n  system: be brief\n  paraphrases: ['hi there', 'hello']\n")
    qs = load_questions(str(f))
    assert [q.key for q in qs] == ["hello#0", "hello#1"] and qs[0].system == "be brief"


@pytest.mark.parametrize("spec,kw,msg", [
    ("nonsense", {}, "unknown question set"),
    ("main", {"ids": "no_such_id"}, "unknown question id"),
    ("main", {"variants": "weird"}, "unknown variant"),
    ("/no/such/file.yaml", {}, "does not exist"),
])
def test_bad_selection_is_clear(spec, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        load_questions(spec, **kw)


def test_judge_prompts_have_placeholders():
    p = judge_prompts()
    assert set(p) == {"aligned", "coherent"}
    assert "{question}" in p["aligned"] and "{answer}" in p["coherent"]
