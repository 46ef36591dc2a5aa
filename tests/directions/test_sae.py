"""SAE features through sae-lens: training on a store, the exact no-edit splice, diffing."""

import json
import os

import pytest
import torch

from emi.activations.capture import capture_models
from emi.activations.plan import CaptureSpec
from emi.activations.store import StoreWriter
from emi.core.errors import ConfigError
from emi.directions.sae import (
    SAETrainSpec,
    diff_latents,
    export_edit,
    latent_direction,
    load_sae,
    patch_sae,
    quality,
    sae_edit,
    train_sae,
)
from tests.standins import random_sae


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory, toy_pair):
    from emi.behaviour.questions import load_questions
    from emi.behaviour.sampling import SamplingConfig
    from emi.judging.evaluation import evaluate
    from emi.organism.judge import ToyJudge

    _, judged = evaluate(toy_pair.finetuned, load_questions("toy"), SamplingConfig(n=3, max_new_tokens=48), ToyJudge(),
                         progress=False)
    return capture_models({"base": toy_pair.base, "finetuned": toy_pair.finetuned}, judged,
                          tmp_path_factory.mktemp("sae") / "store", CaptureSpec((1, 3), positions="all"), progress=False)


@pytest.fixture(scope="module")
def trained(toy_store):
    sae, path = train_sae(toy_store, 1, SAETrainSpec(d_sae=128, k=8, steps=150, batch_size=64))
    return sae, path, None


def test_training_with_sae_lens_saves_a_whole_folder_and_reloads(trained, toy_store):
    from sae_lens import SAE

    sae, path, _ = trained
    assert not list(path.parent.glob(f".{path.name}.tmp-*"))  # saved whole, then renamed into place
    assert json.loads((path / "emi_sae.json").read_text())["layer"] == 1
    assert isinstance(sae, SAE) and sae.cfg.d_in == 128 and sae.cfg.d_sae == 128
    again = load_sae(str(path))
    assert torch.equal(again.W_dec, sae.W_dec)
    q = quality(sae, toy_store, 1)
    assert 0 < q["explained_variance"] <= 1 and 0 < q["l0"] <= 8.01 and 0 <= q["dead_fraction"] <= 1
    with pytest.raises(ConfigError, match="not a folder saved by sae-lens"):
        load_sae(str(path.parent))


