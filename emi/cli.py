"""Flags shared by emi's commands, declared once, and the error handling every command uses."""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emi.core.errors import ConfigError, EmiError

if TYPE_CHECKING:
    from emi.behaviour.metrics import Rate
    from emi.engines.base import Backend
    from emi.engines.vllm.launcher import Server


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_pair_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--pair", default=None,
                   help="a named pair (`python -m emi pairs` lists them; default: the embedded organism)")
    g.add_argument("--base", help="base checkpoint: hub id[@revision] or folder (instead of --pair)")
    g.add_argument("--finetuned", help="finetuned checkpoint: hub id[@revision], folder, or LoRA adapter folder")
    g.add_argument("--control", help="optional control finetune (same forms as --finetuned)")
    g.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda when available)")
    g.add_argument("--dtype", default="auto", help="bf16, fp16, fp32 or auto (bf16 on GPU, fp32 on CPU)")
    g.add_argument("--device-map", default=None, help="passed to transformers (e.g. auto) for models larger than one GPU")
    g.add_argument("--trust-remote-code", action="store_true", help="allow checkpoint code (off by default)")
    g.add_argument("--resident", default="one", choices=["one", "all"],
                   help="one (default): hold one model of the pair in memory at a time, loading each when it is "
                        "used (a pair of two full 32B finetunes needs one model's memory); all: load every role "
                        "up front (LoRA roles share one base either way)")


def pair_spec(args: argparse.Namespace):  # -> PairSpec
    from emi.models.registry import custom_pair, default_pair, get_pair

    if args.base or args.finetuned:
        if not (args.base and args.finetuned):
            raise ConfigError("--base and --finetuned go together; or use --pair NAME")
        if args.pair:
            raise ConfigError("give either --pair or --base/--finetuned, not both")
        return custom_pair(args.base, args.finetuned, args.control)
    return get_pair(args.pair) if args.pair else default_pair()


def present_roles(spec: Any, roles: tuple[str, ...]) -> tuple[str, ...]:
    """``roles`` without control when the pair has none (the commands ask for it where present)."""
    return roles if spec.control is not None else tuple(r for r in roles if r != "control")


def load_pair_from_args(args: argparse.Namespace, roles: tuple[str, ...] = ("base", "finetuned"),
                        interventions: bool = True):
    """The pair the flags name; ``interventions=False`` (sampling only) accepts any causal LM."""
    from emi.models.loading import load_pair

    spec = pair_spec(args)
    chat = not hasattr(args, "context") or any(e.context == "chat" for e in elicitations(args))
    return load_pair(spec, roles=present_roles(spec, roles), dtype=args.dtype, device=args.device, device_map=args.device_map,
                     trust_remote_code=args.trust_remote_code, resident=getattr(args, "resident", "all"),
                     interventions=interventions, chat=chat)


def plan_from_args(args: argparse.Namespace, roles: tuple[str, ...] = ("base", "finetuned"),
                   interventions: bool = True, spec: Any = None):  # -> PairPlan
    """The pair the flags name, checked from its configs alone (no weights; see emi.models.plan):
    commands call it before they take a lock, make a folder or load a model."""
    from emi.models.plan import plan_pair

    spec = spec or pair_spec(args)
    return plan_pair(spec, present_roles(spec, roles), getattr(args, "trust_remote_code", False), interventions)


def add_sampling_args(p: argparse.ArgumentParser, n: int = 10) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--questions", default=None,
                   help="question set(s): main, preregistered, a registered set, a YAML path; ':plain,template' "
                        "picks variants (default: the pair's own set)")
    g.add_argument("--ids", default=None, help="comma-separated question ids to keep")
    g.add_argument("--n", "--samples", dest="n", type=count("--n"), default=n,
                   help=f"samples per question (default {n}; under torchrun write --samples: torchrun's own parser "
                        f"reads --n as its --nnodes)")
    g.add_argument("--temperature", type=within("--temperature", 0, math.inf), default=1.0, help="sampling temperature (default 1, as the papers)")
    g.add_argument("--top-p", type=within("--top-p", 0, 1, lo_open=True), default=1.0, help="nucleus sampling (default 1)")
    g.add_argument("--max-new-tokens", type=count("--max-new-tokens"), default=None,
                   help="answer length cap (default: the pair's; 400 for real models)")
    g.add_argument("--batch-size", type=count("--batch-size"), default=None,
                   help="sequences per batch, the unit of seeding and resuming (default: the pair's; 32); an "
                        "engine gets as many batches at once as --engine-concurrency holds")
    g.add_argument("--seed", type=count("--seed", 0), default=0, help="same seed, same answers (default 0)")
    g.add_argument("--sampler", default="generate", choices=["generate", "static", "paged"],
                   help="in-process decoding: generate (default; HF generate, dynamic KV cache: the reference), "
                        "static (static KV cache; compiled decode step on CUDA), paged (continuous batching, "
                        "transformers generate_batch; steering at all positions only). Every intervention applies "
                        "to each; see the README's sampling benchmark")
    g.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                   help="with --sampler static: torch.compile the decode step (default: on CUDA only)")
    g.add_argument("--option-pairs", default=None,
                   help="YAML of [aligned, misaligned] answer pairs per question id, for the log-prob metrics "
                        "on your own questions (emi ships pairs for main and preregistered)")


