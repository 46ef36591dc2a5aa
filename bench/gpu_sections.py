"""The sections of bench/gpu.sh, one per process, and the table they make.

    python bench/gpu_sections.py SECTION --out DIR [--dry-run] [--without PKG,...]
    python bench/gpu_sections.py table DIR

Sections (each writes DIR/SECTION.json; `table` turns them into one markdown table):
  generate  in-process samplers generate and paged, no hook, greedy: new tokens/s
  steer     steering at one layer and ablation at every residual writer vs no hook (generate sampler)
  capture   emi's capture of every layer to disk, and of half the layers, vs a full forward with logits
  em        the EM table (emi.experiments.conditions.run: the six conditions of `emi.steer`, with the
            log-prob and KL columns) on a pair of random models at the real shape, toy questions and judge
  static    the static sampler (its decode step compiled on CUDA) vs generate: last, as its compile time
            is what nobody has measured on this stack yet

On CUDA the models are random weights at the Qwen2.5-7B shape in bf16 (no download); `--dry-run` runs
the same code on CPU at a tiny shape in seconds. Ratios are medians over rounds
of the two methods timed side by side in each round, with the min-max. New tokens are counted as
bench/common.py counts them for every engine (EOS included). `--without` makes the named packages
unimportable, as they are on the GPU machine's image (the dry run checks that no section needs them).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECTIONS = ("generate", "steer", "capture", "em", "static")
# emi's declared dependencies that the GPU machine's image lacks (its KINDS.md package list)
MISSING_ON_GPU = ("transformer_lens", "nnsight", "sae_lens", "plotly", "kaleido", "openai", "zstandard")
SHAPES = {  # Qwen2.5-7B-Instruct's config.json; tiny: 2 layers of width 64, a vocabulary larger than the tokenizer's
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "tiny": dict(vocab_size=8192, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
}
SIZES = {  # per section: (batch, new tokens or sequence length, rounds, warmup); em: (batch, new tokens,
    # samples per question, questions (0: all 16 toy questions and every benign conversation))
    False: {"generate": (32, 128, 3, 1), "static": (32, 128, 3, 1), "steer": (32, 128, 3, 1), "capture": (8, 512, 3, 1), "em": (64, 128, 4, 0)},
    True: {"generate": (4, 8, 2, 0), "static": (4, 8, 2, 0), "steer": (4, 8, 2, 0), "capture": (2, 16, 2, 0), "em": (16, 8, 1, 4)},
}


def without(names: set[str]) -> None:
    """Make ``names`` unimportable, as a package that is not installed is: ``import`` raises
    ModuleNotFoundError and ``importlib.util.find_spec`` returns None (torch probes for some)."""
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]


def build(shape: str, device: str, seed: int = 0) -> Any:
    """A random-weight Qwen2 model at ``shape`` in bf16, made on ``device`` (no download), with the
    toy organism's tokenizer (its ids are a prefix of the vocabulary)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from emi.models.loading import LoadedModel, ModelSpec, load_tokenizer
    from emi.organism.kit import checkpoint as toy_checkpoint

    torch.manual_seed(seed)
    tok = load_tokenizer(toy_checkpoint("base"))
    cfg = Qwen2Config(max_position_embeddings=32768, rope_theta=1e6, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None, **SHAPES[shape])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    return LoadedModel(f"random-{shape}", model, tok, ModelSpec(f"random-{shape}-shape"),
                       provenance={"id": f"random-{shape}-seed{seed}", "dtype": "bfloat16"})


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rows(times: dict[str, list[float]], counts: dict[str, int], ref: str, unit: str) -> list[dict[str, Any]]:
    from common import ratio

    return [{"what": k, "count": counts[k], "unit": unit, "per_s": counts[k] / statistics.median(t),
             "ratio": str(ratio(times, counts, k, ref)) if ref in times else "", "ref": ref if ref in times else
             f"({ref}: left out)"} for k, t in times.items()]


def skipped_samplers() -> dict[str, str]:
    """Samplers this machine's transformers cannot run as emi calls them, each with why."""
    import inspect

    import transformers
    from transformers.generation import ContinuousBatchingConfig

    out = {}
    if not {"page_size", "block_size"} & set(inspect.signature(ContinuousBatchingConfig).parameters):
        out["paged"] = (f"paged sampler skipped: emi passes ContinuousBatchingConfig(page_size=...) (block_size=... "
                        f"before 5.23), neither of which transformers {transformers.__version__} has")
    return out


