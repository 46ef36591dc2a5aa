"""The OpenAI-compatible judge: any server with chat completions and logprobs (OpenAI, vLLM,
SGLang, llama.cpp, Ollama), read as the paper does (one token) or over numbers that take several
tokens (the number tree, through vLLM's ``continue_final_message``); :func:`vllm_judge` is the
hook for a judge model that emi's vLLM launcher serves."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from emi.behaviour.questions import judge_prompts
from emi.core.errors import ConfigError, JudgeError
from emi.judging.scores import Score, TopLogprobs, aggregate_logprobs, number_distribution

NUMBER_MODES = ("token", "tree")


class OpenAIJudge:
    """A judge behind any OpenAI-compatible chat-completions endpoint.

    ``numbers="token"`` (default): the paper's request and reading (one token, top-20 logprobs,
    :func:`emi.judging.scores.aggregate_logprobs`), right for judges whose tokenizer holds each
    number 0..100 as one token (GPT-4o). ``numbers="tree"``: for a judge whose numbers take several
    tokens (a Qwen served by vLLM), the number tree of :func:`emi.judging.scores.number_distribution`,
    each prefix asked as a continued assistant message (vLLM's ``continue_final_message``).

    ``timeout`` is per request; retries (``max_retries``) are the openai client's own (connection
    errors, timeouts, 408/409/429/5xx, exponential backoff, the server's ``Retry-After``);
    ``concurrency`` requests run at once in :func:`judge_records`; ``deadline`` bounds the seconds
    :func:`judge_records` may spend judging in all (None: no bound).
    """

    parallel = True  # judge_records may call score() from several threads

    def __init__(self, model: str = "gpt-4o-2024-08-06", base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 30.0, max_retries: int = 5,
                 prompts: dict[str, str] | None = None, concurrency: int = 8, numbers: str = "token",
                 deadline: float | None = None, min_branch: float = 1e-4, name: str | None = None) -> None:
        from openai import OpenAI

        check_limits(concurrency, timeout, max_retries, deadline)
        if numbers not in NUMBER_MODES:
            raise ConfigError(f"--judge-numbers must be one of {', '.join(NUMBER_MODES)}, found {numbers!r}")
        key = os.environ.get(api_key_env)
        if key is None:
            if base_url is None:
                raise JudgeError(
                    f"no API key: set {api_key_env} for the OpenAI judge, or pass --judge-url for a "
                    f"local OpenAI-compatible server (vLLM, Ollama, llama.cpp), or use --judge hf"
                )
            key = "EMPTY"  # local servers accept any key
        self.model, self.base_url, self.concurrency = model, base_url, concurrency
        self.model_id, self.server = model, base_url or "https://api.openai.com/v1"
        self.name = name or f"openai:{model}@{base_url or 'api.openai.com'}" + ("" if numbers == "token" else f"#{numbers}")
        self.prompts = prompts or judge_prompts()
        self.numbers, self.min_branch, self.deadline = numbers, min_branch, deadline
        self.timeout, self.max_retries = timeout, max_retries
        self.client = OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)

    def _ask(self, prompt: str, prefix: str = "", client: Any = None) -> Any:
        """One request for the next token's top-20 logprobs after ``prefix`` of the answer."""
        import openai

        client = client or self.client

        messages = [{"role": "user", "content": prompt}]
        extra: dict[str, Any] = {}
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
            extra["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        where = self.base_url or "OpenAI"
        try:
            return client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=1,  # type: ignore[arg-type]
                temperature=0, logprobs=True, top_logprobs=20, seed=0, **extra)
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            return f"the reply was not valid JSON ({type(exc).__name__})"
        except openai.AuthenticationError as exc:
            raise JudgeError(f"the judge endpoint {where} refused the key ({exc.status_code}); check the API "
                             f"key variable") from None
        except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                openai.InternalServerError) as exc:
            raise JudgeError(
                f"the judge endpoint {where} failed {self.max_retries + 1} times ({type(exc).__name__}: "
                f"{str(exc)[:120]}; --judge-timeout {self.timeout:g} s, --judge-retries {self.max_retries}); is "
                f"the server up? Finished judgements are cached: re-run the same command to resume") from None
        except openai.APIStatusError as exc:
            raise JudgeError(f"the judge endpoint answered {exc.status_code}: {str(exc.message)[:200]}") from None

    def score(self, metric: str, question: str, answer: str) -> Score:
        prompt = self.prompts[metric].format(question=question, answer=answer)
        if self.numbers == "tree":
            return self._score_tree(prompt)
        resp = self._ask(prompt)
        if isinstance(resp, str):
            return Score(None, "unscored", None, detail=resp)
        return self._parse(resp)

    def _score_tree(self, prompt: str) -> Score:
        fingerprints: list[str | None] = []

        def next_top(prefixes: list[str]) -> list[TopLogprobs]:
            out: list[TopLogprobs] = []
            for prefix in prefixes:
                resp = self._ask(prompt, prefix)
                top = None if isinstance(resp, str) else top_logprobs(resp)
                if top is None:
                    raise _Unscored(resp if isinstance(resp, str) else "the reply had no top logprobs")
                fingerprints.append(getattr(resp, "system_fingerprint", None))
                out.append(top)
            return out

        try:
            tree = number_distribution(next_top, self.min_branch)
        except _Unscored as exc:
            return Score(None, "unscored", None, detail=str(exc))
        s = tree.score()
        return Score(s.value, s.status, s.mass, s.label, s.detail, join_fingerprints(fingerprints), s.pruned)

    @staticmethod
    def _parse(resp: Any) -> Score:
        top = top_logprobs(resp)
        fp = getattr(resp, "system_fingerprint", None)
        if top is None:
            return Score(None, "unscored", None, detail="the reply had no top logprobs", fingerprint=fp)
        s = aggregate_logprobs(top)
        return Score(s.value, s.status, s.mass, s.label, s.detail, fp)

    def probe(self) -> None:
        """One request before any answer is sampled: a server that returns no logprobs at all (e.g.
        ``transformers serve``) would leave every judgement unscored, so it is named now. The probe
        is one try bounded by --judge-timeout (no retries): an endpoint that cannot be reached is
        named in seconds, not after every retry's back-off."""
        import openai

        try:
            resp = self._ask(self.prompts["coherent"].format(question="What is 2 + 2?", answer="4."),
                             client=self.client.with_options(max_retries=0, timeout=self.timeout))
        except JudgeError as exc:
            if not isinstance(exc.__context__, openai.APITimeoutError | openai.APIConnectionError):
                raise
            raise JudgeError(f"the judge endpoint {self.server} (model {self.model!r}) did not answer one short "
                             f"request within --judge-timeout {self.timeout:g} s, so nothing was sampled; start "
                             f"that server or pass --judge-url URL, or choose another judge with --judge (e.g. "
                             f"--judge hf --judge-model FOLDER)") from None
        if isinstance(resp, str) or top_logprobs(resp) is None:
            why = resp if isinstance(resp, str) else "its reply has no top_logprobs"
            raise JudgeError(f"the judge server {self.server} (model {self.model!r}) gives no logprobs ({why}), so "
                             f"no answer could be scored; serve the judge where logprobs work (vLLM, SGLang, "
                             f"llama.cpp, Ollama; `transformers serve` drops them) or use --judge hf")