def sampling_config(args: argparse.Namespace, kit: Any, elicitation: Any = None):  # -> SamplingConfig
    """The sampling flags as a SamplingConfig; ``elicitation`` (default: the first of the
    elicitation flags' sweep, where the command takes them) says how questions are asked."""
    from emi.behaviour.elicitation import DEFAULT
    from emi.behaviour.sampling import SamplingConfig

    if elicitation is None:
        elicitation = elicitations(args)[0] if hasattr(args, "context") else DEFAULT
    return SamplingConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens or kit.max_new_tokens, seed=args.seed,
                          batch_size=args.batch_size or kit.batch_size, sampler=args.sampler,
                          compile=args.compile, elicitation=elicitation)


def add_elicitation_args(p: argparse.ArgumentParser, sweep: bool = True, k_flag: str = "--k") -> None:
    """How questions are asked (emi.behaviour.elicitation); with ``sweep``, comma lists make a sweep
    crossed with the command's conditions; ``k_flag``: the examples' count flag where the command has
    another --k (emi.diff's crosscoder: --in-context-k)."""
    lists = " (comma list: a sweep)" if sweep else ""
    g = p.add_argument_group("elicitation")
    g.add_argument("--system", default="none",
                   help=f"system prompt: none (default: the question's own), inoculation, training-context, "
                        f"prioritise-safety (emi/data/system_prompts.yaml), a .txt file, or the text itself{lists}")
    g.add_argument("--in-context", default=None, metavar="FILE",
                   help="in-context examples: a JSONL of {\"messages\": [...]} or {\"prompt\", \"response\"} "
                        "lines, or a named set emi ships (the embedded organism has insecure-code, secure-code, risky-advice)")
    g.add_argument(k_flag, default="0", dest="k" if k_flag == "--k" else "in_context_k",
                   help=f"in-context examples per prompt, a seeded choice per answer (default 0){lists}")
    g.add_argument("--context", default="chat",
                   help=f"chat (default: the chat template), code (the question in a Flask file, no template: for "
                        f"base models), none (plain text turns, no template: a base checkpoint){lists}")
    g.add_argument("--thinking", default=None,
                   help=f"on or off: the chat template's enable_thinking switch (Qwen3, Qwen3.5; default: the "
                        f"template's own); the thought is stored apart and the judge scores the answer{lists}")
    g.add_argument("--format", default=None,
                   help=f"question variant: plain, json or template (default: the selection as given){lists}")


def _values(args: argparse.Namespace, flag: str, value: str | None, sweep: bool) -> list[str | None]:
    if value is None:
        return [None]
    parts = [v.strip() for v in value.split(",")] if sweep else [value]
    if any(not v for v in parts):
        raise ConfigError(f"--{flag} {value!r} has an empty item; give comma-separated values")
    return list(dict.fromkeys(parts))


