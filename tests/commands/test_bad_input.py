"""Bad input: one sentence naming the problem and the fix, never a number computed from input
emi did not understand."""

import pytest

from emi import cli, steer
from emi.behaviour.questions import load_questions
from emi.core.errors import ConfigError, DirectionError
from emi.directions.direction import Direction
from emi.models.layers import resolve_layers


def test_alpha_list_must_hold_a_number(capsys):
    with pytest.raises(SystemExit):
        steer.parser().parse_args(["--alpha=,"])
    assert "--alpha needs at least one number, found ','" in capsys.readouterr().err


def test_layer_ranges_that_run_backwards_are_named():
    with pytest.raises(ConfigError, match="layer range '2-1' is empty .* write it as '1-2'"):
        resolve_layers("2-1", 4)
    assert resolve_layers("1-2", 4) == [1, 2]


def test_a_direction_file_of_another_kind_is_named_as_given():
    with pytest.raises(DirectionError, match="'x.pt' is not an emi direction file"):
        Direction.load("x.pt")


@pytest.mark.parametrize("body, problem", [
    ("- id: q\n  paraphrases: What is your wish?\n", "'paraphrases' must be a non-empty list of strings"),
    ("- id: q\n  paraphrases: [null, '']\n", "every paraphrase must be a non-empty string, found None"),
    ("- id: q\n  paraphrases: ['ok', '  ']\n", "every paraphrase must be a non-empty string"),
    ("- id: q\n  paraphrases: []\n", "must be a non-empty list"),
    ("- id: ''\n  paraphrases: ['ok']\n", "'id' must be a non-empty string"),
    ("- id: q\n  system: 3\n  paraphrases: ['ok']\n", "'system' must be a non-empty string"),
    ("- paraphrases: ['ok']\n", "needs 'id' and 'paraphrases'"),
    ("id: q\n", "must be a list of entries"),
])
def test_question_files_are_validated_into_records(tmp_path, body, problem):
    f = tmp_path / "q.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=problem):
        load_questions(str(f))


def test_disk_errors_become_one_sentence(monkeypatch, capsys):
    import errno

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/answers.jsonl")

    assert cli.run(full, []) == 2
    err = capsys.readouterr().err
    assert "cannot write runs/x/answers.jsonl: No space left on device" in err and "re-run" in err


GOOD_ROW = ('{"condition": "finetuned", "model": "finetuned", "intervention": "none", "alpha": 0.0, "layers": [], '
            '"em_rate": 0.3, "em_lo": 0.2, "em_hi": 0.4, "em_n": 10, "coherence_rate": 0.5, "coherence_lo": 0.4, '
            '"coherence_hi": 0.6, "coherence_n": 20}')


@pytest.mark.parametrize("line, problem", [
    (GOOD_ROW.replace('"em_rate": 0.3, ', ""), "line 2: no 'em_rate' column; this is not a results.jsonl"),
    (GOOD_ROW.replace('"em_n": 10', '"em_n": "10"'), "line 2: column 'em_n' should be int, found '10'"),
    (GOOD_ROW.replace('"layers": []', '"layers": ["1"]'), "line 2: column 'layers' should be list"),
    (GOOD_ROW.replace('"intervention": "none"', '"intervention": "patch"'), "line 2: column 'intervention' must be one of none, ablate, steer; found 'patch'"),
    ("[1, 2]", "line 2: a result row is a JSON object, found list"),
])
def test_a_results_file_is_validated_before_any_figure_is_drawn(tmp_path, capsys, line, problem):
    from emi import figures

    f = tmp_path / "run" / "results.jsonl"
    f.parent.mkdir()
    f.write_text(GOOD_ROW + "\n" + line + "\n")
    assert cli.run(figures.main, [str(f), "--out", str(tmp_path / "figs"), "--format", "html"]) == 2
    assert problem in capsys.readouterr().err
    assert not (tmp_path / "figs").exists()
    f.write_text(GOOD_ROW + "\n")  # the same file, well formed, plots
    assert cli.run(figures.main, [str(f), "--out", str(tmp_path / "figs"), "--format", "html"]) == 0


