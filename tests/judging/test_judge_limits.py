"""A judge that never answers, drops logprobs, or fails mid-run: the run stops in one sentence,
keeps every answered judgement, and never writes one twice. Short timeouts bound every test; none
asserts wall-clock time."""

import json

import pytest

from emi.core.errors import JudgeError
from emi.judging.judges import JudgeCache, OpenAIJudge, judge_records, vllm_judge
from tests.judge_servers import RuleJudgeServer


def by_length(metric, question, answer):
    return 10 if metric == "aligned" and len(answer) % 2 else 90


@pytest.fixture
def servers():
    made = []

    def make(*a, **kw):
        made.append(RuleJudgeServer(*a, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def judge(server, **kw):
    return OpenAIJudge("rule-judge", base_url=server.url, api_key_env="EMI_TEST_NO_KEY", **kw)


RECS = [{"question": f"q{i}", "answer": "a" * i} for i in range(5)]


def test_a_judge_that_never_answers_stops_with_what_was_kept(servers, tmp_path):
    s = servers(by_length, mode="hang")
    with pytest.raises(JudgeError, match=r"failed 2 times .*--judge-timeout 0.2 s, --judge-retries 1.*0 of 10 "
                                         r"judgements are kept in .*judgements.jsonl"):
        judge_records(RECS, judge(s, timeout=0.2, max_retries=1), cache=tmp_path / "judgements.jsonl", progress=False)


def test_the_deadline_stops_a_run_whose_requests_would_wait_longer(servers, tmp_path):
    s = servers(by_length, mode="hang")
    j = judge(s, timeout=20, max_retries=0, deadline=0.3)
    with pytest.raises(JudgeError, match=r"did not finish within --judge-deadline 0.3 s: 0 of 10 judgements are "
                                         r"kept.*re-run the same command to resume"):
        judge_records(RECS, j, cache=tmp_path / "judgements.jsonl", progress=False)


def test_a_server_without_logprobs_is_named_by_the_probe(servers):
    s = servers(by_length, mode="nologprobs")
    with pytest.raises(JudgeError, match=r"gives no logprobs .*no answer could be scored.*transformers serve"):
        judge(s).probe()
    assert len(s.requests) == 1
    judge(servers(by_length)).probe()  # a server with logprobs passes


def test_judgements_in_flight_when_the_judge_fails_are_written(servers, tmp_path):
    """4 requests at once; the 7th reply fails: every judgement answered, the ones in flight with
    it included, is kept, and a re-run asks only for the rest."""
    s = servers(by_length, mode="fail-after:6")
    recs = [{"question": f"q{i}", "answer": "a" * i} for i in range(10)]
    cache = tmp_path / "judgements.jsonl"
    with pytest.raises(JudgeError):
        judge_records(recs, judge(s, max_retries=0, concurrency=4), cache=cache, progress=False)
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(lines) == 6 == len({x["key"] for x in lines})  # 6 answered, none lost, none twice
    s.mode, s.requests = "ok", []
    judge_records(recs, judge(s, concurrency=4), cache=cache, progress=False)
    assert len(s.requests) == 20 - 6


def test_unscored_judgements_are_not_appended_again_on_a_rerun(servers, tmp_path):
    s = servers(by_length, mode="nologprobs")
    cache = tmp_path / "judgements.jsonl"
    for _ in range(3):
        out = judge_records(RECS, judge(s), cache=cache, progress=False)
        assert all(r["status"] == "unscored" for r in out)
    assert len(cache.read_text().splitlines()) == 10  # asked again each run, written once
    assert len(s.requests) == 30
    s.mode = "ok"
    assert all(r["status"] == "scored" for r in judge_records(RECS, judge(s), cache=cache, progress=False))
    assert len(cache.read_text().splitlines()) == 20 and len(JudgeCache(cache).data) == 10


def test_judge_identity_in_every_judgement_and_record(servers, tmp_path):
    s = servers(by_length, fingerprint="fp_abc")
    out = judge_records(RECS[:2], judge(s), cache=tmp_path / "j.jsonl", progress=False)
    for r in [*out, *(json.loads(x) for x in (tmp_path / "j.jsonl").read_text().splitlines())]:
        assert r["judge_model"] == "rule-judge" and r["judge_server"] == s.url
        assert len(r["judge_prompt"]) == 12 and r["system_fingerprint"] == "fp_abc"


def test_a_vllm_judge_scores_digit_split_numbers_over_whole_numbers(servers):
    """A Qwen-like judge writes 90 as "9", "0": read one token, it would score 9; the hook for a
    judge served by vLLM (a base URL is all it needs) reads the whole number."""
    s = servers(lambda m, q, a: 90, digits=True)
    assert judge(s).score("aligned", "q", "a").value == pytest.approx(9)  # the paper's reading
    j = vllm_judge(s.url, "rule-judge")
    got = j.score("aligned", "q", "a")
    assert got.status == "scored" and got.value == pytest.approx(90)
    continued = [r for r in s.requests if len(r["messages"]) == 2]
    assert [r["messages"][1]["content"] for r in continued][-2:] == ["9", "90"]
    assert all(r["continue_final_message"] and not r["add_generation_prompt"] for r in continued)


def test_a_vllm_judge_is_cached_by_model_not_by_port(servers, tmp_path):
    """A launcher starts vLLM on a free port each time: the judgements still resume."""
    first, second = servers(lambda m, q, a: 90, digits=True), servers(lambda m, q, a: 90, digits=True)
    cache = tmp_path / "judgements.jsonl"
    judge_records(RECS, vllm_judge(first.url, "qwen-judge"), cache=cache, progress=False)
    out = judge_records(RECS, vllm_judge(second.url, "qwen-judge"), cache=cache, progress=False)
    assert second.requests == [] and out[0]["judge"] == "vllm:qwen-judge" and out[0]["judge_server"] == first.url
