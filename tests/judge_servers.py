"""OpenAI-compatible judges on loopback for the judge tests: each scores by a rule the test knows,
so agreement numbers can be computed by hand.

``rule(metric, question, answer) -> int`` gives the score a judge answers; the server replies
with that number as one token (a GPT-4o-like tokenizer), or, with ``digits=True``, one digit at a
time through vLLM's ``continue_final_message`` (a Qwen-like tokenizer). ``mode``: ``ok``,
``hang`` (never answers until closed), ``nologprobs`` (a reply without logprobs, as
``transformers serve`` gives), ``fail-after:N`` (HTTP 500 after N good replies).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from typing import Any

from tests.standins import serve_json

Rule = Callable[[str, str, str], int]
PROMPT = re.compile(r"\[QUESTION START\]\n(.*)\n\[QUESTION END\].*\[ANSWER START\]\n(.*)\n\[ANSWER END\]", re.S)


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    m = PROMPT.search(prompt)
    question, answer = (m.group(1), m.group(2)) if m else ("", "")
    return ("coherent" if "coheren" in prompt.lower().split("[question start]")[0] else "aligned"), question, answer


class RuleJudgeServer:
    def __init__(self, rule: Rule, mode: str = "ok", digits: bool = False, fingerprint: str | None = None) -> None:
        self.rule, self.mode, self.digits, self.fingerprint = rule, mode, digits, fingerprint
        self.requests: list[dict[str, Any]] = []
        self.ok = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.httpd, self.url = serve_json(self.answer)

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        with self.lock:
            self.requests.append(body)
        status, reply = self.reply(body)
        if status == 0:
            self.closing.wait(30)  # never answers (until the test closes the server)
            return None
        return status, reply

    def top(self, body: dict[str, Any]) -> list[tuple[str, float]]:
        metric, q, a = parse_prompt(body["messages"][0]["content"])
        text = str(self.rule(metric, q, a))
        if not self.digits:
            return [(text, math.log(0.9)), ("I", math.log(0.1))]
        prefix = body["messages"][1]["content"] if len(body["messages"]) > 1 else ""
        if not text.startswith(prefix):
            return [("<|im_end|>", 0.0)]
        rest = text[len(prefix):]
        return [(rest[0], 0.0)] if rest else [("<|im_end|>", 0.0)]

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.mode == "hang":
            return 0, {}
        with self.lock:
            n = self.ok
            self.ok += 1
        if self.mode.startswith("fail-after:") and n >= int(self.mode.split(":")[1]):
            return 500, {"error": {"message": "down", "type": "x"}}
        top = self.top(body)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length",
                                  "message": {"role": "assistant", "content": top[0][0]}}
        if self.mode != "nologprobs":
            choice["logprobs"] = {"content": [{"token": top[0][0], "logprob": top[0][1], "bytes": None,
                                               "top_logprobs": [{"token": t, "logprob": lp, "bytes": None}
                                                                for t, lp in top]}]}
        reply = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                 **({"system_fingerprint": self.fingerprint} if self.fingerprint else {})}
        return 200, reply

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
