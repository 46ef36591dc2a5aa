"""--engine vllm on a Gated DeltaNet hybrid (Qwen3-Next) against a REAL vLLM on CPU, which runs
these layers in bf16 only: an untied-head stand-in and a full finetune of it (no LoRA: see
``next_pair``), the base on one server for the module. Greedy tokens are not comparable here (bf16 reorders near-ties from the first token), so
every served condition (the checkpoint, the adapter, steering as a vllm-lens vector, steering at
prompt positions and ablation at a layer as hooks in the server) is compared by per-token log-probs
against the in-process bf16 model under the same hooks, within the fingerprint's bf16 tolerance,
and each intervention moves them by more than that (not vacuous); then ``python -m emi.steer
--engine vllm --dtype bf16`` runs the six conditions there. Without `make vllm` the module skips,
except under CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emi.engines.fingerprint import PROMPT, TOLERANCE, ask, gap, reference
from emi.engines.served import Ablation, Served, Steering
from emi.engines.vllm.engine import VllmEngine
from emi.engines.vllm.launcher import DEFAULT_PYTHON, Launcher, adapter_name
from emi.engines.vllm.lens import lens_xargs
from emi.interventions import hooks
from emi.models.chat import CHAT, prompt_ids
from emi.models.loading import ModelSpec, load_model
from tests.behaviour.test_vllm_engine import direction
from tests.standins import (
    build_model,
    check_elicitations,
    qwen_tokenizer,
    require_vllm_engine,
    save_checkpoint,
)

pytestmark = pytest.mark.slow
require_vllm_engine()

BF16 = TOLERANCE["bfloat16"]


@pytest.fixture(scope="module")
def next_pair(tmp_path_factory):
    """A Qwen3-Next stand-in (attention heads of 32, linear-attention heads of 128 as vLLM's CPU kernel
    needs; its own head, scaled by 10 so next tokens are peaked as a trained model's), saved in bf16,
    a full finetune of it (every weight moved by 5% noise), and vLLM serving the base (bf16). No LoRA:
    vLLM 0.32's CPU build runs MoE layers through a Triton kernel when LoRA is enabled, which CPU
    Triton lacks, and its Qwen3-Next needs an MoE layer."""
    root = tmp_path_factory.mktemp("vllm-qwen3-next")
    tok = qwen_tokenizer()
    m = build_model("qwen3_next", len(tok), 1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                    head_dim=32, linear_key_head_dim=128, linear_value_head_dim=128, tie_word_embeddings=False)
    with torch.no_grad():
        m.lm_head.weight.mul_(10.0)
    m = m.to(torch.bfloat16)
    base = save_checkpoint(m, tok, root / "qwen3_next-base")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * p.float().std().nan_to_num(0.0) * torch.randn(p.shape, generator=g).to(p.dtype))
    finetuned = save_checkpoint(m, tok, root / "qwen3_next-finetuned")
    eng = VllmEngine(Launcher(DEFAULT_PYTHON, "bfloat16", log_dir=root / "logs"), concurrency=8)
    eng.server_for(str(base))
    yield eng, base, finetuned
    eng.close()


def gaps(eng: VllmEngine, lm, served: Served, intervention=None) -> tuple[float, float]:
    """(the largest gap between vLLM's top-5 log-probs of its greedy answer under ``served`` and the
    in-process model's under ``intervention``; the largest between vLLM's and the unmodified model's)."""
    ids = prompt_ids(lm.tokenizer, [PROMPT], CHAT)[0]
    model = adapter_name(served.adapter) if served.adapter else served.checkpoint
    xargs = lens_xargs(served, len(ids), hooks_ok=True)
    got = ask(f"{eng.server.url}/v1", model, ids, lm.tokenizer, {"vllm_xargs": xargs} if xargs else {})
    assert got is not None
    tokens, tops = got
    with intervention() if intervention else hooks.nothing():
        same = gap(reference(lm, ids, tokens, hooked=True), tops).gap
    return same, gap(reference(lm, ids, tokens), tops).gap


def check_role(eng: VllmEngine, base: Path, adapter: str | None) -> None:
    lm = load_model(ModelSpec(str(base), adapter=adapter), dtype="bf16", device="cpu")
    d = direction(lm)
    u = hooks.unit_vector(d, 1)
    st = Steering((1,), hooks.steer_delta(d, 1, 30.0)[None], "all")
    cases = {
        "none": (None, Served(str(base), adapter)),
        "steer all": (lambda: hooks.steer(lm.model, d, 30.0, layers=[1]), Served(str(base), adapter, steering=st)),
        "steer prompt": (lambda: hooks.steer(lm.model, d, 30.0, layers=[1], positions="prompt"),
                         Served(str(base), adapter, steering=Steering((1,), st.deltas, "prompt"))),
        "ablate L1": (lambda: hooks.ablate(lm.model, d, layers=[1]), Served(str(base), adapter, ablation=Ablation((1,), u))),
    }
    measured = {name: gaps(eng, lm, served, ctx) for name, (ctx, served) in cases.items()}
    for name, (same, plain) in measured.items():
        print(f"qwen3_next {name}: vLLM vs in-process bf16 {same:.4f} nats; vs the unmodified model {plain:.4f}")
    assert all(same <= BF16 for same, _ in measured.values()), measured
    # each steering moves the log-probs beyond the tolerance (so the equality is not vacuous)
    assert all(measured[k][1] > BF16 for k in ("steer all", "steer prompt")), measured


def test_every_condition_on_qwen3_next_matches_in_process_bf16_log_probs(next_pair, monkeypatch):
    """Every served condition of the module docstring within the bf16 tolerance; elicitations (a
    system prompt with in-context examples, the code context) send vLLM the ids sampled in process."""
    eng, base, _ = next_pair
    check_role(eng, base, None)
    lm = load_model(ModelSpec(str(base)), dtype="bf16", device="cpu")
    check_elicitations(eng, lm, Served(str(base)), monkeypatch, greedy_equal=False)


def test_steer_runs_the_six_conditions_of_a_qwen3_next_pair_on_vllm_bf16(next_pair, tmp_path, monkeypatch,
                                                                        judge_server, capsys):
    """python -m emi.steer --engine vllm --dtype bf16: base, finetuned, ablation at a layer (a hook in
    the server) and steering (a vllm-lens vector), with their random controls, all sampled by vLLM on
    two servers (the module's base, then the finetune's), each checkpoint fingerprinted first (the
    verdicts beside the pair caches). A direction file is given: extracting one in bf16 is not what
    this test is about (test_real_path.py extracts Qwen3-Next's in process). Asked in the code
    context with k=2 insecure-code examples: every prompt vLLM ran is the one emi renders from the
    answer's record (greedy answers are not compared in bf16)."""
    from emi import cli, steer
    from emi.engines.fingerprint import cache_file
    from emi.models.loading import load_tokenizer
    from tests.standins import Wire, rendered

    eng, base, finetuned = next_pair
    monkeypatch.setattr(cli, "make_engine", lambda args, logs: eng)
    monkeypatch.setattr(eng, "close", lambda: None)
    monkeypatch.setattr(eng.fingerprints, "cache", cache_file(tmp_path / "acts"))
    out = tmp_path / "run"
    lm = load_model(ModelSpec(str(base)), dtype="bf16", device="cpu")
    direction(lm).save(tmp_path / "d")
    del lm
    wire = Wire(monkeypatch)
    assert steer.main(["--base", str(base), "--finetuned", str(finetuned), "--direction", str(tmp_path / "d.json"), "--judge", "openai", "--judge-url",
                       judge_server.url, "--judge-key-env", "EMI_TEST_NO_KEY", "--judge-model", "j",
                       "--questions", "main:plain", "--n", "1", "--max-new-tokens", "4", "--device", "cpu",
                       "--dtype", "bf16", "--alpha", "4", "--ablate-layers", "1", "--no-figure", "--no-side-effects",
                       "--root", str(tmp_path / "acts"), "--engine", "vllm", "--context", "code", "--in-context",
                       "insecure-code", "--k", "2", "--out", str(out)]) == 0
    assert sorted(wire.prompts()) == rendered(out / "answers.jsonl", load_tokenizer(str(base))) and wire.requests
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["condition"] for r in rows] == ["base", "finetuned", "finetuned - persona", "finetuned - random",
                                             "base + 4 persona", "base + 4 random"]
    assert {r["engine"] for r in rows} == {"vllm"} and all(r["n_answers"] == 8 for r in rows)
    verdicts = json.loads(cache_file(tmp_path / "acts").read_text()).values()
    assert sorted(Path(v["checkpoint"]).name for v in verdicts) == ["qwen3_next-base", "qwen3_next-finetuned"]
    assert all(v["dtype"] == "bfloat16" and v["gap"] <= BF16 for v in verdicts)
    assert "engine: vLLM (started by emi): base, finetuned" in capsys.readouterr().err