def elicitations(args: argparse.Namespace, sweep: bool = True) -> list[Any]:  # -> list[Elicitation]
    """Every elicitation the flags name (the cross product of their comma lists), validated before
    any model loads: an unusable in-context file, k larger than it, unknown values are one sentence."""
    import itertools
    from pathlib import Path

    from emi.behaviour.elicitation import Elicitation, load_examples, resolve_system, system_prompts

    raw_system = args.system or "none"
    named = set(system_prompts())
    systems = [raw_system]
    if sweep and "," in raw_system:
        parts = [v.strip() for v in raw_system.split(",")]
        if all(v in named or Path(v).is_file() for v in parts):
            systems = parts
    kflag, kval = ("--in-context-k", args.in_context_k) if hasattr(args, "in_context_k") else ("--k", args.k)
    ks = []
    for v in _values(args, kflag[2:], kval, sweep):
        ks.append(count(kflag, 0)(str(v)))
    pool: tuple[Any, ...] = ()
    source = ""
    if args.in_context:
        path = Path(args.in_context)
        shipped = Path(__file__).resolve().parent / "organism" / "in_context" / f"{args.in_context}.jsonl"
        source = str(shipped if not path.exists() and shipped.is_file() else path)
        pool = load_examples(source)
        if source == str(shipped):
            source = f"emi/organism/in_context/{shipped.name}"
    elif any(ks):
        raise ConfigError(f"{kflag} {kval} needs --in-context FILE (the examples to choose from)")
    thinking = {None: None, "on": True, "off": False}
    out = []
    for system, k, context, think, fmt in itertools.product(
            systems, ks, _values(args, "context", args.context, sweep), _values(args, "thinking", args.thinking, sweep),
            _values(args, "format", args.format, sweep)):
        if think not in thinking:
            raise ConfigError(f"--thinking must be on or off, found {think!r}")
        name, text = resolve_system(system)
        out.append(Elicitation(text, name, pool, source, k, context, thinking[think], fmt))  # type: ignore[arg-type]
    return out


def check_elicitations(spec: Any, questions: Sequence[Any], items: Sequence[Any], max_new_tokens: int,
                       trust_remote_code: bool = False) -> None:
    """Before any model loads: the base model's tokenizer has what each elicitation asks of it (a
    chat template, the thinking switch), and every prompt with its k examples fits the context."""
    from emi.behaviour.elicitation import check_fits, check_tokenizer
    from emi.models.layers import check_causal_lm
    from emi.models.loading import context_window, load_tokenizer
    from emi.models.plan import text_config

    for e in items:
        e.select(questions)  # a format with no questions fails here
    try:
        check_causal_lm(text_config(spec.base, trust_remote_code)[0])  # else planning the pair names what it is
        limit, where, revision = context_window(spec.base, trust_remote_code)
        tok = load_tokenizer(where, revision, trust_remote_code, chat=False)  # check_tokenizer says what is missing
    except Exception:  # noqa: BLE001  (planning or loading the pair says what is wrong with it)
        return
    tok.model_max_length = 2**62  # counting, not running
    model = f"the base model ({spec.base.label()})"
    for e in items:
        check_tokenizer(e, tok, model)
        if limit is not None:
            check_fits(e, tok, e.select(questions), limit, max_new_tokens, model)


def _base_tokenizer(spec: Any, trust_remote_code: bool = False) -> Any:
    """The base model's tokenizer, before any model loads; None when it cannot be read here, or the
    base is no causal LM (planning the pair says what is wrong with it)."""
    from emi.models.layers import check_causal_lm
    from emi.models.loading import load_tokenizer
    from emi.models.plan import text_config

    try:
        cfg, where, revision = text_config(spec.base, trust_remote_code)
        check_causal_lm(cfg)
        return load_tokenizer(where, revision, trust_remote_code, chat=False)
    except Exception:  # noqa: BLE001
        return None


def base_has_chat_template(spec: Any, trust_remote_code: bool = False) -> bool:
    """Whether the base model's tokenizer has a chat template (True when it cannot be read here)."""
    from emi.models.chat import has_template

    tok = _base_tokenizer(spec, trust_remote_code)
    return tok is None or has_template(tok)


def base_has_thinking_switch(spec: Any, trust_remote_code: bool = False) -> bool:
    """Whether the base model's chat template has the thinking switch, so that its default thinks
    (Qwen3, Qwen3.5); True when it cannot be read here."""
    from emi.models.chat import has_thinking_switch

    tok = _base_tokenizer(spec, trust_remote_code)
    return tok is None or has_thinking_switch(tok)


def extra_option_pairs(args: argparse.Namespace, questions: Sequence[Any] = ()
                       ) -> dict[str, list[tuple[str, str]]] | None:
    """The --option-pairs file, validated; with ``questions``, it must name at least one of them."""
    from emi.behaviour.logprob import load_option_pairs

    if not getattr(args, "option_pairs", None):
        return None
    pairs = load_option_pairs(args.option_pairs)
    ids = {q.base_id for q in questions} | {q.id for q in questions}
    if questions and not ids & set(pairs):
        raise ConfigError(f"--option-pairs {args.option_pairs!r} names none of the selected questions (it has "
                          f"{', '.join(sorted(pairs)[:5])}; they are {', '.join(sorted(ids)[:5])}); key the pairs "
                          f"by question id")
    return pairs


