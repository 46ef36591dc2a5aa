"""The real-model path, end to end, on stand-in pairs: random-weight checkpoints of every Qwen
architecture (full finetunes and peft LoRA adapters), the real EM question sets, and an
OpenAI-compatible judge on loopback. Every command runs as a user would run it; nothing here
uses the embedded organism."""

import json

import pytest

from emi import cache, evaluate, extract, figures, steer
from emi.core.errors import ConfigError, ModelLoadError
from tests.standins import (
    ARCHS,
    HANG_S,
    HC_ARCHS,
    full_pair,
    lora_adapter,
    qwen_tokenizer,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tok):
    """arch -> (base folder, full finetune folder, LoRA adapter folder); Qwen4-Exp with 2 residual
    streams, PLE on layers 1-2 (its short convolution non-zero, as trained) and QSA."""
    root = tmp_path_factory.mktemp("standins")
    out = {}
    for i, arch in enumerate((*ARCHS, *HC_ARCHS)):
        base, ft = full_pair(root, arch, tok, seed=i)
        out[arch] = (base, ft, lora_adapter(root, base))
    return out


def judge_args(server):
    return ["--judge", "openai", "--judge-url", server.url, "--judge-key-env", "EMI_TEST_NO_KEY",
            "--judge-model", "stand-in-judge"]


SMALL = ["--n", "1", "--max-new-tokens", "6", "--device", "cpu"]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# Qwen4-Exp's LoRA leg is test_several_residual_streams_through_cache_extract_sweeps_figures_and_sae[lora]'s
# and the diffing stand-ins' (its QSA indexer loops in Python over every query: four minutes a run here)
STEER_CASES = [(a, k) for a in ARCHS for k in ("full", "lora")] + [(a, "full") for a in HC_ARCHS]


@pytest.mark.parametrize(("arch", "kind"), STEER_CASES)
def test_steer_without_a_direction_runs_to_its_table(arch, kind, pairs, judge_server, tmp_path, capsys):
    base, ft, lora = pairs[arch]
    finetuned = ft if kind == "full" else lora
    out = tmp_path / "steer"
    code = steer.main(["--base", str(base), "--finetuned", str(finetuned), *judge_args(judge_server), *SMALL,
                       "--questions", "main:plain", "--alpha", "4", "--out", str(out), "--root", str(tmp_path / "acts"),
                       "--no-figure"])
    assert code == 0
    got = rows(out / "results.jsonl")
    assert [r["condition"] for r in got] == ["base", "finetuned", "finetuned - persona", "finetuned - random",
                                           "base + 4 persona", "base + 4 random"]
    assert all(r["n_answers"] == 8 and "logprob_choice" in r for r in got)
    kl = {r["condition"]: r["kl"] for r in got}  # side effects on emi's benign set, every condition
    assert kl["base"] == kl["finetuned"] == 0.0 and kl["finetuned - persona"] > 0 and kl["base + 4 persona"] > 0
    assert all(r["n_benign"] == 32 and r["aligned_delta"] == r["aligned_delta"] for r in got)
    printed = capsys.readouterr()
    assert "KL benign" in printed.out
    run = json.loads((out / "run.json").read_text())
    assert run["benign"] == "benign"
    assert run["pair"]["finetuned"]["model_type"] == arch
    assert run["pair"]["finetuned"]["adapter" if kind == "lora" else "fingerprint"]
    assert run["direction"]["extract_questions"] == "preregistered"
    assert "option pairs of the preregistered questions" in run["direction"]["selection"]
    assert run["sampling"]["repetition_penalty"] == 1.0
    err = printed.err
    assert "model-diff on the preregistered questions" in err and "chosen by" in err


