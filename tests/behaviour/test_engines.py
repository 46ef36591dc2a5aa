"""--engine server: sampling through a real OpenAI-compatible server (`transformers serve`, run
here on loopback, offline), on a stand-in pair and on the toy, whose README table it reproduces
within CIs."""

import json
import math
import re
from pathlib import Path

import pytest

from emi import steer
from emi.core.errors import ConfigError
from tests.standins import JudgeServer, full_pair, qwen_tokenizer, transformers_serve

pytestmark = pytest.mark.slow
README = Path(__file__).parents[2] / "README.md"


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("fastapi", reason="transformers serve needs the dev extras (fastapi, uvicorn)")
    with transformers_serve() as url:
        yield url


def rows(path):
    return {r["condition"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_a_real_pair_samples_its_checkpoint_conditions_on_the_server(server, tmp_path, capsys):
    base, ft = full_pair(tmp_path, "qwen3", qwen_tokenizer(), seed=6)
    judge = JudgeServer()
    try:
        out = tmp_path / "run"
        assert steer.main(["--base", str(base), "--finetuned", str(ft), "--judge", "openai", "--judge-url", judge.url,
                           "--judge-key-env", "EMI_TEST_NO_KEY", "--judge-model", "j", "--questions", "main:plain",
                           "--n", "1", "--max-new-tokens", "6", "--device", "cpu", "--alpha", "4", "--no-figure",
                           "--root", str(tmp_path / "acts"), "--engine", "server", "--engine-url", server,
                           "--out", str(out)]) == 0
    finally:
        judge.close()
    got = rows(out / "results.jsonl")
    assert {c: r["engine"] for c, r in got.items()} == {
        "base": "server", "finetuned": "server", "finetuned - persona": "server", "finetuned - random": "server",
        "base + 4 persona": "in-process", "base + 4 random": "in-process"}
    served = sorted((out / "served").iterdir())  # the two ablated checkpoints the server loaded
    assert len(served) == 2 and all((d / "export.json").is_file() for d in served)
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert all(a["n_answers"] == 8 for a in got.values()) and len(answers) == 6 * 8
    assert "engine: the server at" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["engine"]["engine"] == "server"


def _readme_table():
    table = README.read_text().split("```\npair toy | direction", 1)[1].split("```", 1)[0]
    out = {}
    for line in table.splitlines():
        m = re.match(r"(\S.*?)\s{2,}\s*([\d.]+)% \[\s*([\d.]+),\s*([\d.]+)\]", line)
        if m:
            out[m.group(1).strip()] = tuple(float(x) / 100 for x in m.group(2, 3, 4))
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k/n: unlike a percentile bootstrap it does not shrink to [0, 0] at
    k = 0 (a run of n=5 per question can draw no misaligned answer where the README's rate is 5%)."""
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return centre - half, centre + half


def test_the_toy_table_through_the_server_agrees_with_the_readme_within_cis(server, tmp_path):
    """The server's batching draws other samples than the README's in-process run: each EM rate's
    interval (Wilson, from its k/n) overlaps the README's CI. The KL columns are measured in-process
    whatever the engine (test_a_real_pair_samples_its_checkpoint_conditions_on_the_server runs them
    beside the server): --no-side-effects."""
    out = tmp_path / "toy"
    assert steer.main(["--alpha", "8", "--layers", "1", "--positions", "prompt", "--n", "5", "--no-figure",
                       "--no-side-effects",
                       "--engine", "server", "--engine-url", server, "--out", str(out)]) == 0
    readme, got = _readme_table(), rows(out / "results.jsonl")
    assert set(readme) == set(got)
    for name in ("base", "finetuned", "finetuned - persona", "finetuned - random"):
        r, (_, lo, hi) = got[name], readme[name]
        assert r["engine"] == "server"
        r_lo, r_hi = wilson(r["em_k"], r["em_n"])
        assert r_lo <= hi and lo <= r_hi, (name, r["em_k"], r["em_n"], lo, hi)  # the intervals overlap
    assert got["finetuned - persona"]["em_rate"] < got["finetuned"]["em_rate"]


def test_engine_flags_are_checked_before_anything_loads():
    with pytest.raises(ConfigError, match="needs --engine-url"):
        steer.main(["--engine", "server"])
    with pytest.raises(ConfigError, match="is for --engine server"):
        steer.main(["--engine-url", "http://x/v1"])
    with pytest.raises(ConfigError, match="must be a JSON object"):
        steer.main(["--engine", "server", "--engine-url", "http://x/v1", "--engine-body", "[1]"])
    with pytest.raises(ConfigError, match="http"):
        steer.main(["--engine", "server", "--engine-url", "localhost:8000"])


def test_a_servers_separate_reasoning_comes_back_as_the_answers_thought():
    """A chat server with a reasoning parser (vLLM's --reasoning-parser qwen3) returns the thought in
    ``reasoning_content`` (or ``reasoning``) apart from the content: emi puts it back before the
    answer, so the answer record keeps it as its thought (the judge scores the content alone)."""
    from emi.behaviour.elicitation import Elicitation
    from emi.behaviour.sampling import SamplingConfig
    from emi.engines.server import ServerEngine
    from tests.standins import serve_json

    fields = iter([{"reasoning_content": " plan a harm . "}, {"reasoning": "be kind ."}, {}])

    def reply(body):  # noqa: ANN001, ANN202
        message = {"role": "assistant", "content": " fine . ", **next(fields)}
        return 200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}

    httpd, url = serve_json(reply)
    try:
        got = ServerEngine(url, concurrency=1).chat("m", [[{"role": "user", "content": "hi"}]] * 3,
                                                    SamplingConfig(max_new_tokens=4), 0)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert [Elicitation(thinking=True).answer(a["answer"]) for a in got] == [
        ("plan a harm .", "fine ."), ("be kind .", "fine ."), (None, "fine .")]
