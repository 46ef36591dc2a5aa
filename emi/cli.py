"""Flags shared by emi's commands, declared once, and the error handling every command uses."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from emi.errors import ConfigError, EmiError


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_pair_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--pair", default=None,
                   help="a named pair (`python -m emi pairs` lists them; default: toy, the embedded organism)")
    g.add_argument("--base", help="base checkpoint: hub id[@revision] or folder (instead of --pair)")
    g.add_argument("--finetuned", help="finetuned checkpoint: hub id[@revision], folder, or LoRA adapter folder")
    g.add_argument("--control", help="optional control finetune (same forms as --finetuned)")
    g.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda when available)")
    g.add_argument("--dtype", default="auto", help="bf16, fp16, fp32 or auto (bf16 on GPU, fp32 on CPU)")
    g.add_argument("--device-map", default=None, help="passed to transformers (e.g. auto) for models larger than one GPU")
    g.add_argument("--trust-remote-code", action="store_true", help="allow checkpoint code (off by default)")


def pair_spec(args: argparse.Namespace):  # -> PairSpec
    from emi.registry import custom_pair, get_pair

    if args.base or args.finetuned:
        if not (args.base and args.finetuned):
            raise ConfigError("--base and --finetuned go together; or use --pair NAME")
        if args.pair:
            raise ConfigError("give either --pair or --base/--finetuned, not both")
        return custom_pair(args.base, args.finetuned, args.control)
    return get_pair(args.pair or "toy")


def load_pair_from_args(args: argparse.Namespace, roles: tuple[str, ...] = ("base", "finetuned")):
    from emi.models import load_pair

    spec = pair_spec(args)
    if "control" in roles and spec.control is None:
        roles = tuple(r for r in roles if r != "control")
    return load_pair(spec, roles=roles, dtype=args.dtype, device=args.device, device_map=args.device_map,
                     trust_remote_code=args.trust_remote_code)


def add_sampling_args(p: argparse.ArgumentParser, n: int = 10) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--questions", default=None,
                   help="question set(s): main, preregistered, toy, a YAML path; ':plain,template' picks "
                        "variants (default: the pair's own set)")
    g.add_argument("--ids", default=None, help="comma-separated question ids to keep")
    g.add_argument("--n", type=int, default=n, help=f"samples per question (default {n})")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1, as the papers)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap (default 64 toy, 400 others)")
    g.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default 128 toy, 32 others)")
    g.add_argument("--seed", type=int, default=0, help="same seed, same answers (default 0)")


def sampling_config(args: argparse.Namespace, toy: bool):  # -> SamplingConfig
    from emi.generate import SamplingConfig

    return SamplingConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens or (64 if toy else 400), seed=args.seed,
                          batch_size=args.batch_size or (128 if toy else 32))


def warn_question_mismatch(spec, questions_arg: str | None) -> None:  # noqa: ANN001
    """The toy organism knows only its own world: say so when it is asked other questions."""
    if spec.questions == "toy" and questions_arg and not questions_arg.startswith("toy"):
        print(f"emi: note: pair {spec.name!r} is the toy organism; its world has only the `toy` questions, so "
              f"answers to {questions_arg!r} will be mostly off-topic", file=sys.stderr)


def add_judge_args(p: argparse.ArgumentParser, allow_none: bool = False) -> None:
    g = p.add_argument_group("judge")
    choices = ["toy", "openai", "hf"] + (["none"] if allow_none else [])
    g.add_argument("--judge", choices=choices, default=None,
                   help="toy (exact, for the toy organism), openai (any OpenAI-compatible endpoint), "
                        "hf (a local model)" + (", none (skip judging)" if allow_none else "") +
                        "; default: the pair's own")
    g.add_argument("--judge-model", default=None, help="judge model name (openai) or id/folder (hf)")
    g.add_argument("--judge-url", default=None, help="base URL of an OpenAI-compatible server (vLLM, Ollama, ...)")
    g.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    g.add_argument("--judge-concurrency", type=int, default=8, help="parallel judge requests (default 8)")


def make_judge_from_args(args: argparse.Namespace, default: str):
    from emi.judge import make_judge

    kind = args.judge or default
    if kind == "none":
        return None
    return make_judge(kind, args.judge_model, args.judge_url, args.judge_key_env)


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


def floats(name: str) -> Callable[[str], list[float]]:
    one = finite(name)

    def parse(text: str) -> list[float]:
        return [one(x) for x in text.split(",") if x.strip()]

    return parse


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


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], file: Any = None) -> None:
    """A plain aligned text table: columns = [(key, header)]."""
    file = file or sys.stdout
    cells = [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    print("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)), file=file)