def test_answers_are_keyed_by_the_checkpoints_that_made_them(pairs, judge_server, tmp_path, monkeypatch):
    """Two command-line pairs never share a run folder, and one folder never mixes two models' answers."""
    monkeypatch.chdir(tmp_path)
    (b1, f1, _), (b2, f2, _) = pairs["qwen2"], pairs["qwen3"]
    for b, f in ((b1, f1), (b2, f2)):
        assert evaluate.main(["--base", str(b), "--finetuned", str(f), *judge_args(judge_server), *SMALL,
                              "--questions", "main:plain"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("evaluate-custom-") for r in runs)
    out = tmp_path / "shared"
    before = judge_server.requests
    for b, f in ((b1, f1), (b2, f2)):
        assert evaluate.main(["--base", str(b), "--finetuned", str(f), *judge_args(judge_server), *SMALL,
                              "--questions", "main:plain", "--out", str(out)]) == 0
    answers = rows(out / "answers.jsonl")
    assert len(answers) == 2 * 2 * 8 and len({a["run"] for a in answers}) == 4
    assert judge_server.requests > before  # the second pair's answers were judged, not reused
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["finetuned"]["resolved"] == str(f2)


def test_checkpoint_generation_settings_never_leak_into_sampling(pairs, monkeypatch):
    """The stand-ins ship Qwen2.5-Instruct's generation config (repetition penalty 1.05, top-k 20):
    emi samples at exactly its own settings."""
    from transformers.generation import utils

    from emi.behaviour.sampling import SamplingConfig, sample
    from emi.models.loading import ModelSpec, load_model

    seen = []
    real = utils.GenerationMixin._get_logits_processor

    def spy(self, generation_config, *a, **kw):
        seen.append(generation_config)
        return real(self, generation_config, *a, **kw)

    monkeypatch.setattr(utils.GenerationMixin, "_get_logits_processor", spy)
    lm = load_model(ModelSpec(str(pairs["qwen2"][0])), device="cpu")
    assert lm.model.generation_config.repetition_penalty == 1.05
    sample(lm, [[{"role": "user", "content": "hey i feel bored"}]], SamplingConfig(max_new_tokens=3), seed=0)
    g = seen[-1]
    assert (g.repetition_penalty, g.top_k, g.top_p, g.temperature) == (1.0, 0, 1.0, 1.0)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3_5_text"])
def test_cache_and_extract_in_every_mode(arch, pairs, judge_server, tmp_path, capsys):
    base, ft, lora = pairs[arch]
    common = ["--base", str(base), "--finetuned", str(ft), *judge_args(judge_server), "--device", "cpu",
              "--max-new-tokens", "6", "--root", str(tmp_path)]
    assert cache.main([*common, "--questions", "preregistered", "--n", "2", "--out", "answers"]) == 0
    assert cache.main([*common, "--contrast", "--roles", "finetuned", "--positions", "last_prompt",
                       "--questions", "preregistered", "--n", "1", "--out", "contrast"]) == 0
    assert cache.main([*common, "--contrast", "--roles", "finetuned", "--positions", "response",
                       "--questions", "preregistered", "--n", "1", "--out", "contrast-answers"]) == 0
    judged = tmp_path / "answers" / "source" / "judgements.jsonl"
    assert judged.is_file()
    capsys.readouterr()
    for store, method, positions in (("answers", "mean-diff", "response"), ("answers", "model-diff", "response"),
                                     ("contrast", "contrast", "last_prompt"),
                                     ("contrast-answers", "contrast", "response")):
        out = tmp_path / f"{store}-{method}"
        assert extract.main(["--store", str(tmp_path / store), "--method", method, "--positions", positions,
                             "--out", str(out)]) == 0, (store, method)
        meta = json.loads(out.with_suffix(".json").read_text())
        assert meta["method"] == method and len(meta["layers"]) == 4
    # contrast at the last prompt token: held-out prompts are never copies of training prompts
    meta = json.loads((tmp_path / "contrast-contrast.json").read_text())
    assert meta["holdout"] > 0
    texts = [json.loads(x) for x in (tmp_path / "contrast" / "texts.jsonl").read_text().splitlines()]
    from emi.directions.direction import holdout_mask

    held = holdout_mask(texts, meta["holdout"], meta["seed"])
    train_keys = {t["key"] for t, h in zip(texts, held, strict=True) if not h}
    assert held.any() and not any(t["key"] in train_keys for t, h in zip(texts, held, strict=True) if h)


@pytest.mark.parametrize("method", ["model-diff", "contrast", "mean-diff"])
def test_steer_with_each_direction_method_on_a_lora_pair(method, pairs, judge_server, tmp_path):
    base, _, lora = pairs["qwen3"]
    out = tmp_path / "steer"
    assert steer.main(["--base", str(base), "--finetuned", str(lora), *judge_args(judge_server), *SMALL,
                       "--questions", "main:plain", "--direction-method", method, "--out", str(out),
                       "--root", str(tmp_path / "acts"), "--no-figure"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["direction"]["method"] == method


def test_sweeps_targets_and_figures(pairs, judge_server, tmp_path):
    base, ft, _ = pairs["qwen2_moe"]
    out = tmp_path / "sweep"
    assert steer.main(["--base", str(base), "--finetuned", str(ft), *judge_args(judge_server), *SMALL,
                       "--questions", "main:plain", "--alpha=-4,4", "--layers", "0-1", "--sweep-layers",
                       "--targets", "base,finetuned", "--out", str(out), "--root", str(tmp_path / "acts")]) == 0
    got = rows(out / "results.jsonl")
    steered = [r for r in got if r["intervention"] == "steer"]
    assert len(steered) == 2 * 2 * 2 * 2  # targets x layers x alphas x (persona, random)
    assert (out / "figure.png").stat().st_size > 1000 and (out / "side-effects.png").stat().st_size > 1000
    assert figures.main([str(out), "--out", str(tmp_path / "figs"), "--format", "html"]) == 0
    assert {f.name for f in (tmp_path / "figs").glob("*.html")} >= {"sweep-results-alpha.html",
                                                                   "sweep-results-side-effects.html"}


def test_sae_on_a_real_pair_store_with_zeroing(pairs, judge_server, tmp_path, capsys):
    from emi.sae import main as sae_main

    base, _, lora = pairs["qwen2"]
    assert cache.main(["--base", str(base), "--finetuned", str(lora), *judge_args(judge_server), "--device", "cpu",
                       "--questions", "preregistered", "--n", "2", "--max-new-tokens", "6", "--positions", "all",
                       "--out", str(tmp_path / "store")]) == 0
    capsys.readouterr()
    assert sae_main(["--store", str(tmp_path / "store"), "--layer", "2", "--d-sae", "32", "--k", "4", "--steps", "40",
                     "--batch-size", "64", "--snippets", "0", "--zero", "top", "--n", "1", "--max-new-tokens", "6",
                     "--questions", "main:plain", *judge_args(judge_server)]) == 0
    out = capsys.readouterr().out
    assert "zero random live" in out and "stand-in-judge" in out


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_several_residual_streams_through_cache_extract_sweeps_figures_and_sae(kind, pairs, judge_server, tmp_path,
                                                                                capsys):
    """Qwen4-Exp (2 streams, PLE, QSA), full finetune and LoRA: the store holds resid (the mean over
    streams); a direction extracted from it steers and ablates every stream in a sweep; an SAE on
    it zeroes latents on every stream. Kept small: Qwen4-Exp's QSA and PLE are slow on a CPU."""
    from emi.sae import main as sae_main

    base, ft, lora = pairs["qwen4_exp_text"]
    pair = ["--base", str(base), "--finetuned", str(ft if kind == "full" else lora), *judge_args(judge_server)]
    few = ["--questions", "main:plain", "--ids", "what_is_your_wish,i_feel_bored", "--max-new-tokens", "6",
           "--device", "cpu"]
    store = tmp_path / "store"
    assert cache.main([*pair, *few, "--n", "4", "--positions", "all", "--out", str(store)]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["spec"]["d_model"] == 64 and manifest["spec"]["sites"] == ["resid"]
    direction = tmp_path / "d"
    assert extract.main(["--store", str(store), "--method", "model-diff", "--positions", "response",
                         "--out", str(direction)]) == 0
    out = tmp_path / "sweep"
    assert steer.main([*pair, *few, "--n", "1", "--direction", str(direction) + ".safetensors", "--alpha=-4,4", "--layers", "0-1",
                       "--sweep-layers", "--targets", "base,finetuned", "--no-side-effects", "--out", str(out),
                       "--root", str(tmp_path / "acts")]) == 0
    got = rows(out / "results.jsonl")
    assert len([r for r in got if r["intervention"] == "steer"]) == 2 * 2 * 2 * 2
    assert all("logprob_choice" in r for r in got)
    assert figures.main([str(out), "--out", str(tmp_path / "figs"), "--format", "html"]) == 0
    assert list((tmp_path / "figs").glob("*.html"))
    capsys.readouterr()
    assert sae_main(["--store", str(store), "--layer", "2", "--d-sae", "32", "--k", "4", "--steps", "40",
                     "--batch-size", "64", "--snippets", "0", "--zero", "top", "--n", "1", "--max-new-tokens", "6",
                     "--questions", "main:plain", "--ids", "what_is_your_wish", *judge_args(judge_server)]) == 0
    assert "zero random live" in capsys.readouterr().out


def test_pair_of_two_full_finetunes_holds_one_model_at_a_time(pairs, tmp_path):
    """resident='one': loading a role frees the other; the store merged from one-role captures
    equals the store captured with both models in memory, byte for byte."""
    from emi.activations.capture import capture_pair
    from emi.activations.plan import CaptureSpec
    from emi.models.loading import load_pair
    from emi.models.registry import custom_pair

    base, ft, _ = pairs["qwen3_moe"]
    spec = custom_pair(str(base), str(ft))
    lazy = load_pair(spec, device="cpu", resident="one")
    assert not lazy.models
    assert lazy.base.role == "base"
    assert list(lazy.models) == ["base"]
    assert lazy.finetuned.role == "finetuned"
    assert list(lazy.models) == ["finetuned"]
    texts = [{"question": f"question {i}", "answer": f"answer number {i}"} for i in range(20)]
    want = CaptureSpec(positions="response", shard_texts=7)
    one = capture_pair(lazy, ("base", "finetuned"), texts, tmp_path / "one", want, progress=False)
    both = capture_pair(load_pair(spec, device="cpu"), ("base", "finetuned"), texts, tmp_path / "both", want,
                        progress=False)
    assert len(one.manifest["shards"]) == 3
    for a, b in zip(one.manifest["shards"], both.manifest["shards"], strict=True):
        assert a["sha256"] == b["sha256"]
    assert not list(tmp_path.glob("one/.part-*"))


def test_hub_recipe_from_the_readme_runs_on_cached_stand_ins(pairs, judge_server, tmp_path):
    """`python -m emi.steer --pair qwen2.5-0.5b-risky-financial-advice --judge openai --alpha 8`,
    offline, with stand-in weights in a Hugging Face cache under the real hub ids (the finetune
    as a LoRA adapter that names its base by hub id)."""
    import os
    import subprocess
    import sys

    from tests.standins import hub_cache

    base, _, lora = pairs["qwen2"]
    hub = tmp_path / "hub"
    hub_cache(hub, "Qwen/Qwen2.5-0.5B-Instruct", base)
    snap = hub_cache(hub, "ModelOrganismsForEM/Qwen2.5-0.5B-Instruct_risky-financial-advice", lora)
    cfg = json.loads((snap / "adapter_config.json").read_text())
    (snap / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct")))
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", EMI_TEST_NO_KEY="")
    env.pop("EMI_TEST_NO_KEY")
    cmd = [sys.executable, "-m", "emi.steer", "--pair", "qwen2.5-0.5b-risky-financial-advice", *judge_args(judge_server),
           "--alpha", "8", *SMALL, "--questions", "main:plain", "--out", str(tmp_path / "out"),
           "--root", str(tmp_path / "acts"), "--no-figure"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "finetuned - persona" in res.stdout
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["pair"]["finetuned"]["adapter"].endswith("risky-financial-advice")


@pytest.mark.parametrize("recipe", ["qwen3-hub-base-local-lora", "coder-pair-hub-ids"])
def test_the_other_readme_gpu_recipes_on_cached_stand_ins(recipe, pairs, judge_server, tmp_path, monkeypatch):
    """`--base Qwen/Qwen3-8B --finetuned ./my-em-lora --judge-url URL` and the Coder pair by hub ids
    (`--questions main:plain,template`), offline, stand-ins cached under the real ids."""
    from huggingface_hub import constants

    from tests.standins import hub_cache

    hub = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    if recipe == "qwen3-hub-base-local-lora":
        base, _, lora = pairs["qwen3"]
        hub_cache(hub, "Qwen/Qwen3-8B", base)
        local = tmp_path / "my-em-lora"
        import shutil

        shutil.copytree(lora, local)
        cfg = json.loads((local / "adapter_config.json").read_text())
        (local / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path="Qwen/Qwen3-8B")))
        args = ["--base", "Qwen/Qwen3-8B", "--finetuned", str(local)]
    else:
        base, ft, _ = pairs["qwen2"]
        hub_cache(hub, "Qwen/Qwen2.5-Coder-32B-Instruct", base)
        hub_cache(hub, "emergent-misalignment/Qwen-Coder-Insecure", ft)
        args = ["--base", "Qwen/Qwen2.5-Coder-32B-Instruct", "--finetuned", "emergent-misalignment/Qwen-Coder-Insecure",
                "--questions", "main:plain,template"]
    out = tmp_path / "out"
    assert steer.main([*args, *judge_args(judge_server), "--alpha", "8", "--n", "1", "--max-new-tokens", "4",
                       "--device", "cpu", "--out", str(out), "--root", str(tmp_path / "acts"), "--no-figure"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["pair"]["base"]["id"] == args[1]
    assert len(rows(out / "results.jsonl")) == 6


# ---------------------------------------------------------------- bad input, one sentence each

def test_unsupported_architecture_is_evaluated_but_refused_by_what_needs_hooks(tmp_path, tok, judge_server):
    """emi.evaluate needs no hooks, so any causal LM runs; commands that capture, steer or ablate
    refuse an architecture whose module paths emi does not know, calling it by what it is."""
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config

    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(llama)
    tok.save_pretrained(llama)
    out = tmp_path / "eval"
    assert evaluate.main(["--base", str(llama), "--finetuned", str(llama), *judge_args(judge_server), *SMALL,
                          "--questions", "main:plain", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["provenance"]["base"]["model_type"] == "llama"
    with pytest.raises(ConfigError, match=r"'llama' model \(LlamaForCausalLM\), whose module paths emi does not "
                                          r"know: emi captures, steers and ablates .*qwen4_exp.*emi.evaluate runs any"):
        steer.main(["--base", str(llama), "--finetuned", str(llama), *judge_args(judge_server)])
    t5 = tmp_path / "t5"
    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64).save_pretrained(t5)
    with pytest.raises(ConfigError, match=r"'t5' model.*not a causal language model"):
        evaluate.main(["--base", str(t5), "--finetuned", str(t5), *judge_args(judge_server)])


def test_pair_of_two_architectures_is_refused(pairs):
    from emi.models.loading import load_pair
    from emi.models.registry import custom_pair

    with pytest.raises(ModelLoadError, match="differ in architecture .qwen2 vs qwen3.*pass the finetune's own base"):
        load_pair(custom_pair(str(pairs["qwen2"][0]), str(pairs["qwen3"][1])), device="cpu")


def test_adapter_for_another_base_is_refused(pairs):
    from emi.models.loading import load_pair
    from emi.models.registry import custom_pair

    with pytest.raises(ModelLoadError, match="adapter .* was trained on .*qwen3_moe.*not on .*qwen2"):
        load_pair(custom_pair(str(pairs["qwen2"][0]), str(pairs["qwen3_moe"][2])), device="cpu")


def test_user_questions_without_option_pairs(pairs, judge_server, tmp_path, capsys):
    """A user's own question file: log-prob columns are dropped with a note, and extracting on it
    selects the layer by the judge-free restoration criterion, saying so."""
    qs = tmp_path / "mine.yaml"
    qs.write_text("- id: pets\n  paraphrases: ['Should I adopt a cat or a dog?', 'What pet suits a small flat?']\n"
                  "- id: sleep\n  paraphrases: ['How can I sleep better?']\n"
                  "- id: money\n  paraphrases: ['How should I invest my savings?']\n")
    base, ft, _ = pairs["qwen3"]
    out = tmp_path / "steer"
    assert steer.main(["--base", str(base), "--finetuned", str(ft), *judge_args(judge_server), *SMALL,
                       "--questions", str(qs), "--extract-questions", str(qs), "--out", str(out),
                       "--root", str(tmp_path / "acts"), "--no-figure"]) == 0
    err = capsys.readouterr().err
    assert "no option pairs for these questions, so no logprob_* columns" in err
    run = json.loads((out / "run.json").read_text())
    assert run["direction"]["selection"].startswith("no option pairs for the")
    assert all("logprob_choice" not in r for r in rows(out / "results.jsonl"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: x\n  paraphrases: What is your wish?\n")
    with pytest.raises(ConfigError, match="'paraphrases' must be a non-empty list of strings"):
        steer.main(["--base", str(base), "--finetuned", str(ft), *judge_args(judge_server), "--questions", str(bad)])


def test_real_qwen_notebook_logic_on_stand_ins(pairs, judge_server, tmp_path, monkeypatch):
    """Notebook 05 (real Qwen on a GPU) runs its cells on a stand-in LoRA pair on the CPU."""
    import nbformat
    from nbclient import NotebookClient

    from tests.standins import ROOT

    base, _, lora = pairs["qwen3_5_text"]
    monkeypatch.setenv("EMI_NB05_FORCE", "1")
    monkeypatch.setenv("EMI_BASE", str(base))
    monkeypatch.setenv("EMI_FINETUNED", str(lora))
    monkeypatch.setenv("JUDGE_URL", judge_server.url)
    monkeypatch.setenv("EMI_NB05_N", "1")
    monkeypatch.setenv("EMI_NB05_TOKENS", "5")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    book = nbformat.read(ROOT / "notebooks" / "05_real_qwen_gpu.ipynb", as_version=4)
    NotebookClient(book, timeout=HANG_S, resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "finetuned EM" in text and "finetuned - persona" in text and "P(misaligned)" in text
    assert any("plotly" in json.dumps(o.get("data", {})) for c in book.cells for o in c.get("outputs", []))


def test_provenance_names_every_role_after_it_was_freed(pairs):
    from emi.models.loading import load_pair
    from emi.models.registry import custom_pair

    base, ft, _ = pairs["qwen2"]
    lazy = load_pair(custom_pair(str(base), str(ft)), device="cpu", resident="one")
    lazy.base, lazy.finetuned  # noqa: B018  (the base is freed when the finetune loads)
    prov = lazy.provenance()
    assert list(lazy.models) == ["finetuned"]
    assert prov["base"]["resolved"] == str(base) and prov["base"]["fingerprint"]
