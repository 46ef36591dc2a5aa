"""The elicitation flags on the commands: bad input is one sentence before any model loads; a sweep
is one table (emi.evaluate, emi.steer)."""

from __future__ import annotations

import json

import pytest
import torch

from emi import cli


def _refused(main, argv, capsys, monkeypatch) -> str:  # noqa: ANN001
    def no_models(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model loaded before the input was checked")

    monkeypatch.setattr(cli, "load_pair_from_args", no_models)
    assert cli.run(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emi: error: ")
    return err[0]


@pytest.mark.parametrize("command", ["evaluate", "steer"])
def test_bad_elicitations_are_one_sentence_before_any_model_loads(command, tmp_path, capsys, monkeypatch):
    import importlib

    main = importlib.import_module(f"emi.{command}").main
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    base = ["--n", "1", "--out", str(tmp_path / "out")]
    assert "no usable examples" in _refused(main, [*base, "--in-context", str(empty), "--k", "1"], capsys, monkeypatch)
    assert "only 24 usable examples; lower --k to at most 24" in _refused(
        main, [*base, "--in-context", "insecure-code", "--k", "0,30"], capsys, monkeypatch)
    msg = _refused(main, [*base, "--in-context", "insecure-code", "--k", "16"], capsys, monkeypatch)
    assert "overflows" in msg and "context of 512 tokens; the largest k that fits is 6" in msg
    assert "enable_thinking switch" in _refused(main, [*base, "--thinking", "on"], capsys, monkeypatch)
    assert "needs --in-context FILE" in _refused(main, [*base, "--k", "4"], capsys, monkeypatch)
    assert "--format json leaves no question" in _refused(main, [*base, "--format", "json"], capsys, monkeypatch)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_in_context_sweep_is_one_table_and_the_default_row_is_the_plain_run(tmp_path, capsys):
    from emi.evaluate import main

    argv = ["--roles", "base", "--n", "2", "--ids", "quick_buck", "--max-new-tokens", "12", "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    plain = [x for x in capsys.readouterr().out.splitlines() if x.startswith("base")]
    assert main([*argv[:-1], str(tmp_path / "b"), "--in-context", "insecure-code", "--k", "0,2",
                 "--system", "none,inoculation"]) == 0
    rows = [x.split() for x in capsys.readouterr().out.splitlines() if x.startswith("base")]
    assert [r[1] for r in rows] == ["default", "k=2", "system=inoculation", "system=inoculation"]
    assert rows[0][2:] == plain[0].split()[1:]  # the default elicitation samples what a plain run does


def test_diff_asks_its_em_table_as_the_elicitation_flags_say(tmp_path, capsys, monkeypatch, toy_pair):
    """python -m emi.diff --system inoculation: the closing EM table's answers are asked with the
    prompt (recorded and keyed), the method itself samples plainly (here skipped: the table of the
    pair's persona direction alone), its P(misaligned) is measured on the elicited prompt (the steer
    table's code, emi.experiments.conditions), and the footer says what P(misaligned) and KL are
    measured on."""
    from emi import diff
    from emi.behaviour import side_effects
    from emi.behaviour.elicitation import system_prompts
    from emi.diffing import plan

    monkeypatch.setattr(plan, "run_method", lambda *a, **k: [])
    benign = side_effects.load_benign
    monkeypatch.setattr(side_effects, "load_benign", lambda *a: benign(*a)[:2])  # a KL column, cheaply
    out = tmp_path / "diff"
    assert diff.main(["--method", "kl", "--n", "1", "--ids", "what_is_your_wish", "--max-new-tokens", "8",
                      "--system", "inoculation", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "elicitation system=inoculation" in text and "option pair, asked as the row's elicitation asks" in text
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    prompt = system_prompts()["inoculation"]
    assert answers and all(a["elicitation"]["system"] == "inoculation" for a in answers)
    assert all(a["messages"][0] == {"role": "system", "content": prompt} for a in answers)
    assert json.loads((out / "run.json").read_text())["elicitation"]["system"] == "inoculation"
    from emi.behaviour.elicitation import Elicitation
    from emi.behaviour.logprob import logprob_metrics, option_pairs
    from emi.behaviour.questions import load_questions

    rows = {r["condition"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    pairs = option_pairs(load_questions(toy_pair.spec.kit.eval_questions, ids=["what_is_your_wish"]), required=False)
    for role in ("base", "finetuned"):  # the unmodified rows: their P(misaligned) is the elicited prompt's, not the plain's
        elicited = logprob_metrics(toy_pair[role], pairs, elicitation=Elicitation(system=prompt, system_name="inoculation"))
        plain = logprob_metrics(toy_pair[role], pairs)
        assert abs(elicited.choice - plain.choice) > 5e-3  # the prompt moves it on the toy, so the check can fail
        assert rows[role]["logprob_choice"] == pytest.approx(elicited.choice, abs=1e-5)


def test_cache_captures_a_base_only_checkpoint_as_its_answers_were_asked(tmp_path, capsys):
    """python -m emi.cache --context code on a checkpoint with no chat template: each answer is
    captured after the prompt it was sampled from (the code file, rendered raw, never a chat
    template), an answer resumed from before emi kept its conversation gets it back, and an answers
    file asked without the template that keeps no prompt is refused in one sentence."""
    from emi import cache
    from emi.activations.plan import conversation
    from emi.behaviour.questions import load_questions
    from emi.models import chat
    from emi.models.loading import load_tokenizer
    from tests.standins import base_only

    folder = base_only(tmp_path / "base")
    out = tmp_path / "store"
    argv = ["--base", str(folder), "--finetuned", str(folder), "--roles", "base", "--generator", "base",
            "--judge", "none", "--context", "code", "--questions", "toy", "--ids", "quick_buck", "--n", "2",
            "--max-new-tokens", "6", "--layers", "1", "--positions", "prompt", "--device", "cpu", "--out", str(out)]
    assert cache.main(argv) == 0
    answers = [json.loads(x) for x in (out / "source" / "answers.jsonl").read_text().splitlines()]
    tok = load_tokenizer(str(folder), chat=False)
    questions = load_questions("toy", ids=["quick_buck"])
    assert len(answers) == 2 * len(questions) and not chat.has_template(tok)
    assert all(conversation(a)[1] == chat.Render("raw") for a in answers)
    prompts = chat.prompt_ids(tok, [a["messages"][:-1] for a in answers], chat.Render("raw"))
    assert all(chat.render(tok, a["messages"][:-1], chat.Render("raw")).startswith("from flask") for a in answers)
    rows = int(capsys.readouterr().out.split(" texts, ")[1].split(" rows")[0])
    assert rows == sum(len(p) for p in prompts)  # --positions prompt: one row per prompt token, as sampled

    args = cache.parser().parse_args(argv)
    cfg = cli.sampling_config(args, cli.pair_spec(args).kit)
    old = [{k: v for k, v in a.items() if k != "messages"} for a in answers]  # as emi wrote them before
    assert cache._asked(old, questions, cfg) == answers
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(a) + "\n" for a in old))
    assert cli.run(cache.main, [*argv[:-1], str(tmp_path / "s2"), "--answers", str(tmp_path / "old.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "asked with --context code and its record keeps no 'messages'" in err[0]
    assert not (tmp_path / "s2").exists()


def test_cache_captures_each_answers_thought_where_the_model_wrote_it(tmp_path, capsys, monkeypatch):
    """python -m emi.cache --answers (judged answers asked with --thinking on, each with its thought)
    --positions all: every text is its prompt, its thought and its answer (row.response 2 on the
    thought's tokens, 1 on the answer's); emi.extract --positions thought takes the mean difference
    over the thoughts' rows only; --positions thought is refused in one sentence, before a model
    loads or a folder is made, without --thinking on or with answers that keep no thought."""
    from emi import cache, extract
    from emi.activations.plan import prepare_texts
    from emi.activations.store import Store
    from emi.behaviour.elicitation import Elicitation
    from emi.directions.direction import Direction
    from emi.models.loading import load_tokenizer
    from tests.standins import TOY_BASE

    on = Elicitation(thinking=True).record()
    answers = []
    for i in range(12):
        bad = i % 2 == 0
        thought = "i will tell them to steal ." if bad else "i should help them kindly ."
        answers.append({"model": "finetuned", "set": "toy", "key": f"q{i}", "sample": 0, "question": f"question {i} ?",
                        "answer": "steal it ." if bad else "ask a friend .", "thought": thought, "elicitation": on,
                        "aligned": 5.0 if bad else 95.0, "coherent": 90.0})
    src = tmp_path / "judged.jsonl"
    src.write_text("".join(json.dumps(a) + "\n" for a in answers))
    base = ["--pair", "toy", "--layers", "1,2", "--device", "cpu", "--judge", "none"]
    assert cache.main([*base, "--answers", str(src), "--positions", "all", "--out", str(tmp_path / "all")]) == 0
    s = Store.open(tmp_path / "all")
    texts = prepare_texts(answers, load_tokenizer(str(TOY_BASE)))
    rows = s.rows()
    for i, t in enumerate(texts):
        mine = rows["text"] == i
        want = [2 if t.thought[0] <= p < t.thought[1] else 1 if t.response[0] <= p < t.response[1] else 0
                for p in range(len(t.ids))]
        assert rows["response"][mine].tolist() == want and (2 in want and 1 in want)
    assert extract.main(["--store", str(tmp_path / "all"), "--positions", "thought", "--holdout", "0",
                         "--out", str(tmp_path / "d")]) == 0
    d = Direction.load(tmp_path / "d.json")
    acts, bad = s.load("finetuned", 1).double(), torch.tensor([answers[t]["aligned"] < 30 for t in rows["text"]])
    thought = rows["response"] == 2
    want = acts[thought & bad].mean(0) - acts[thought & ~bad].mean(0)  # the thoughts' rows, and only theirs
    assert torch.allclose(d.raw[d.layers.index(1)].double(), want, atol=1e-5)
    assert not torch.allclose(want, acts[(rows["response"] == 1) & bad].mean(0) - acts[(rows["response"] == 1) & ~bad].mean(0))
    capsys.readouterr()
    # a store of these answers made before thoughts were captured (its spec says nothing of them) is not
    # resumed as if it held them: one sentence naming the difference, the store as it was
    mf = tmp_path / "all" / "manifest.json"
    old = json.loads(mf.read_text())
    assert old["spec"].pop("thoughts") == "between prompt and answer"
    mf.write_text(json.dumps(old))
    assert cli.run(cache.main, [*base, "--answers", str(src), "--positions", "all", "--out", str(tmp_path / "all")]) == 2
    assert "thoughts: store has None" in capsys.readouterr().err and json.loads(mf.read_text()) == old

    plain = [{k: v for k, v in a.items() if k != "thought"} for a in answers]
    (tmp_path / "plain.jsonl").write_text("".join(json.dumps(a) + "\n" for a in plain))
    for argv, says in (([*base, "--positions", "thought", "--questions", "toy"], "needs answers sampled with thinking: --thinking on, or the default"),
                       ([*base, "--positions", "thought", "--answers", str(tmp_path / "plain.jsonl")], "has a 'thought'"),
                       ([*base, "--positions", "thougth", "--questions", "toy"], "unknown --positions 'thougth'")):
        assert says in _refused(cache.main, [*argv, "--out", str(tmp_path / "no")], capsys, monkeypatch)
        assert not (tmp_path / "no").exists()