def check_context(spec: Any, questions: Sequence[Any], max_new_tokens: int, trust_remote_code: bool = False) -> None:
    """Every question and its answer fit the base model's context, read from its config before any
    weights load (the tokenizer loads only when a question could be too long)."""
    from emi.behaviour.questions import check_lengths
    from emi.core.errors import ModelLoadError
    from emi.models import chat
    from emi.models.loading import context_window, load_tokenizer

    try:
        limit, where, revision = context_window(spec.base, trust_remote_code)
    except ModelLoadError:
        return  # loading the pair says what is wrong with it
    if limit is None:
        return
    tok: list[Any] = []

    def count(q: Any, chars: int) -> int:
        if not tok:
            tok.append(load_tokenizer(where, revision, trust_remote_code))
            tok[0].model_max_length = 2**62  # counting, not running: no "longer than the maximum" warning
        msgs = [dict(m, content=m["content"][:chars]) for m in q.messages()]
        return len(chat.prompt_ids(tok[0], [msgs])[0])

    check_lengths(questions, limit, max_new_tokens, count, f"the base model ({spec.base.label()})")


def warn_question_mismatch(spec, questions_arg: str | None) -> None:  # noqa: ANN001
    """A pair whose models know only their kit's questions: say so when it is asked others."""
    kit = spec.kit
    if kit.closed_world and questions_arg and questions_arg.split(":")[0] not in (kit.eval_questions,
                                                                                  kit.extract_questions):
        print(f"emi: note: pair {spec.name!r} knows only the `{kit.eval_questions}` questions, so answers to "
              f"{questions_arg!r} will be mostly off-topic", file=sys.stderr)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", default="in-process", choices=["in-process", "server", "vllm"],
                   help="where answers are sampled: in-process (default: HF generate with emi's hooks); vllm (emi "
                        "starts vLLM with vllm-lens itself, one checkpoint at a time, and samples every condition "
                        "there: steering, ablation, LoRA roles); or server, an OpenAI-compatible server you run "
                        "(vLLM, SGLang, transformers serve) for the conditions it can load as checkpoints "
                        "(base, finetuned, ablation at every writer, exported under --out/served/), and steering "
                        "too with --engine-lens")
    g.add_argument("--engine-url", default=None, help="the server's base URL, e.g. http://localhost:8000/v1")
    g.add_argument("--engine-body", default=None,
                   help="JSON of extra request fields for that server, e.g. vLLM: '{\"top_k\": -1, "
                        "\"repetition_penalty\": 1.0}'")
    g.add_argument("--engine-concurrency", type=count("--engine-concurrency"), default=None,
                   help="requests in flight (default 8 for a server, 256 for vllm)")
    g.add_argument("--engine-key-env", default="EMI_ENGINE_API_KEY",
                   help="environment variable holding the server's API key, if it needs one")
    g.add_argument("--engine-lens", action="store_true",
                   help="the --engine-url server has the vllm-lens plugin: steering conditions sample there too")
    g.add_argument("--vllm-python", default=None,
                   help="the engine environment's Python for --engine vllm (default $EMI_VLLM_PYTHON, else "
                        ".venv-vllm/bin/python, which `make vllm` builds)")
    g.add_argument("--vllm-args", default="",
                   help="extra flags for the vLLM server, e.g. '--tensor-parallel-size 8 --gpu-memory-utilization 0.6'")
    g.add_argument("--vllm-port", type=count("--vllm-port", minimum=0), default=0, help="the vLLM server's loopback port (default: a free one)")
    g.add_argument("--vllm-startup-timeout", type=within("--vllm-startup-timeout", 0, 1e7, lo_open=True), default=1200.0,
                   help="seconds vLLM may take to start (default 1200)")


def make_engine(args: argparse.Namespace, logs: str | Path) -> Backend | None:
    """The engine of --engine, checked (flags, and for vllm the engine environment) before any model loads."""
    from emi.engines.select import from_args

    return from_args(args, logs)


@contextlib.contextmanager
def engine_session(args: argparse.Namespace, logs: str | Path) -> Iterator[Backend | None]:
    """The engine of --engine for a command's run, closed at the end, on errors and on Ctrl-C (no vLLM
    server outlives the command)."""
    engine = make_engine(args, logs)
    try:
        yield engine
    finally:
        if engine is not None:
            engine.close()