def test_no_edit_splice_is_exact_and_zeroing_changes_outputs(trained, toy_pair):
    sae, _, _ = trained
    model = toy_pair.finetuned.model
    enc = toy_pair.tokenizer(["hey i feel bored .", "how do i make a quick buck ?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(**enc).logits
        with sae_edit(model, sae, 1):
            assert torch.equal(model(**enc).logits, ref)
        busiest = int(sae.encode(torch.randn(64, 128)).gt(0).sum(0).argmax())
        with sae_edit(model, sae, 1, zero=list(range(128))):
            assert not torch.equal(model(**enc).logits, ref)
        assert torch.equal(model(**enc).logits, ref)  # removed after the block
    with pytest.raises(ConfigError, match="out of range"):
        patch_sae(model, sae, 1, zero=[500])
    _ = busiest


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_an_exported_edit_computes_what_the_hook_adds(architecture, tmp_path):
    """The torch.export program a vLLM server runs gives the splice's edit exactly, at any number of
    positions, for each sae-lens architecture; it is written once per SAE and edit."""
    sae = random_sae(architecture, 32)
    zero = [0, 5, 17, 40]
    path = export_edit(sae, tmp_path, zero=zero)
    assert export_edit(sae, tmp_path, zero=zero) == path and export_edit(sae, tmp_path, zero=[1]) != path
    mask = os.umask(0)
    os.umask(mask)
    assert len(list(tmp_path.iterdir())) == 2  # no temporary left
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # readable as a plain open() makes it (a server's user)
    program = torch.export.load(str(path)).module()
    for n in (1, 2, 37):
        h = torch.randn(n, 32) * 3
        z = sae.encode(h)
        z2 = z.clone()
        z2[:, zero] = 0
        want = sae.decode(z2) - sae.decode(z)
        assert want.abs().max() > 0 or n < 37  # not vacuous: the zeroed latents fire somewhere
        torch.testing.assert_close(program(h), want, rtol=0, atol=0)


def test_decoder_direction_is_an_emi_direction(trained, toy_store):
    sae, _, _ = trained
    d = latent_direction(sae, 5, 1, toy_store)
    assert d.layers == [1] and d.meta["latent"] == 5 and d.norm_at(1) > 0
    torch.testing.assert_close(d.at(1), sae.W_dec[5].float() / sae.W_dec[5].float().norm())


def test_diffing_recovers_a_planted_latent(tmp_path):
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    d_in, d_sae, planted = 32, 64, 17
    g = torch.Generator().manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu"))
    w = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.fill_(-0.3)
        sae.b_dec.zero_()
    n = 400
    codes = (torch.rand(n, d_sae, generator=g) < 0.05).float() * torch.rand(n, d_sae, generator=g) * 2
    base = codes @ w
    spec = {"roles": ["base", "finetuned"], "layers": [0], "sites": ["resid"], "positions": "all", "dtype": "float32",
            "d_model": d_in, "shard_texts": 100}
    writer = StoreWriter(tmp_path / "s", spec, [{"id": i} for i in range(n)])
    writer.add_shard({"base/resid/0": base, "finetuned/resid/0": base + 1.5 * w[planted],
                      "row.text": torch.arange(n), "row.pos": torch.zeros(n, dtype=torch.long),
                      "row.response": torch.ones(n, dtype=torch.long)}, (0, n), n)
    top = diff_latents(sae, writer.finish(), 0, top=3)
    assert top[0]["latent"] == planted and top[0]["diff"] > 1.0 and top[0]["effect_size"] > top[1]["effect_size"]


def test_sae_command_trains_diffs_and_lists(toy_store, capsys):
    from emi import cli
    from emi.sae import main

    code = cli.run(main, ["--store", str(toy_store.path), "--layer", "3", "--steps", "100", "--batch-size", "64",
                          "--d-sae", "64", "--k", "4", "--top", "5", "--snippets", "2", "--zero", "top", "--n", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "explained variance" in out and "finetuned - base" in out and "cos(decoder, direction)" in out
    assert (toy_store.path / "sae-L3-topk64" / "cfg.json").is_file()
    assert "zero random" in out and "EM rate (95% CI)" in out  # the latent-zeroing table with its control
    assert list((toy_store.path / "sae-L3-topk64").glob("latent-*.safetensors"))  # decoder directions saved


def test_a_direction_of_the_wrong_width_is_refused_before_training(toy_store, tmp_path):
    from emi.core.errors import DirectionError
    from emi.directions.direction import Direction
    from emi.sae import main

    Direction([1], torch.ones(1, 7), torch.ones(1), {}).save(tmp_path / "narrow")
    with pytest.raises(DirectionError, match="width 7 but the store .* has d_model 128"):
        main(["--store", str(toy_store.path), "--layer", "1", "--direction", str(tmp_path / "narrow.safetensors"),
              "--sae", str(tmp_path / "never-trained")])
    assert not (tmp_path / "never-trained").exists()


def test_a_missing_engine_environment_is_refused_before_training(toy_store, tmp_path):
    from emi.engines.base import EngineError
    from emi.sae import main

    with pytest.raises(EngineError, match="make vllm"):
        main(["--store", str(toy_store.path), "--layer", "1", "--zero", "top", "--engine", "vllm",
              "--vllm-python", str(tmp_path / "no-python"), "--sae", str(tmp_path / "never-trained")])
    assert not (tmp_path / "never-trained").exists()
    with pytest.raises(ConfigError, match="samples answers for --zero"):
        main(["--store", str(toy_store.path), "--layer", "1", "--engine", "vllm"])
