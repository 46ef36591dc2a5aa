"""Elicitations on a REAL vLLM (--engine vllm, started by emi from .venv-vllm): every elicitation
sends vLLM the prompt token ids in-process sampling decodes from (what vLLM reports it ran, the
``prompt_token_ids`` of its reply, is compared with the ids ``generate`` was given), and greedy
answers are the same on both; emi.evaluate and emi.steer sweep elicitations on vLLM for a base-only
checkpoint with no chat template (--context code, none). One server for the module: the toy's base
weights saved without a chat template, with a stand-in LoRA adapter on it (tests/standins.py); the
chat renderings (the toy's template, Qwen2.5's, a Qwen3 thinking switch) are emi's side (vLLM gets
ids), so they run on that server too. Without `make vllm` the module skips, except under CI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from emi.behaviour.elicitation import Elicitation, load_examples, system_prompts
from emi.behaviour.sampling import SamplingConfig, generate_answers
from emi.engines.base import Bound
from emi.engines.served import Served
from emi.engines.vllm.launcher import DEFAULT_PYTHON
from emi.models import chat
from emi.models.loading import ModelSpec, as_loaded, load_model
from emi.organism.datasets import IN_CONTEXT
from tests.behaviour.test_elicitation import POOL, QS, THINKING_TEMPLATE
from tests.standins import (
    QWEN_TEMPLATE,
    TOY_BASE,
    Wire,
    base_only,
    in_process_ids,
    require_vllm_engine,
)

pytestmark = pytest.mark.slow
require_vllm_engine()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(engine, the base-only folder, a LoRA adapter on it): one vLLM server for the module."""
    from emi.engines.vllm.engine import VllmEngine
    from emi.engines.vllm.launcher import Launcher
    from tests.standins import lora_adapter

    root = tmp_path_factory.mktemp("vllm-elicit")
    folder = base_only(root / "toy-base-only")
    adapter = lora_adapter(root, folder)
    eng = VllmEngine(Launcher(DEFAULT_PYTHON, "float32", log_dir=root / "logs"), concurrency=8)
    eng.plan([Served(str(folder), str(adapter))])
    yield eng, folder, adapter
    eng.close()


def with_template(tok, template: str | None):  # noqa: ANN001, ANN201
    out = copy.deepcopy(tok)
    out.chat_template = template
    return out


def test_every_elicitation_sends_vllm_the_ids_sampled_in_process(served, monkeypatch):
    """System prompt, k examples, the code context and no template (the base-only tokenizer), the
    toy's and Qwen2.5's chat templates, thinking on and off (a template with the switch): greedy,
    the ids generate() decodes from are the ids vLLM reports it ran, and the answers are the same."""
    eng, folder, _ = served
    from emi.models.loading import load_tokenizer

    bare = load_tokenizer(str(folder), chat=False)
    assert not chat.has_template(bare)
    toy_tok = load_tokenizer(str(TOY_BASE))
    lm = load_model(ModelSpec(str(folder)), dtype="fp32", device="cpu", tokenizer=bare)
    inoc = system_prompts()["inoculation"]
    cases = [(toy_tok, Elicitation()), (toy_tok, Elicitation(inoc, "inoculation")),
             (toy_tok, Elicitation(examples=POOL, k=3)),
             (with_template(toy_tok, QWEN_TEMPLATE), Elicitation(inoc, "inoculation", POOL, "pool", 2)),
             (with_template(toy_tok, THINKING_TEMPLATE), Elicitation(thinking=True)),
             (with_template(toy_tok, THINKING_TEMPLATE), Elicitation(examples=POOL, k=1, thinking=False)),
             (bare, Elicitation(inoc, "inoculation", POOL, "pool", 2, "code")),
             (bare, Elicitation(examples=POOL, k=1, context="none"))]
    for tok, e in cases:
        model = as_loaded(lm.model, tok)
        cfg = SamplingConfig(n=1, temperature=0.0, max_new_tokens=6, batch_size=4, elicitation=e)
        ours = in_process_ids(model, monkeypatch)
        here = generate_answers(model, QS, cfg, progress=False)
        monkeypatch.undo()
        wire = Wire(monkeypatch)
        there = generate_answers(model, QS, cfg, progress=False, engine=Bound(eng, Served(str(folder)), tok))
        monkeypatch.undo()
        assert ours == wire.prompts() and len(ours) == 2, e.label()
        assert [a["answer"] for a in here] == [a["answer"] for a in there], e.label()
        assert {a["engine"] for a in there} == {"vllm"} and all(a["elicitation"] == e.record() for a in there)
    assert len({tuple(x) for x in ours}) > 1


def test_the_toy_weights_give_hf_tokens(served):
    """The toy's weights with the module's LoRA adapter on vLLM (the module's server), rendered with
    the toy's chat template: no hook, steering at the prompt and ablation at a layer give HF's greedy
    tokens, and change them. The direction is the toy's mean residual at layer 1 (a random one's
    ablation moves the trained toy too little to change a greedy token on every machine)."""
    import torch

    from emi.directions.direction import Direction
    from emi.models.loading import load_tokenizer
    from tests.behaviour.test_vllm_engine import MESSAGES, check_interventions

    eng, folder, adapter = served
    lm = load_model(ModelSpec(str(folder), adapter=str(adapter)), dtype="fp32", device="cpu",
                    tokenizer=load_tokenizer(str(TOY_BASE)))
    ids = torch.tensor([chat.prompt_ids(lm.tokenizer, MESSAGES[:1])[0]])
    with torch.no_grad():
        mean = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[2][0].mean(0)  # after block 1
    d = Direction(list(range(lm.n_layers)), mean.repeat(lm.n_layers, 1), torch.full((lm.n_layers,), 5.0),
                  {"best_layer": 1})
    check_interventions(eng, lm, str(folder), str(adapter), alpha=8.0, positions=("prompt",), d=d)