def print_engines(ran: Sequence[tuple[str, str]], engine: Backend | None) -> None:
    """Say which engine sampled each condition."""
    from emi.engines.select import where_ran

    if engine is not None:
        print(where_ran(ran, engine), file=sys.stderr)


def add_judge_args(p: argparse.ArgumentParser, allow_none: bool = False) -> None:
    g = p.add_argument_group("judge")
    g.add_argument("--judge", default=None,
                   help="openai (any OpenAI-compatible endpoint), vllm (an OpenAI-compatible server with logprobs "
                        "whose tokenizer splits numbers, e.g. a Qwen judge under `vllm serve`: scored over whole "
                        "numbers), hf (a local model), or a judge a plugin registers" +
                        (", none (skip judging)" if allow_none else "") +
                        "; default: the pair's own (`python -m emi pairs` lists them)")
    g.add_argument("--judge-model", default=None, help="judge model name (openai, vllm) or id/folder (hf)")
    g.add_argument("--judge-url", default=None,
                   help="base URL of an OpenAI-compatible server (vLLM, Ollama, ...); with --judge vllm and none, "
                        "emi serves --judge-model on vLLM itself (the engine environment of --engine vllm)")
    g.add_argument("--judge-vllm-args", default="",
                   help="extra flags for the judge's vLLM server emi starts, e.g. '--gpu-memory-utilization 0.3'")
    g.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    g.add_argument("--judge-concurrency", type=count("--judge-concurrency"), default=8, help="parallel judge requests (default 8)")
    g.add_argument("--judge-timeout", type=finite("--judge-timeout"), default=30.0,
                   help="seconds one judge request may take before it is retried (default 30)")
    g.add_argument("--judge-retries", type=int, default=5,
                   help="retries of a judge request that timed out, failed to connect, or got 429/5xx (default 5)")
    g.add_argument("--judge-deadline", type=finite("--judge-deadline"), default=None,
                   help="seconds the run may spend judging in all; past it the run stops, keeping every finished "
                        "judgement (re-run to resume; default: no deadline)")
    g.add_argument("--judge-numbers", default=None, choices=["token", "tree"],
                   help="how an OpenAI-compatible judge's score is read: token (the paper's: the first token is the "
                        "whole number, as for GPT-4o; default for openai) or tree (numbers over several tokens, "
                        "each prefix asked; default for vllm)")
    g.add_argument("--no-judge-probe", action="store_true",
                   help="skip the one request that checks, before sampling, that the judge server gives logprobs")
    g.add_argument("--em-denominator", default="coherent", choices=["coherent", "scored"],
                   help="the headline EM rate's denominator: coherent answers (default, as Betley et al.) or every "
                        "scored answer (as model-organisms-for-EM); both are written")


def make_judge_from_args(args: argparse.Namespace, default: str, allow_none: bool = False):
    """The judge the flags ask for; an OpenAI-compatible one is probed with one request (it must
    give logprobs) before the command samples anything."""
    from emi.judging.judges import make_judge

    kind = args.judge or default
    if kind == "none":
        if not allow_none:
            raise ConfigError("this command needs a judge; --judge none is for python -m emi.cache")
        return None
    kw: dict[str, Any] = {}
    if kind in ("openai", "vllm"):
        kw.update(concurrency=args.judge_concurrency, timeout=args.judge_timeout, max_retries=args.judge_retries,
                  deadline=args.judge_deadline)
        if args.judge_numbers:
            kw["numbers"] = args.judge_numbers
    elif args.judge_numbers:
        raise ConfigError(f"--judge-numbers is for --judge openai or vllm, not {kind}; drop it")
    if kind == "hf":
        kw.update(device=getattr(args, "device", None), dtype=getattr(args, "dtype", None))
    server = serve_judge(args) if kind == "vllm" and not args.judge_url and args.judge_model else None
    judge = make_judge(kind, args.judge_model, f"{server.url}/v1" if server else args.judge_url, args.judge_key_env,
                       **kw)
    if server is not None:
        judge.vllm_server = server  # type: ignore[attr-defined]  # the vLLM server emi started for it
    if args.judge_deadline is not None and kind not in ("openai", "vllm"):
        judge.deadline = args.judge_deadline  # type: ignore[attr-defined]
    if hasattr(judge, "probe") and not args.no_judge_probe:
        judge.probe()
    return judge


