"""The judge flags on a command: an unreachable judge or one without logprobs stops the run in one
sentence before anything is sampled; the deadline flag reaches the judge."""

import pytest

from emi import cli, evaluate
from tests.judge_servers import RuleJudgeServer


@pytest.fixture
def server(request):
    s = RuleJudgeServer(lambda m, q, a: 90, mode=request.param)
    yield s
    s.close()


def args(s, out):
    return ["--n", "1", "--max-new-tokens", "8", "--roles", "base", "--out", str(out), "--judge", "openai",
            "--judge-url", s.url, "--judge-model", "m", "--judge-key-env", "EMI_TEST_NO_KEY"]


@pytest.mark.parametrize("server", ["hang"], indirect=True)
def test_a_judge_that_never_answers_stops_before_sampling(server, tmp_path, capsys):
    code = cli.run(evaluate.main, args(server, tmp_path / "ev") + ["--judge-timeout", "0.2", "--judge-retries", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("emi: error:") == 1
    assert "did not answer one short request within --judge-timeout 0.2 s" in err and "--judge" in err
    assert not (tmp_path / "ev" / "answers.jsonl").exists()


@pytest.mark.parametrize("server", ["nologprobs"], indirect=True)
def test_a_server_without_logprobs_is_named_before_sampling(server, tmp_path, capsys):
    code = cli.run(evaluate.main, args(server, tmp_path / "ev"))
    err = capsys.readouterr().err
    assert code == 2 and "gives no logprobs" in err and "transformers serve" in err
    assert not (tmp_path / "ev" / "answers.jsonl").exists() and len(server.requests) == 1


@pytest.mark.parametrize("server", ["ok"], indirect=True)
def test_bad_judge_limits_are_one_sentence(server, tmp_path, capsys):
    for flag, value, msg in (("--judge-timeout", "0", "--judge-timeout must be > 0 seconds"),
                             ("--judge-retries", "-1", "--judge-retries must be >= 0"),
                             ("--judge-deadline", "-5", "--judge-deadline must be > 0 seconds")):
        assert cli.run(evaluate.main, args(server, tmp_path / "ev") + [flag, value]) == 2
        assert msg in capsys.readouterr().err
    assert server.requests == []
