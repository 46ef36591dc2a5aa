"""The in-process samplers (generate, static, paged) give the same answers where the maths allows:
greedy decoding under every intervention, on a full finetune, a LoRA role and the Qwen3 family."""

import pytest
import torch
from conftest import build_tiny_qwen

from emi.behaviour.questions import load_questions
from emi.behaviour.sampling import SamplingConfig, check_positions, sample, sample_ids
from emi.core.errors import ConfigError
from emi.directions.direction import Direction
from emi.interventions import hooks
from emi.models.loading import ModelSpec, load_model
from tests.standins import ARCHS, full_pair, lora_adapter, qwen_tokenizer

PAGED = {a for a in ARCHS if not a.startswith(("qwen3_5", "qwen3_next"))}  # linear attention: refused
MESSAGES = [q.messages() for q in load_questions("toy")[:6]]


def greedy(sampler: str, **kw) -> SamplingConfig:
    return SamplingConfig(**{"temperature": 0.0, "max_new_tokens": 12, "sampler": sampler, **kw})


def unit_direction(lm) -> Direction:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(lm.n_layers, lm.d_model, generator=g)
    return Direction(list(range(lm.n_layers)), raw, torch.full((lm.n_layers,), 5.0), {"best_layer": 1})


def answers(lm, cfg: SamplingConfig) -> tuple[tuple[int, ...], ...]:
    """Token ids up to and with the first EOS (generate pads finished rows, paged does not)."""
    eos = lm.tokenizer.eos_token_id
    rows = sample_ids(lm, MESSAGES, cfg, seed=0)
    return tuple(tuple(r[: r.index(eos) + 1] if eos in r else r) for r in rows)


def check_all_samplers_agree(lm, paged: bool = True) -> None:
    d = unit_direction(lm)
    interventions = {"none": hooks.nothing, "steer": lambda: hooks.steer(lm.model, d, 30.0, layers=[1]),
                     "steer prompt": lambda: hooks.steer(lm.model, d, 30.0, layers=[1], positions="prompt"),
                     "ablate": lambda: hooks.ablate(lm.model, d)}
    seen = set()
    for name, ctx in interventions.items():
        with ctx():
            ref = answers(lm, greedy("generate"))
            assert answers(lm, greedy("static")) == ref, name
            if not paged:
                with pytest.raises(ConfigError, match="paged"):
                    answers(lm, greedy("paged"))
            elif name == "steer prompt":  # the paged rule, in one place (no hook scanning)
                with pytest.raises(ConfigError, match="positions"):
                    check_positions(greedy("paged"), "prompt")
            else:
                assert answers(lm, greedy("paged")) == ref, name
        seen.add(ref)
    assert len(seen) == len(interventions)  # each intervention changed the answers: the equality is not vacuous


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


@pytest.mark.parametrize("mt", ARCHS)
def test_samplers_agree_greedy_every_architecture(mt, tok, tmp_path):
    _, finetuned = full_pair(tmp_path, mt, tok)
    check_all_samplers_agree(load_model(ModelSpec(str(finetuned)), device="cpu"), paged=mt in PAGED)


def test_samplers_agree_on_the_organism_under_its_direction(toy_pair):
    """Real text: the shipped finetune, greedy, with its persona direction ablated and steered."""
    lm = toy_pair["finetuned"]
    d = Direction.load(toy_pair.spec.kit.direction)
    for ctx in (hooks.nothing, lambda: hooks.ablate(lm.model, d), lambda: hooks.steer(lm.model, d, 8.0)):
        with ctx():
            texts = {s: [a["answer"] for a in sample(lm, MESSAGES, greedy(s, max_new_tokens=40), seed=0)]
                     for s in ("generate", "static", "paged")}
        assert texts["generate"] == texts["static"] == texts["paged"]
        assert sum(len(t.split()) for t in texts["generate"]) > 30


def test_samplers_agree_greedy_lora_role(tok, tmp_path):
    base, _ = full_pair(tmp_path, "qwen3", tok)
    adapter = lora_adapter(tmp_path, base, std=0.5)
    check_all_samplers_agree(load_model(ModelSpec(str(base), adapter=str(adapter)), device="cpu"))


def test_static_sampler_compiled_keeps_hooks(tmp_path, toy_tokenizer):
    """torch.compile traces the hooks into the decode step (what runs on CUDA by default), and
    recompiles without them once they are removed. The two compiles are the test's time, and
    inductor's codegen grows with the layers: a tiny model of two, the second steered."""
    lm = load_model(ModelSpec(str(build_tiny_qwen(tmp_path / "two", toy_tokenizer, seed=1, num_hidden_layers=2))),
                    device="cpu")
    d = unit_direction(lm)
    with hooks.steer(lm.model, d, 30.0, layers=[1]):
        ref = answers(lm, greedy("generate"))
        assert answers(lm, greedy("static", compile=True)) == ref
    assert answers(lm, greedy("static", compile=True)) != ref


def test_sampling_is_seeded_and_keyed_by_sampler(tiny_finetuned_dir):
    lm = load_model(ModelSpec(str(tiny_finetuned_dir)), device="cpu")
    for s in ("generate", "static", "paged"):
        cfg = SamplingConfig(temperature=1.0, max_new_tokens=12, sampler=s)
        first = answers(lm, cfg)
        assert answers(lm, cfg) == first, s
    keys = {SamplingConfig(sampler=s).settings().get("sampler") for s in ("generate", "static", "paged")}
    assert keys == {None, "static", "paged"}  # the reference keeps the key answers were written under
    with pytest.raises(ConfigError, match="unknown sampler"):
        SamplingConfig(sampler="vllm")


def test_static_draws_the_same_samples_as_generate(toy_pair):
    """Sampled (temperature 1, the papers' setting), the static cache gives generate's answers for
    the same seed: why `--sampler static` reprints the `make demo` table to the digit."""
    lm = toy_pair["base"]
    d = Direction.load(toy_pair.spec.kit.direction)
    with hooks.steer(lm.model, d, 8.0, layers=[1], positions="prompt"):
        ref, fast = ([a["answer"] for a in sample(lm, MESSAGES * 4, SamplingConfig(max_new_tokens=40, sampler=s),
                                                   seed=3)] for s in ("generate", "static"))
    assert ref == fast and len(set(ref)) > 6


def test_the_paged_config_follows_transformers_signature():
    """ContinuousBatchingConfig's page field is page_size in the pinned transformers and block_size in
    earlier 5.x (5.17, a GPU machine's): emi passes whichever the signature has, and refuses in one
    sentence a transformers with neither."""
    from dataclasses import dataclass

    from transformers.generation import ContinuousBatchingConfig

    from emi.behaviour.sampling import paged_config

    @dataclass
    class Old:  # transformers 5.17's fields (its configuration_utils)
        block_size: int = 256
        num_blocks: int | None = None
        max_batch_tokens: int | None = None

    @dataclass
    class Neither:
        num_blocks: int | None = None
        max_batch_tokens: int | None = None

    assert paged_config(Old, 64, 3, 100) == Old(64, 3, 100)
    pinned = paged_config(ContinuousBatchingConfig, 64, 3, 100)
    assert (pinned.page_size, pinned.num_blocks, pinned.max_batch_tokens) == (64, 3, 100)
    with pytest.raises(ConfigError, match="page_size or block_size"):
        paged_config(Neither, 64, 3, 100)