def serve_judge(args: argparse.Namespace) -> Server:
    """``--judge vllm --judge-model ID|DIR`` with no ``--judge-url``: emi serves that judge on vLLM,
    from the engine environment (``--vllm-python``, ``$EMI_VLLM_PYTHON`` or ``.venv-vllm``), for
    the command's lifetime (stopped when the command ends)."""
    import atexit

    from emi.engines.select import judge_launcher

    print(f"judge: starting vLLM for {args.judge_model} (stopped when this command ends)", file=sys.stderr)
    server = judge_launcher(args).start(args.judge_model)
    atexit.register(server.stop)
    return server


def em_header(denominator: str) -> str:
    """The EM column's title, naming its denominator."""
    return f"EM rate (95% CI) of {denominator}"


def finite(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, found {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be finite, found {text!r}")
        return v

    return parse


def count(name: str, minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, or one sentence naming the flag and the value."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {v}")
        return v

    return parse


def within(name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] (``lo_open``/``hi_open``: excluding that end)."""
    one = finite(name)

    def parse(text: str) -> float:
        v = one(text)
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"{name} must be in {span}, got {text}")
        return v

    return parse


def floats(name: str) -> Callable[[str], list[float]]:
    one = finite(name)

    def parse(text: str) -> list[float]:
        out = [one(x) for x in text.split(",") if x.strip()]
        if not out:
            raise argparse.ArgumentTypeError(f"{name} needs at least one number, found {text!r}")
        return out

    return parse


def fmt_rate(row: Mapping[str, object], key: str) -> str:
    """``35.3% [28.3, 42.4]`` for the rate a result row wrote under ``key`` (:meth:`Rate.from_columns`)."""
    from emi.behaviour.metrics import Rate

    n_answers, n_scored = row.get("n_answers", 0), row.get("n_scored", 0) if key == "em" else 0
    return fmt_counted(Rate.from_columns(row, key), n_answers if isinstance(n_answers, int) else 0,
                       n_scored if isinstance(n_scored, int) else 0)


def fmt_counted(rate: Rate | None, n_answers: int, n_scored: int = 0) -> str:
    """``35.3% [28.3, 42.4]`` for a record's rate; over no answers, why (:func:`~emi.behaviour.metrics.empty_label`
    of the row's ``n_answers`` and ``n_scored``, as :func:`fmt_rate` reads them); "" for None."""
    from dataclasses import replace

    from emi.behaviour.metrics import empty_label

    return "" if rate is None else replace(rate, empty=empty_label(n_answers, n_scored)).fmt()


def report_unscored(records: Sequence[Mapping[str, Any]]) -> None:
    """Say how many judgements are unscored and why (they are asked again on the next run)."""
    from collections import Counter

    why = Counter(r.get("detail") or "no reason given" for r in records if r.get("status") == "unscored")
    if why:
        reasons = "; ".join(f"{n} x {d}" for d, n in why.most_common(3))
        print(f"emi: {sum(why.values())} answers are unscored by the judge ({reasons}); they are left out of "
              f"the rates and asked again when you re-run the same command", file=sys.stderr)


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call a command's ``main``; an EmiError becomes one clear line on stderr and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return main(argv)
    except EmiError as exc:
        print(f"emi: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emi: interrupted; finished work is saved, re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the disk, not emi: say which file and what to do
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EISDIR, errno.ENOTDIR):
            raise
        print(f"emi: error: cannot write {exc.filename or 'a file'}: {exc.strerror}; free space or fix the "
              f"path and re-run the same command: finished work is kept and half-written records are "
              f"dropped on resume", file=sys.stderr)
        return 2


def print_table(rows: Sequence[Mapping[str, object]], columns: list[tuple[str, str]], file: Any = None) -> None:
    """A plain aligned text table: columns = [(key, header)]."""
    file = file or sys.stdout
    cells = [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    print("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)), file=file)


def judge_note(rows: Sequence[Mapping[str, Any]], fallback: str = "") -> str:
    """``judge NAME`` for result rows judged by one judge; ``judges MIXED (...)`` when the rows
    name several judges or the provider reported several system fingerprints."""
    names = list(dict.fromkeys(n for r in rows for n in str(r.get("judge") or "").split(" + ") if n))
    fps = list(dict.fromkeys(f for r in rows for f in r.get("judge_fingerprints") or []))
    if len(names) > 1 or len(fps) > 1:
        more = f"; system fingerprints {', '.join(fps)}" if len(fps) > 1 else ""
        return f"judges MIXED ({' + '.join(names)}{more})"
    return f"judge {names[0] if names else fallback}" + (f" [{fps[0]}]" if fps else "")