class _Unscored(Exception):
    pass


def top_logprobs(resp: Any) -> list[tuple[str, float]] | None:
    """The first position's [(token, logprob)] of a chat completion, None when it has none."""
    try:
        content = resp.choices[0].logprobs.content
        top = [(t.token, t.logprob) for t in content[0].top_logprobs]
    except (AttributeError, IndexError, TypeError):
        return None
    return top or None


def join_fingerprints(fps: Sequence[str | None]) -> str | None:
    seen = list(dict.fromkeys(f for f in fps if f))
    return ",".join(seen) or None


def check_limits(concurrency: int, timeout: float, retries: int, deadline: float | None) -> None:
    if concurrency < 1:
        raise ConfigError(f"--judge-concurrency must be >= 1, found {concurrency}")
    if not timeout > 0:
        raise ConfigError(f"--judge-timeout must be > 0 seconds, found {timeout}")
    if retries < 0:
        raise ConfigError(f"--judge-retries must be >= 0, found {retries}")
    if deadline is not None and not deadline > 0:
        raise ConfigError(f"--judge-deadline must be > 0 seconds, found {deadline}")


def vllm_judge(base_url: str, model: str, **kw: Any) -> OpenAIJudge:
    """The hook for a judge served by vLLM (or any OpenAI-compatible server with logprobs and
    ``continue_final_message``): the paper's prompts, scored by the number tree, so a Qwen judge
    whose tokenizer splits "100" into digits is scored over whole numbers. A launcher that starts
    ``vllm serve MODEL`` passes its base URL and served model name here. The judge is named (and
    its judgements cached) by the model, ``vllm:MODEL``, not by the URL, whose port changes with
    every launch; ``judge_server`` still records the URL."""
    kw.setdefault("numbers", "tree")
    kw.setdefault("name", f"vllm:{model}" + ("" if kw["numbers"] == "tree" else f"#{kw['numbers']}"))
    return OpenAIJudge(model, base_url, kw.pop("api_key_env", "EMI_JUDGE_API_KEY"), **kw)
