"""Sampling throughput of emi's in-process samplers, under its interventions, and of a server.

    python bench/sampling_speed.py [--quick] [--server] [--vllm] [--gpu-shape 7b]

For each sampler (``generate``: HF generate with a dynamic KV cache, what emi ran before; ``static``:
static KV cache, decode step compiled on CUDA; ``paged``: continuous batching) and each
intervention (no hook, steering at one layer, ablation at every residual writer): new tokens per
second, greedy, the same prompts (the toy's questions), methods interleaved, medians. Ratios are
against ``generate, no hook`` measured in the same run: the median of the per-round ratios (the two
methods timed side by side in each round) with their min-max. New tokens are counted the same for
every engine (``common.decoded``): an answer's tokens plus the EOS it stopped on. ``--server`` adds the same prompts sampled
through a local ``transformers serve`` (``--engine server``) against in-process ``generate``.
``--vllm`` adds ``--engine vllm`` (the vLLM that ``make vllm`` builds, started by emi with
vllm-lens) with no hook, steering at one layer and ablation at every layer (a hook after every
block), interleaved with in-process ``generate`` and ``static`` under the same three, ratios
against ``generate, no hook`` and against ``vllm, no hook``.

On a CUDA device the model is random weights at a real Qwen shape in bf16 (``--gpu-shape``:
0.5b, 7b; default 7b), and the run also prints the fraction of the device's bf16 roofline: the
forward (prefill) as achieved FLOP/s over peak FLOP/s, decode as achieved weight bytes/s over
peak memory bandwidth (decode streams every weight once per step). ``--peak-tflops`` and
``--peak-tbps`` default to an H100 SXM (989 dense bf16 TFLOP/s, 3.35 TB/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import answer_tokens, interleaved, interleaved_runs, ratio, row_tokens, table, toy  # noqa: E402

from emi.behaviour.questions import load_questions  # noqa: E402
from emi.behaviour.sampling import SamplingConfig, sample_ids  # noqa: E402
from emi.directions.direction import Direction  # noqa: E402
from emi.interventions import hooks  # noqa: E402
from emi.models import layers as L  # noqa: E402


def messages(batch: int) -> list[list[dict[str, str]]]:
    qs = load_questions("toy")
    return [qs[i % len(qs)].messages() for i in range(batch)]


def random_direction(lm) -> Direction:  # noqa: ANN001
    n = L.n_layers(lm.model)
    g = torch.Generator().manual_seed(0)
    return Direction(list(range(n)), torch.randn(n, L.d_model(lm.model), generator=g), torch.ones(n),
                     {"best_layer": n // 2})


def new_tokens(lm, rows: list[list[int]]) -> int:  # noqa: ANN001
    """New tokens of in-process rows, counted as every engine's are (common.decoded: EOS included)."""
    eos, pad = lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id
    return sum(row_tokens(r, eos, pad) for r in rows)


def rows_of(times: dict[str, list[float]], counts: dict[str, int], refs: dict[str, str]) -> list[dict]:
    """One row per method: its new tokens, median tokens/s, and its ratio to each reference (median
    over rounds and min-max, each round's two methods timed side by side)."""
    out = []
    for k, ts in times.items():
        row = {"m": k, "tok": counts[k], "tps": f"{counts[k] / statistics.median(ts):,.1f}"}
        row.update({col: str(ratio(times, counts, k, ref)) for col, ref in refs.items()})
        out.append(row)
    return out


def measure(lm, batch: int, new: int, rounds: int, samplers: list[str]) -> list[dict]:  # noqa: ANN001
    msgs = messages(batch)
    d = random_direction(lm)
    layer = L.n_layers(lm.model) // 2
    interventions = {"no hook": hooks.nothing, "steer 1 layer": lambda: hooks.steer(lm.model, d, 4.0, layers=[layer]),
                     "ablate every writer": lambda: hooks.ablate(lm.model, d)}
    counts: dict[str, int] = {}

    def method(sampler: str, name: str, ctx):  # noqa: ANN001, ANN202
        cfg = SamplingConfig(temperature=0.0, max_new_tokens=new, sampler=sampler, batch_size=batch)

        def f() -> None:
            with ctx():
                counts[key] = new_tokens(lm, sample_ids(lm, msgs, cfg, seed=0))
        key = f"{sampler}, {name}"
        return key, f

    methods = dict(method(s, name, ctx) for s in samplers for name, ctx in interventions.items())
    return rows_of(interleaved_runs(methods, rounds=rounds), counts, {"x": "generate, no hook"})