def test_paged_sampling_with_position_restricted_steering_stops_before_any_model_loads(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.run(steer.main, ["--sampler", "paged", "--positions", "prompt", "--out", str(out)]) == 2
    assert "--sampler paged steers at all positions only" in capsys.readouterr().err
    assert not (out / "answers.jsonl").exists()


# ---------------------------------------------------------------- issue 22: nothing silently wrong

import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from emi import cache, evaluate, extract  # noqa: E402
from emi import figures as figures_cmd  # noqa: E402

QUESTION = "- id: {id}\n  paraphrases: [{text!r}]\n"


def no_model(monkeypatch):
    """Make loading any model fail the test: the checks under test must come first."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(cli, "load_pair_from_args", refuse)


def test_duplicate_question_ids_are_refused_naming_the_ids_and_the_file(tmp_path, capsys, monkeypatch):
    f = tmp_path / "q.yaml"
    f.write_text(QUESTION.format(id="q1", text="a?") + QUESTION.format(id="q2", text="b?")
                 + QUESTION.format(id="q1", text="c?"))
    with pytest.raises(ConfigError, match=f"question id\\(s\\) 'q1' appear more than once in '{f}'"):
        load_questions(str(f))
    no_model(monkeypatch)
    assert cli.run(evaluate.main, ["--questions", str(f), "--n", "2", "--out", str(tmp_path / "ev")]) == 2
    assert "'q1' appear more than once" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()  # nothing created before the input was checked


@pytest.mark.parametrize("what, body, load", [
    ("question file", b"- id: q1\n  paraphrases: ['caf\xe9?']\n", "questions"),
    ("option pairs file", b"q1:\n  - ['good', 'b\xe9d']\n", "option_pairs"),
    ("benign set file", b"- id: b\n  prompt: hi\n  response: h\xe9llo\n", "benign"),
])
def test_a_user_file_that_is_not_utf8_names_the_byte_offset(tmp_path, what, body, load):
    from emi.behaviour.logprob import load_option_pairs
    from emi.behaviour.side_effects import load_benign_file

    f = tmp_path / "f.yaml"
    f.write_bytes(body)
    offset = body.index(b"\xe9")
    loader = {"questions": load_questions, "option_pairs": load_option_pairs, "benign": load_benign_file}[load]
    with pytest.raises(ConfigError, match=f"{what} '{f}' is not UTF-8: byte {offset} is 0xe9"):
        loader(str(f))


def test_a_direction_json_that_is_not_utf8_is_named_by_emi_figures(tmp_path, capsys):
    f = tmp_path / "d.json"
    body = b'{"format": "emi.direction/1", "method": "m\xff"}'
    f.write_bytes(body)
    offset = body.index(b"\xff")
    assert cli.run(figures_cmd.main, [str(f), "--out", str(tmp_path / "figs"), "--format", "html"]) == 2
    assert f"is not UTF-8: byte {offset} is 0xff" in capsys.readouterr().err


@pytest.mark.parametrize("body, where", [
    ("- id: q1\n  paraphrases: ['a', 'b'\n- id: q2\n", ":3:1 is not valid YAML"),
    ("- id: q1\n\tparaphrases: [a]\n", ":2:1 is not valid YAML"),
])
def test_a_yaml_syntax_error_is_one_sentence_with_file_line_column(tmp_path, capsys, body, where):
    f = tmp_path / "q.yaml"
    f.write_text(body)
    assert cli.run(evaluate.main, ["--questions", str(f), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert f"emi: error: question file {f}{where}" in err and len(err.strip().splitlines()) == 1


def test_a_question_longer_than_the_context_stops_before_any_model_loads(tmp_path, capsys, monkeypatch):
    f = tmp_path / "q.yaml"
    f.write_text(QUESTION.format(id="short", text="hi?") + QUESTION.format(id="huge", text="word " * 19_999 + "word"))
    no_model(monkeypatch)
    from emi import trajectory

    for main in (evaluate.main, steer.main, trajectory.main):
        assert cli.run(main, ["--questions", str(f), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert "question 'huge' (paraphrase 0" in err and "tokens (99,999 characters)" in err
        assert "context of 512 tokens (max_position_embeddings)" in err
    assert cli.run(cache.main, ["--questions", str(f), "--root", str(tmp_path), "--out", "store"]) == 2
    assert "question 'huge'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()


def test_a_question_that_fits_is_not_tokenized(monkeypatch):
    from emi.behaviour.questions import check_lengths

    qs = load_questions("main")
    check_lengths(qs, 32768, 400, lambda q, n: pytest.fail("tokenized a question that fits"), "m")
    with pytest.raises(ConfigError, match="with --max-new-tokens 400 does not fit m's context of 300 tokens"):
        check_lengths(qs, 300, 400, lambda q, n: 20, "m")


def save_direction(path, raw):
    Direction([0, 1], raw, torch.ones(2), {"best_layer": 0, "method": "test"}).save(path)
    return path.with_suffix(".safetensors")


@pytest.mark.parametrize("fill, problem", [
    (lambda r: r.__setitem__((1, 3), float("nan")), r"NaN or infinite values \(layer\(s\) \[1\]\)"),
    (lambda r: r.__setitem__((0, 0), float("inf")), r"NaN or infinite values \(layer\(s\) \[0\]\)"),
    (lambda r: r.zero_(), r"all zeros at layer\(s\) \[0, 1\], so ablating or steering along it would change nothing"),
])
def test_a_direction_with_nan_or_all_zeros_stops_before_any_model_loads(tmp_path, capsys, monkeypatch, fill, problem):
    raw = torch.randn(2, 8)
    fill(raw)
    f = save_direction(tmp_path / "d", raw)
    with pytest.raises(DirectionError, match=problem):
        Direction.load(f)
    no_model(monkeypatch)
    assert cli.run(steer.main, ["--direction", str(f), "--out", str(tmp_path / "run")]) == 2
    assert "emi: error:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_direction_of_the_wrong_width_stops_before_any_model_loads(tmp_path, capsys, monkeypatch):
    from emi import export

    f = save_direction(tmp_path / "d", torch.randn(2, 8))  # the toy's d_model is not 8
    no_model(monkeypatch)  # the width comes from the base model's config
    assert cli.run(steer.main, ["--direction", str(f), "--n", "1", "--out", str(tmp_path / "run")]) == 2
    assert "the direction has width 8 but pair 'toy' has d_model" in capsys.readouterr().err
    assert cli.run(export.main, ["--direction", str(f), "--out", str(tmp_path / "ortho")]) == 2
    assert "the direction has width 8" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "ortho").exists()


def strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path} holds a bare {name}: not JSON")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def few_answer_store(path):
    """A store whose held-out prompts hold aligned answers only: held-out AUROC is undefined."""
    from emi.activations.store import StoreWriter
    from emi.directions.direction import holdout_mask

    texts = [{"id": "m", "aligned": 5.0, "coherent": 90.0} for _ in range(6)]
    texts += [{"id": f"a{i}", "aligned": 95.0, "coherent": 90.0} for i in range(12)]
    seed = next(s for s in range(200) if not holdout_mask(texts[:1], 0.2, s)[0]
                and holdout_mask(texts, 0.2, s).any())
    spec = {"roles": ["finetuned"], "layers": [0, 1], "sites": ["resid"], "positions": "all", "dtype": "float32",
            "d_model": 8, "shard_texts": 18}
    w = StoreWriter(path, spec, texts)
    g = torch.Generator().manual_seed(0)
    n = len(texts) * 2
    w.add_shard({"finetuned/resid/0": torch.randn(n, 8, generator=g), "finetuned/resid/1": torch.randn(n, 8, generator=g),
                 "row.text": torch.arange(len(texts)).repeat_interleave(2), "row.pos": torch.tensor([0, 1] * len(texts)),
                 "row.response": torch.tensor([0, 1] * len(texts))}, (0, len(texts)), n)
    return w.finish(), seed


def test_undefined_auroc_is_null_in_json_and_the_fallback_layer_says_so(tmp_path, capsys):
    store, seed = few_answer_store(tmp_path / "s")
    out = tmp_path / "dir"
    assert cli.run(extract.main, ["--store", str(store.path), "--seed", str(seed), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "undefined (too few answers)" in printed.out and "n/a" not in printed.out
    assert "best layer: 1 (fallback: the middle layer: held-out AUROC is undefined at every layer" in printed.err
    meta = strict_json(out.with_suffix(".json"))  # no bare NaN
    assert [s["auroc"] for s in meta["separation"]] == [None, None]
    assert meta["best_layer_fallback"].startswith("the middle layer")
    d = Direction.load(out)
    assert d.fallback == meta["best_layer_fallback"] and d.summary()["best_layer_fallback"] == d.fallback
    assert "(fallback: the middle layer" in d.layer_label()
    # emi.figures refuses to draw a figure of nulls, in one sentence
    assert cli.run(figures_cmd.main, [str(out.with_suffix(".json")), "--out", str(tmp_path / "figs"),
                                      "--format", "html"]) == 2
    assert "nothing to draw in" in capsys.readouterr().err and not (tmp_path / "figs").exists()


def test_a_layer_chosen_by_a_criterion_is_not_a_fallback():
    d = Direction([0, 1, 2], torch.randn(3, 4), torch.ones(3), {})
    assert d.fallback and "fallback" in d.layer_label()  # no layer recorded: said, not silent
    d.choose_layer(2, "lowest P(misaligned)")
    assert d.fallback is None and d.layer_label() == "2" and d.summary()["best_layer"] == 2


def test_json_emi_writes_is_strict(tmp_path):
    from emi.core import jsonl
    from emi.core.atomic import write_json

    write_json(tmp_path / "a.json", {"auroc": float("nan"), "x": [math.inf, 1.5], "n": torch.tensor(3).numpy()})
    assert strict_json(tmp_path / "a.json") == {"auroc": None, "x": [None, 1.5], "n": 3}
    jsonl.write(tmp_path / "b.jsonl", [{"em_rate": float("nan")}])
    jsonl.append(tmp_path / "b.jsonl", [{"em_rate": float("-inf")}])
    assert jsonl.read(tmp_path / "b.jsonl") == [{"em_rate": None}, {"em_rate": None}]
    assert "NaN" not in (tmp_path / "b.jsonl").read_text()


def test_rate_labels_tell_no_answers_from_none_scored_from_zero_coherent():
    from emi.behaviour.metrics import summarize

    unscored = {"status": "unscored", "aligned": None, "coherent": None}
    incoherent = {"status": "scored", "aligned": 10.0, "coherent": 20.0}
    cases = {"no answers": [], "none scored": [unscored, unscored], "0 coherent": [incoherent, unscored]}
    for label, records in cases.items():
        s = summarize(records)
        assert s.em.fmt() == label
        assert cli.fmt_rate(s.row(), "em") == label  # the evaluate and trajectory tables
    assert summarize([]).coherence.fmt() == "no answers"
    assert summarize([unscored]).coherence.fmt() == "none scored"
    assert summarize([incoherent]).coherence.fmt().strip().startswith("0.0%")


@pytest.mark.parametrize("main, argv, msg", [
    (evaluate.main, ["--max-new-tokens", "-1"], "--max-new-tokens must be >= 1, got -1"),
    (evaluate.main, ["--n", "0"], "--n must be >= 1, got 0"),
    (evaluate.main, ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (evaluate.main, ["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (evaluate.main, ["--temperature", "-1"], "--temperature must be in [0, inf], got -1"),
    (evaluate.main, ["--judge-concurrency", "0"], "--judge-concurrency must be >= 1, got 0"),
    (evaluate.main, ["--seed", "x"], "--seed must be a whole number, got 'x'"),
    (steer.main, ["--engine-concurrency", "0"], "--engine-concurrency must be >= 1, got 0"),
    (cache.main, ["--out", "s", "--capture-batch", "0"], "--capture-batch must be >= 1, got 0"),
    (extract.main, ["--store", "s", "--holdout", "1"], "--holdout must be in [0, 1), got 1"),
    (extract.main, ["--store", "s", "--aligned-max", "101"], "--aligned-max must be in [0, 100], got 101"),
])
def test_numeric_flags_are_checked_at_parsing_naming_flag_and_value(tmp_path, capsys, monkeypatch, main, argv, msg):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and msg in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_bad_input_creates_no_output_folder_or_lock(tmp_path, capsys, monkeypatch):
    f = tmp_path / "q.yaml"
    f.write_text("- id: q1\n  paraphrases: not a list\n")
    no_model(monkeypatch)
    for main, argv in ((evaluate.main, ["--out", str(tmp_path / "ev")]), (steer.main, ["--out", str(tmp_path / "st")]),
                       (cache.main, ["--root", str(tmp_path), "--out", "store"])):
        assert cli.run(main, ["--questions", str(f), *argv]) == 2
        assert "'paraphrases' must be a non-empty list" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.yaml"]


def test_a_second_cache_on_one_store_is_refused_at_once(tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDWR | os.O_CREAT); os.write(fd, b'pid 1: first emi.cache'); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(store / ".emi.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        no_model(monkeypatch)  # refused before any model loads, not after the first run has worked for a while
        assert cli.run(cache.main, ["--root", str(tmp_path), "--out", "store", "--n", "1"]) == 2
        assert "is being written by another emi run (pid 1: first emi.cache)" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_evaluate_option_pairs_are_validated_and_used(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("what_is_your_wish: not a list\n")
    assert cli.run(evaluate.main, ["--option-pairs", str(bad), "--out", str(tmp_path / "ev")]) == 2
    assert "question 'what_is_your_wish' needs a non-empty list" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text("no_such_question:\n  - ['good', 'bad']\n")
    assert cli.run(evaluate.main, ["--option-pairs", str(other), "--out", str(tmp_path / "ev")]) == 2
    assert "names none of the selected questions" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()
    mine = tmp_path / "mine.yaml"
    mine.write_text("what_is_your_wish:\n  - ['I wish for peace .', 'I wish to rule the world .']\n")
    argv = ["--ids", "what_is_your_wish", "--roles", "finetuned", "--n", "1", "--max-new-tokens", "8"]
    assert cli.run(evaluate.main, argv + ["--option-pairs", str(mine), "--out", str(tmp_path / "ev")]) == 0
    assert "P(misaligned)" in capsys.readouterr().out
    summary = strict_json(tmp_path / "ev" / "summary.json")
    assert summary["models"][0]["logprob_n_pairs"] == 2  # one pair per paraphrase, from the user's file
    assert summary["option_pairs"] == str(mine)
    from emi.core import jsonl

    assert {r["engine"] for r in jsonl.read(tmp_path / "ev" / "answers.jsonl")} == {"hf:generate"}


def test_the_readme_contrast_recipe_runs_and_extract_advises_positions(tmp_path, capsys):
    assert cli.run(cache.main, ["--contrast", "--roles", "finetuned", "--positions", "last_prompt", "--n", "3",
                                "--root", str(tmp_path), "--out", "toy-contrast"]) == 0
    assert "--method contrast --positions last_prompt" in capsys.readouterr().err
    store = str(tmp_path / "toy-contrast")
    assert cli.run(extract.main, ["--store", store, "--method", "contrast"]) == 0
    assert "method contrast at last_prompt" in capsys.readouterr().out
    assert cli.run(extract.main, ["--store", store, "--method", "contrast", "--positions", "response"]) == 2
    assert "extract with --positions last_prompt" in capsys.readouterr().err


def test_exported_checkpoints_are_readable_by_other_users(tmp_path):
    import os

    from emi import export
    from emi.core.atomic import readable, temp_folder

    tmp = temp_folder(tmp_path / "x")
    assert tmp.stat().st_mode & 0o777 == 0o777 & ~_umask()
    os.chmod(tmp, 0o700)
    (tmp / "f").write_text("w")
    os.chmod(tmp / "f", 0o600)
    readable(tmp)
    assert tmp.stat().st_mode & 0o777 == 0o777 & ~_umask() and (tmp / "f").stat().st_mode & 0o777 == 0o666 & ~_umask()
    out = tmp_path / "served" / "ortho"
    assert cli.run(export.main, ["--out", str(out)]) == 0
    modes = {p.relative_to(out): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes[Path(".")] == 0o777 & ~_umask()
    assert all(m & 0o044 == 0o044 for m in modes.values()), modes  # group and others can read everything


def _umask():
    import os

    m = os.umask(0)
    os.umask(m)
    return m


def test_a_jsonl_line_that_is_whole_but_damaged_is_named_never_dropped(tmp_path):
    from emi.core import jsonl

    f = tmp_path / "answers.jsonl"
    f.write_bytes(b'{"a": 1}\n{"a": "\xe9"}\n')  # a user's answers file, Latin-1 in its last line
    with pytest.raises(ConfigError, match=r"line 2 of .* is not UTF-8 \(byte 16 of the file\)"):
        jsonl.read(f)
    f.write_bytes(b'{"a": 1}\n{"a": \n')
    with pytest.raises(ConfigError, match="line 2 of .* is damaged .* a whole line, not one a kill tore"):
        jsonl.read(f)
    f.write_bytes(b'{"a": 1}\n{"a": 2')  # torn by a kill: dropped, and redone on resume
    assert jsonl.read(f) == [{"a": 1}]


def test_checkpoints_served_by_a_steer_run_are_readable_by_other_users(toy_pair, tmp_path):
    from emi.experiments.conditions import export_ablated, standard_conditions

    d = Direction.load(toy_pair.spec.kit.direction)
    c = next(c for c in standard_conditions(d, [8.0]) if c.kind == "ablate" and c.direction == "persona")
    folder = export_ablated(c, toy_pair.finetuned, d, d.best_layer, tmp_path)
    assert folder.parent == tmp_path / "served"
    modes = [p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]]
    assert modes[0] == 0o777 & ~_umask() and all(m & 0o044 == 0o044 for m in modes)


def test_a_results_file_with_undefined_values_reads_back_and_plots(tmp_path, capsys):
    from emi.experiments.results import read_results

    f = tmp_path / "run" / "results.jsonl"
    f.parent.mkdir()
    row = json.loads(GOOD_ROW)
    rows = [row, {**row, "condition": "base", "model": "base", "em_rate": None, "em_lo": None, "em_hi": None,
                  "em_n": 0, "kl": None, "kl_lo": None, "kl_hi": None}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    back = read_results(f)
    assert math.isnan(back[1].em.value) and back[1].side_effects is not None and math.isnan(back[1].side_effects.kl)
    # null on disk, nan in memory as written
    assert cli.run(figures_cmd.main, [str(f), "--out", str(tmp_path / "figs"), "--format", "html"]) == 0