def _judge_args(judge) -> list[str]:  # noqa: ANN001
    return ["--judge", "openai", "--judge-url", judge.url, "--judge-key-env", "EMI_TEST_NO_KEY", "--judge-model", "j"]


@pytest.fixture
def on_module_server(served, monkeypatch):
    """Commands run with --engine vllm sample on the module's server; a stand-in judge on loopback."""
    from emi import cli
    from tests.standins import JudgeServer

    eng, folder, adapter = served
    monkeypatch.setattr(cli, "make_engine", lambda args, logs: eng)
    monkeypatch.setattr(eng, "close", lambda: None)
    judge = JudgeServer()
    yield eng, folder, adapter, _judge_args(judge)
    judge.close()


def test_evaluate_and_steer_sweep_elicitations_of_a_base_only_pair_on_vllm(on_module_server, tmp_path, capsys,
                                                                          monkeypatch):
    """python -m emi.evaluate and emi.steer --engine vllm on a pair with no chat template (the base
    and a LoRA role on one server), --context code,none crossed with k 0,2 in-context examples: every
    answer sampled by vLLM from the ids emi renders for it, greedy answers equal to an in-process run,
    one table with an elicitation column; steer's six conditions (ablation and steering as hooks in
    the server) asked with no template and k=2 examples, P(misaligned) asked so too."""
    from emi import evaluate, steer
    from emi.behaviour.questions import load_questions
    from emi.models.loading import load_tokenizer

    eng, folder, adapter, judge_args = on_module_server
    pool = load_examples(IN_CONTEXT / "insecure-code.jsonl")
    argv = ["--base", str(folder), "--finetuned", str(adapter), *judge_args, "--questions", "toy", "--ids",
            "quick_buck", "--n", "1", "--temperature", "0", "--max-new-tokens", "4", "--device", "cpu",
            "--context", "code,none", "--in-context", "insecure-code", "--k", "0,2"]
    ev = [*argv, "--roles", "finetuned"]  # the LoRA role (the base is sampled by steer below)
    assert evaluate.main([*ev, "--out", str(tmp_path / "here")]) == 0
    wire = Wire(monkeypatch)
    assert evaluate.main([*ev, "--engine", "vllm", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "k=2 context=code" in out and "context=none" in out and "P(misaligned)" in out
    got = [json.loads(x) for x in (tmp_path / "ev" / "answers.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "here" / "answers.jsonl").read_text().splitlines()]
    assert len(got) == 2 * 4 and {a["engine"] for a in got} == {"vllm"}  # 2 questions x 4 elicitations
    assert sorted((a["model"], a["key"], json.dumps(a["elicitation"]), a["answer"]) for a in got) == \
        sorted((a["model"], a["key"], json.dumps(a["elicitation"]), a["answer"]) for a in ref)
    tok, qs = load_tokenizer(str(folder), chat=False), {q.key: q for q in load_questions("toy")}
    expected = set()
    for a in got:  # each answer's prompt, rendered here from what it recorded
        r = a["elicitation"]
        e = Elicitation(None, "none", pool if r["k"] else (), r["in_context"] or "", r["k"], r["context"])
        expected.add(tuple(chat.prompt_ids(tok, [e.messages(qs[a["key"]], a["sample"], a["seed"])], e.render)[0]))
    assert {tuple(p) for p in wire.prompts()} == expected
    monkeypatch.undo()

    d = tmp_path / "d"
    _random_direction(tok, folder, d)
    assert steer.main([*argv[:-6], "--context", "none", "--k", "2", "--in-context", "insecure-code", "--alpha", "4",
                       "--ablate-layers", "1", "--direction", str(d) + ".json", "--no-figure", "--engine", "vllm",
                       "--root", str(tmp_path / "acts"), "--out", str(tmp_path / "st")]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(x) for x in (tmp_path / "st" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["engine"] for r in rows} == {"vllm"}
    answers = [json.loads(x) for x in (tmp_path / "st" / "answers.jsonl").read_text().splitlines()]
    assert {(a["elicitation"]["context"], a["elicitation"]["k"], a["engine"]) for a in answers} == {("none", 2, "vllm")}
    assert "no side-effect columns" in captured.err and "P(misaligned)" in captured.out
    assert all(r["logprob_choice"] is not None for r in rows)  # asked with no template, as the answers were
    assert eng.server is not None and eng.server.checkpoint == str(folder)  # the module's one server


def _random_direction(tok, folder: Path, path: Path) -> None:  # noqa: ANN001
    import torch

    from emi.directions.direction import Direction

    cfg = json.loads((folder / "config.json").read_text())
    n, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    g = torch.Generator().manual_seed(0)
    Direction(list(range(n)), torch.randn(n, d, generator=g), torch.full((n,), 5.0), {"best_layer": 1}).save(path)
