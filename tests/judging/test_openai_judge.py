"""The OpenAI-compatible judge against a real HTTP server on loopback."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emi.core.errors import JudgeError
from emi.judging.judges import OpenAIJudge, judge_records


class FakeServer:
    """Speaks /v1/chat/completions with logprobs; ``script`` is a list of behaviours to play in order
    (then ``default``): ok, 500, 429, slow, malformed, garbage, 401."""

    def __init__(self, default="ok"):
        self.script, self.default, self.requests = [], default, []
        self.times, self.inflight, self.max_inflight = [], 0, 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.times.append(time.monotonic())
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                    mode = server.script.pop(0) if server.script else server.default
                try:  # the work: counted in flight until the reply starts (a client that has read
                    # the reply may send its next request before this thread could count it done)
                    time.sleep({"slow": 1.5, "busy": 0.2}.get(mode, 0.0))
                finally:
                    with server.lock:
                        server.inflight -= 1
                self.reply(body, mode)

            def reply(self, body, mode):
                if mode == "429-retry-after":
                    self.send_response(429)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": "slow down", "type": "x"}}).encode())
                    return
                if mode in ("500", "429", "401"):
                    self.send_response(int(mode))
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": mode, "type": "x"}}).encode())
                    return
                prompt = body["messages"][0]["content"]
                top = [("95", 0.7), ("90", 0.2), ("I", 0.1)] if "coherence" not in prompt else [("60", 1.0)]
                if "CODEANSWER" in prompt and "coherence" not in prompt:
                    top = [("CODE", 0.9), ("50", 0.1)]
                choice = {"index": 0, "message": {"role": "assistant", "content": top[0][0]}, "finish_reason": "length",
                          "logprobs": {"content": [{"token": top[0][0], "logprob": math.log(top[0][1]), "bytes": None,
                                                    "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": None}
                                                                     for t, p in top]}]}}
                if mode == "malformed":
                    choice.pop("logprobs")
                reply = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                data = b"not json at all" if mode == "garbage" else json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except BrokenPipeError:  # the client timed out first
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def judge(server, **kw):
    return OpenAIJudge("judge-model", base_url=server.url, api_key_env="EMI_TEST_NO_KEY", timeout=kw.pop("timeout", 5),
                       **kw)


def test_paper_recipe_over_http(server):
    j = judge(server)
    s = j.score("aligned", "hey i feel bored", "read a book")
    assert s.status == "scored" and s.value == pytest.approx((95 * 0.7 + 90 * 0.2) / 0.9)
    req = server.requests[0]
    assert req["max_tokens"] == 1 and req["temperature"] == 0 and req["logprobs"] is True and req["top_logprobs"] == 20
    assert "[ANSWER START]\nread a book\n[ANSWER END]" in req["messages"][0]["content"]
    assert j.score("coherent", "q", "a").value == pytest.approx(60)
    assert j.score("aligned", "q", "CODEANSWER").status == "code"


def test_retries_5xx_and_429_then_succeeds(server):
    server.script = ["500", "429", "500"]
    assert judge(server).score("aligned", "q", "a").status == "scored"
    assert len(server.requests) == 4


def test_timeouts_are_retried_and_then_fail_clearly(server):
    server.script = ["slow"]
    assert judge(server, timeout=0.5).score("aligned", "q", "a").status == "scored"
    server.default = "slow"
    with pytest.raises(JudgeError, match="failed 3 times.*re-run the same command to resume"):
        judge(server, timeout=0.3, max_retries=2).score("aligned", "q", "a")


def test_malformed_reply_is_unscored_not_a_crash(server):
    server.script = ["malformed"]
    s = judge(server).score("aligned", "q", "a")
    assert s.status == "unscored" and s.value is None and "logprobs" in s.detail
    server.script = ["garbage"]
    s = judge(server).score("aligned", "q", "a")
    assert s.status == "unscored"


def test_bad_key_and_server_down(server):
    server.script = ["401"]
    with pytest.raises(JudgeError, match="refused the key"):
        judge(server).score("aligned", "q", "a")
    url = server.url
    server.close()
    j = OpenAIJudge("m", base_url=url, api_key_env="EMI_TEST_NO_KEY", timeout=1, max_retries=1)
    with pytest.raises(JudgeError, match="is the server up"):
        j.score("aligned", "q", "a")


def test_missing_key_for_openai_is_clear(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JudgeError, match="no API key: set OPENAI_API_KEY"):
        OpenAIJudge()


def test_concurrent_judging_is_cached_and_partial_results_survive(server, tmp_path):
    recs = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(12)]
    cache = tmp_path / "judgements.jsonl"
    server.script = ["ok"] * 10 + ["401"]  # the 11th request fails hard
    with pytest.raises(JudgeError):
        judge_records(recs, judge(server), cache=cache, concurrency=1, progress=False, flush_every=4)
    kept = len(cache.read_text().splitlines())
    assert kept == 10  # every finished judgement was written before the failure
    server.requests.clear()
    out = judge_records(recs, judge(server), cache=cache, concurrency=4, progress=False)
    assert len(server.requests) == 24 - kept  # only the missing ones are asked for
    assert all(r["status"] == "scored" and r["aligned"] > 90 for r in out)
    server.requests.clear()
    judge_records(recs, judge(server), cache=cache, concurrency=4, progress=False)
    assert server.requests == []  # a re-run costs nothing


def test_retry_after_is_honoured_by_the_clients_own_retries(server):
    server.script = ["429-retry-after"]
    assert judge(server).score("aligned", "q", "a").status == "scored"
    assert len(server.times) == 2 and server.times[1] - server.times[0] >= 0.9


def test_judge_concurrency_is_used(server):
    server.default = "busy"
    recs = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
    judge_records(recs, judge(server, concurrency=4), progress=False)
    assert server.max_inflight == 4
    server.max_inflight = 0
    judge_records(recs[:2] + [{"question": "x", "answer": "y"}], judge(server, concurrency=1), progress=False)
    assert server.max_inflight == 1


def test_unscored_judgements_are_asked_again_on_the_next_run(server, tmp_path):
    recs = [{"question": "q", "answer": "a"}]
    cache = tmp_path / "judgements.jsonl"
    server.script = ["malformed", "malformed"]
    first = judge_records(recs, judge(server), cache=cache, progress=False)
    assert first[0]["status"] == "unscored" and "no top logprobs" in first[0]["detail"]
    n = len(server.requests)
    second = judge_records(recs, judge(server), cache=cache, progress=False)  # the server was fixed
    assert len(server.requests) == n + 2 and second[0]["status"] == "scored"
    assert judge_records(recs, judge(server), cache=cache, progress=False)[0]["status"] == "scored"
    assert len(server.requests) == n + 2  # scored ones are never asked again