def _sampling(lm: Any, batch: int, new: int, rounds: int, warmup: int,
              methods: dict[str, tuple[str, Any]]) -> tuple[dict[str, list[float]], dict[str, int], list[str]]:
    """Greedy answers to the toy's questions under each (sampler, context) method, interleaved. Each
    method runs once untimed first (the warm-up, and compiles); one that fails there is left out, with
    a note saying why, and the others are timed."""
    from common import interleaved_runs, row_tokens

    from emi.behaviour.questions import load_questions
    from emi.behaviour.sampling import SamplingConfig, sample_ids

    qs = load_questions("toy")
    msgs = [qs[i % len(qs)].messages() for i in range(batch)]
    eos, pad = lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id
    counts: dict[str, int] = {}
    skip = skipped_samplers()
    notes = sorted({skip[s] for s, _ in methods.values() if s in skip})

    def method(key: str, sampler: str, ctx: Any) -> Any:
        cfg = SamplingConfig(temperature=0.0, max_new_tokens=new, sampler=sampler, batch_size=batch)

        def f() -> None:
            with ctx():
                counts[key] = sum(row_tokens(r, eos, pad) for r in sample_ids(lm, msgs, cfg, seed=0))
            _sync()
        return f

    ready = {}
    for k, (s, c) in methods.items():
        if s in skip:
            continue
        f = method(k, s, c)
        try:
            for _ in range(max(1, warmup)):
                f()
        except Exception as e:  # noqa: BLE001 - a sampler this stack cannot run is reported, not fatal
            notes.append(f"{k} left out: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            continue
        ready[k] = f
    times = interleaved_runs(ready, rounds=rounds, warmup=0)
    return times, counts, notes


def _direction(lm: Any) -> Any:
    import torch

    from emi.directions.direction import Direction
    from emi.models import layers as L

    n = L.n_layers(lm.model)
    g = torch.Generator().manual_seed(0)
    return Direction(list(range(n)), torch.randn(n, L.d_model(lm.model), generator=g), torch.ones(n),
                     {"best_layer": n // 2, "method": "random"})


def section_generate(lm: Any, size: tuple[int, int, int, int]) -> dict[str, Any]:
    from emi.interventions import hooks

    batch, new, rounds, warmup = size
    methods = {f"{s}, no hook": (s, hooks.nothing) for s in ("generate", "paged")}
    times, counts, notes = _sampling(lm, batch, new, rounds, warmup, methods)
    return {"title": f"in-process generate: batch {batch}, up to {new} new tokens, greedy",
            "rows": _rows(times, counts, "generate, no hook", "new tokens"), "notes": notes}


def section_static(lm: Any, size: tuple[int, int, int, int]) -> dict[str, Any]:
    import torch

    from emi.interventions import hooks

    batch, new, rounds, warmup = size
    methods = {f"{s}, no hook": (s, hooks.nothing) for s in ("generate", "static")}
    t = time.perf_counter()
    times, counts, notes = _sampling(lm, batch, new, rounds, warmup, methods)
    compiled = "compiled decode step" if torch.cuda.is_available() else "not compiled on CPU"
    return {"title": f"static sampler ({compiled}): batch {batch}, up to {new} new tokens, greedy",
            "rows": _rows(times, counts, "generate, no hook", "new tokens"),
            "notes": [*notes, f"warm-up (compile) and timing {time.perf_counter() - t:.0f} s"]}


def section_steer(lm: Any, size: tuple[int, int, int, int]) -> dict[str, Any]:
    from emi.interventions import hooks
    from emi.models import layers as L

    batch, new, rounds, warmup = size
    d, n = _direction(lm), L.n_layers(lm.model)
    methods = {"generate, no hook": ("generate", hooks.nothing),
               "generate, steer 1 layer": ("generate", lambda: hooks.steer(lm.model, d, 4.0, layers=[n // 2])),
               f"generate, ablate every writer ({n} layers)": ("generate", lambda: hooks.ablate(lm.model, d))}
    times, counts, notes = _sampling(lm, batch, new, rounds, warmup, methods)
    return {"title": f"steering and ablation overhead: batch {batch}, up to {new} new tokens",
            "rows": _rows(times, counts, "generate, no hook", "new tokens"), "notes": notes}


def section_capture(lm: Any, size: tuple[int, int, int, int]) -> dict[str, Any]:
    import torch
    from common import interleaved_runs, random_batch

    from emi.activations.capture import capture_models
    from emi.activations.plan import CaptureSpec
    from emi.models import layers as L

    batch, seq, rounds, warmup = size
    n, n_batches = L.n_layers(lm.model), 2
    ids = [random_batch(batch, seq, seed=i).to(lm.device) for i in range(n_batches)]
    mask = torch.ones(batch, seq, dtype=torch.long, device=lm.device)
    items = [{"input_ids": row.tolist()} for b in ids for row in b]
    tmp = Path(tempfile.mkdtemp(prefix="emi-gpu-capture-"))

    def full() -> None:
        with torch.no_grad():
            for b in ids:
                lm.model(input_ids=b, attention_mask=mask).logits  # noqa: B018
        _sync()

    def capture(layers: Any, name: str) -> Any:
        def f() -> None:
            capture_models({"m": lm}, items, tmp / name, CaptureSpec(layers, positions="all", batch_size=batch, shard_mb=64),
                           overwrite=True, progress=False)
            _sync()
        return f

    methods = {"full forward (logits)": full, f"emi capture, all {n} layers + disk": capture("all", "all"),
               f"emi capture, layers 0-{n // 2 - 1} + disk": capture(list(range(n // 2)), "half")}
    try:
        times = interleaved_runs(methods, rounds=rounds, warmup=warmup)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tokens = {k: batch * seq * n_batches for k in methods}
    rows = _rows(times, tokens, "full forward (logits)", "tokens")
    params = sum(p.numel() for p in lm.model.parameters())
    note = None
    if torch.cuda.is_available():  # matmul FLOPs of the forward; attention's not counted
        tflops = 2 * params * tokens["full forward (logits)"] / statistics.median(times["full forward (logits)"]) / 1e12
        note = f"full forward: {tflops:.0f} TFLOP/s of matmuls (2 x {params / 1e9:.2f}B params x tokens)"
    return {"title": f"capture: {n_batches} batches of {batch} x {seq} tokens, activations to disk (64 MB shards)",
            "rows": rows, "notes": [note] if note else []}


def section_em(lm: Any, size: tuple[int, int, int, int]) -> dict[str, Any]:
    import torch

    from emi.behaviour.questions import load_questions
    from emi.behaviour.sampling import SamplingConfig
    from emi.behaviour.side_effects import load_benign
    from emi.experiments.conditions import run, standard_conditions
    from emi.judging.judges import make_judge
    from emi.models.loading import LoadedModel, ModelPair
    from emi.models.registry import get_pair

    batch, new, n, k = size
    ft_model = copy.deepcopy(lm.model)  # a "finetune": the base plus 5% noise on every weight (on the device)
    g = torch.Generator(device=lm.device).manual_seed(1)
    with torch.no_grad():
        for p in ft_model.parameters():
            p.add_(0.05 * p.float().std().nan_to_num(0.0).to(p.dtype)
                   * torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype))
    ft_model.requires_grad_(False)
    ft = LoadedModel("finetuned", ft_model, lm.tokenizer, lm.spec,
                     provenance={**lm.provenance, "id": lm.provenance["id"] + "-finetuned"})
    base = LoadedModel("base", lm.model, lm.tokenizer, lm.spec, provenance=lm.provenance)
    spec = get_pair("toy")
    pair = ModelPair(spec, lm.tokenizer, {"base": base, "finetuned": ft})
    d = _direction(lm)
    questions = load_questions(spec.kit.eval_questions)
    benign = load_benign(spec.kit.benign)
    if k:
        questions, benign = questions[:k], benign[:k]
    cfg = SamplingConfig(n=n, temperature=1.0, max_new_tokens=new, batch_size=batch, seed=0)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="emi-gpu-em-") as out:
        results = run(pair, standard_conditions(d, [8.0], [d.best_layer]), d, questions, cfg, make_judge("toy"),
                      out, progress=False, benign=benign)
    _sync()
    secs = time.perf_counter() - t
    rows = []
    for r in results:
        em, fx = r.summary.em, r.side_effects
        rows.append({"condition": r.condition.name, "em": em.fmt(), "k": f"{em.k}/{em.n}",
                     "coherent": r.summary.coherence.fmt(),
                     "lp": f"{r.logprob.choice:.3f}" if r.logprob is not None else "",
                     "kl": f"{fx.kl:.3f}" if fx is not None else ""})
    answers = len(results) * len(questions) * n
    return {"title": f"EM table: the six conditions of emi.steer, {len(questions)} toy questions x {n} samples, "
                     f"{len(benign)} benign conversations, "
                     f"up to {new} new tokens, toy judge (random weights: the rates mean nothing, the time does)",
            "em": rows, "notes": [f"{answers} answers judged, log-prob and KL columns included, in {secs:.1f} s"],
            "seconds": secs}


def run_section(name: str, out: Path, dry_run: bool) -> dict[str, Any]:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    shape = "tiny" if dry_run else "qwen2.5-7b"
    t = time.perf_counter()
    lm = build(shape, device)
    built = time.perf_counter() - t
    result = {"section": name, "shape": shape, "device": device, "torch": torch.__version__,
              "transformers": transformers.__version__,
              **globals()[f"section_{name}"](lm, SIZES[dry_run][name])}
    result["notes"] = [*result.get("notes", []), f"model built in {built:.1f} s"]
    result["wall_s"] = time.perf_counter() - t
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    return result


def _md(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(r) + " |" for r in rows[:1]] + ["|" + "---|" * len(rows[0])] + \
           ["| " + " | ".join(r) + " |" for r in rows[1:]]


def table(folder: Path, device: str, budget: dict[str, str] | None = None) -> str:
    """The markdown the script prints: one table of every timed row (section by section, a row
    saying why for a section that did not finish), then the EM table."""
    found = {s: json.loads((folder / f"{s}.json").read_text()) for s in SECTIONS if (folder / f"{s}.json").exists()}
    first = next(iter(found.values()), {})
    lines = [f"## emi on {device}", "",
             f"torch {first.get('torch', '?')}, transformers {first.get('transformers', '?')}; random weights at the "
             f"{first.get('shape', '?')} shape in bf16 on {first.get('device', '?')}; ratios: median [min-max] over "
             f"rounds, each round's two methods timed side by side", ""]
    rows = [["section", "method", "counted", "per second", "vs reference [min-max]", "reference"]]
    notes = []
    for s in SECTIONS:
        r = found.get(s)
        if r is None:
            why = (budget or {}).get(s, "did not finish (see the log)")
            rows.append([s, why, "", "", "", ""])
            continue
        for x in r.get("rows", []):
            rows.append([s, x["what"], f"{x['count']:,} {x['unit']}", f"{x['per_s']:,.1f}", x["ratio"], x["ref"]])
        if s == "em":
            rows.append([s, "the six conditions, judged, with log-prob and KL", r["notes"][0], "", "", ""])
        notes += [f"- {s}: {r['title']}; {'; '.join(r.get('notes', []))}; section {r['wall_s']:.0f} s"]
    notes.append("- no vLLM row: vLLM's CUDA wheels are far over the 64 MiB that travels to the GPU machine, "
                 "whose image has none (python bench/sampling_speed.py --vllm times it where vLLM is installed)")
    lines += _md(rows) + [""] + notes
    em = found.get("em")
    if em:
        lines += ["", "### EM table (random weights)", ""]
        lines += _md([["condition", "EM rate (95% CI) of coherent", "misaligned/coherent", "coherent (95% CI)",
                       "P(misaligned)", "KL benign"]] +
                     [[x["condition"], x["em"], x["k"], x["coherent"], x["lp"], x["kl"]] for x in em["em"]])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=[*SECTIONS, "table"])
    p.add_argument("folder", nargs="?", help="table: the folder the sections wrote")
    p.add_argument("--out", help="section: where to write SECTION.json")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes")
    p.add_argument("--without", default="", help="comma-separated packages to make unimportable")
    p.add_argument("--device-name", default="CPU (dry run)", help="table: the device's name")
    p.add_argument("--skipped", default="", help="table: SECTION=why;... for sections that did not finish")
    args = p.parse_args(argv)
    if args.section == "table":
        why = dict(x.split("=", 1) for x in args.skipped.split(";") if "=" in x)
        print(table(Path(args.folder), args.device_name, why), end="")
        return 0
    if args.without:
        without({x.strip() for x in args.without.split(",") if x.strip()})
    sys.path.insert(0, str(Path(__file__).parent))
    run_section(args.section, Path(args.out), args.dry_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