def report(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    table(rows, [("m", "sampler, intervention"), ("tok", "new tokens"), ("tps", "new tokens/s"),
                 ("x", "vs generate, no hook [min-max over rounds]")])


def server_vs_inprocess(lm, batch: int, new: int, rounds: int) -> None:  # noqa: ANN001
    """The same greedy prompts through `transformers serve` (one request per answer) and in-process."""
    import tempfile

    from emi.engines.server import ServerEngine
    from tests.standins import transformers_serve

    folder = Path(tempfile.mkdtemp()) / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    with transformers_serve(wait_s=120) as url:
        engine = ServerEngine(url, concurrency=batch)
        msgs = messages(batch)
        cfg = SamplingConfig(temperature=0.0, max_new_tokens=new, batch_size=batch)
        counts: dict[str, int] = {}

        def served() -> None:
            counts["transformers serve"] = answer_tokens(engine.chat(str(folder), msgs, cfg, 0))

        def local() -> None:
            counts["in-process generate"] = new_tokens(lm, sample_ids(lm, msgs, cfg, seed=0))

        times = interleaved_runs({"in-process generate": local, "transformers serve": served}, rounds=rounds)
    rows = rows_of(times, counts, {"x": "in-process generate"})
    report(f"server engine vs in-process, batch {batch}, up to {new} new tokens (the server decides EOS)", rows)


def vllm_vs_inprocess(lm, batch: int, new: int, rounds: int, dtype: str) -> None:  # noqa: ANN001
    """The same greedy prompts through --engine vllm and in-process, each with no hook, steering at one
    layer and ablation at every layer, interleaved; one vLLM server for all three."""
    import tempfile

    from emi.engines.served import Ablation, Served, Steering
    from emi.engines.vllm.engine import VllmEngine
    from emi.engines.vllm.launcher import Launcher, vllm_python

    folder = Path(tempfile.mkdtemp()) / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    d = random_direction(lm)
    n = L.n_layers(lm.model)
    layer = n // 2
    u = hooks.unit_vector(d, layer)
    served = {"no hook": Served(str(folder)),
              "steer 1 layer": Served(str(folder), steering=Steering((layer,), hooks.steer_delta(d, layer, 4.0)[None])),
              "ablate every layer": Served(str(folder), ablation=Ablation(tuple(range(n)), u))}
    local = {"no hook": hooks.nothing, "steer 1 layer": lambda: hooks.steer(lm.model, d, 4.0, layers=[layer]),
             "ablate every layer": lambda: hooks.ablate(lm.model, d, layers=list(range(n)))}
    msgs = messages(batch)
    counts: dict[str, int] = {}
    engine = VllmEngine(Launcher(vllm_python(), dtype, log_dir=folder.parent / "logs"), concurrency=batch)
    methods = {}
    try:
        for name, sv in served.items():
            def remote(sv: Served = sv, key: str = f"vllm, {name}") -> None:
                cfg = SamplingConfig(temperature=0.0, max_new_tokens=new, batch_size=batch)
                counts[key] = answer_tokens(engine.sample(sv, lm.tokenizer, msgs, cfg, 0))
            methods[f"vllm, {name}"] = remote
        for sampler in ("generate", "static"):
            for name, ctx in local.items():
                def inproc(ctx=ctx, sampler: str = sampler, key: str = f"{sampler}, {name}") -> None:  # noqa: ANN001
                    cfg = SamplingConfig(temperature=0.0, max_new_tokens=new, sampler=sampler, batch_size=batch)
                    with ctx():
                        counts[key] = new_tokens(lm, sample_ids(lm, msgs, cfg, seed=0))
                methods[f"{sampler}, {name}"] = inproc
        # vLLM's CPU workers spin for a while after their requests: the method timed after them would
        # pay for it (measured: in-process generate at 597 new tokens/s there, 4,863 alone)
        settle = {k: 3.0 for k in methods if k.startswith("vllm")} if not torch.cuda.is_available() else {}
        times = interleaved_runs(methods, rounds=rounds, settle=settle)
    finally:
        engine.close()
    rows = rows_of(times, counts, {"x": "generate, no hook", "y": "vllm, no hook"})
    print(f"\n--engine vllm vs in-process, batch {batch}, up to {new} new tokens ({rounds} rounds: medians, "
          f"ratios [min-max])")
    table(rows, [("m", "engine, intervention"), ("tok", "new tokens (EOS included, every engine)"),
                 ("tps", "new tokens/s"), ("x", "vs generate, no hook"), ("y", "vs vllm, no hook")])


SHAPES = {"0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
          "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)}


def gpu_model(shape: str):  # noqa: ANN201
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from emi.models.loading import LoadedModel, ModelSpec, load_tokenizer
    from emi.organism.kit import checkpoint as toy_checkpoint

    torch.manual_seed(0)
    with torch.device("cuda"):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=32768, rope_theta=1e6,
                                                 **SHAPES[shape])).eval()
        finally:
            torch.set_default_dtype(previous)
    tok = load_tokenizer(toy_checkpoint("base"))
    return LoadedModel(f"qwen2.5-{shape}-random", model, tok, ModelSpec(f"random-qwen2.5-{shape}-shape"))


def roofline(lm, peak_tflops: float, peak_tbps: float) -> None:  # noqa: ANN001
    """Prefill FLOP/s and decode bandwidth against the device's peaks."""
    model = lm.model
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    for batch, seq in ((8, 2048), (32, 512)):
        ids = torch.randint(10, 1000, (batch, seq), device="cuda")

        def fwd(ids: torch.Tensor = ids) -> None:
            with torch.no_grad():
                model(input_ids=ids, logits_to_keep=1)
            torch.cuda.synchronize()
        t = interleaved({"f": fwd}, rounds=5)["f"]
        flops = 2 * params * batch * seq  # matmuls; attention adds ~4*layers*d*seq^2/2 more, not counted
        rows.append({"m": f"forward, {batch} x {seq} tokens", "v": f"{batch * seq / t:,.0f} tok/s",
                     "r": f"{flops / t / 1e12 / peak_tflops:.1%} of {peak_tflops:.0f} TFLOP/s"})
    for batch in (1, 32):
        msgs = messages(batch)
        for sampler in ("generate", "static"):
            cfg = SamplingConfig(temperature=0.0, max_new_tokens=128, sampler=sampler, batch_size=batch)
            count: dict[str, int] = {}

            def dec(msgs: list = msgs, cfg: SamplingConfig = cfg, count: dict = count) -> None:
                count["n"] = new_tokens(lm, sample_ids(lm, msgs, cfg, seed=0))
                torch.cuda.synchronize()
            t = interleaved({"d": dec}, rounds=3)["d"]
            steps_per_s = count["n"] / batch / t
            rows.append({"m": f"decode ({sampler}), batch {batch}", "v": f"{count['n'] / t:,.0f} tok/s",
                         "r": f"{weight_bytes * steps_per_s / 1e12 / peak_tbps:.1%} of {peak_tbps} TB/s"})
    print(f"\nroofline, {torch.cuda.get_device_name()}, {params / 1e9:.2f}B params in bf16")
    table(rows, [("m", "what"), ("v", "throughput"), ("r", "fraction of the bf16 roofline")])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the toy only")
    p.add_argument("--server", action="store_true", help="also time transformers serve (needs the dev extras)")
    p.add_argument("--vllm", action="store_true", help="also time --engine vllm (needs `make vllm` or a GPU vLLM env)")
    p.add_argument("--gpu-shape", default="7b", choices=sorted(SHAPES))
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--peak-tbps", type=float, default=3.35)
    args = p.parse_args()
    samplers = ["generate", "static", "paged"]
    if torch.cuda.is_available():
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
        lm = gpu_model(args.gpu_shape)
        report(f"Qwen2.5-{args.gpu_shape} shape (random, bf16), batch 32, 256 new tokens",
               measure(lm, 32, 256, 3, samplers))
        if args.vllm:
            vllm_vs_inprocess(lm, 32, 256, 3, "bfloat16")
        roofline(lm, args.peak_tflops, args.peak_tbps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    lm = toy()
    report("toy (1.1M params), batch 32, 48 new tokens", measure(lm, 32, 48, 3, samplers))
    if not args.quick:
        from emi.models.loading import LoadedModel, ModelSpec
        from tests.standins import qwen2_5_0_5b_config, random_qwen2

        small = LoadedModel("qwen05-4layers", random_qwen2(qwen2_5_0_5b_config(num_hidden_layers=4)), lm.tokenizer,
                            ModelSpec("random-qwen2.5-0.5b-shape-4-layers"))
        report("Qwen2.5-0.5B width, 4 layers (random, fp32), batch 8, 16 new tokens",
               measure(small, 8, 16, 3, samplers))
    if args.server:
        server_vs_inprocess(lm, 32, 48, 3)
    if args.vllm:
        vllm_vs_inprocess(lm, 32, 48, 3, "float32")


if __name__ == "__main__":
    main()
