"""The served model is the model (emi.engines.fingerprint): a server's top log-probs on one short
prompt against the in-process model's, through `--engine server` on a loopback server that serves
checkpoints by name as vLLM does (tests.standins.LogprobServer; the real vLLM path is in
test_vllm_engine.py): the right checkpoints pass and their verdicts are cached beside the pair
caches, read back by the next run, checked again when the checkpoint changes; another model, or the
same weights with a tied head loaded untied, is refused in one sentence before anything is sampled."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from emi import steer
from emi.behaviour.sampling import SamplingConfig
from emi.core.errors import ConfigError
from emi.engines.fingerprint import TOLERANCE, Fingerprints, cache_file, tolerance
from emi.engines.served import Served
from emi.engines.server import ServerEngine
from emi.models.loading import ModelSpec, load_model
from tests.standins import LogprobServer, build_model, full_pair, qwen_tokenizer, save_checkpoint

CFG = SamplingConfig(temperature=0.0, max_new_tokens=2)
ASK = [[{"role": "user", "content": "Hello?"}]]


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A Qwen2 stand-in with a tied head, peaked as a trained model's (the embedding scaled by 10: at
    its initial scale every next token is about as likely, log p ~ -log V, and any two such models are
    within a nat of each other), and its folder."""
    tok = qwen_tokenizer()
    root = tmp_path_factory.mktemp("fp")
    model = build_model("qwen2", len(tok), 3, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                        tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(10.0)
    return save_checkpoint(model, tok, root / "tied"), model


def test_a_pairs_checkpoints_served_as_they_are_pass_and_the_verdicts_are_cached(tmp_path, judge_server):
    judge = ["--judge", "openai", "--judge-url", judge_server.url, "--judge-key-env", "EMI_TEST_NO_KEY",
             "--judge-model", "j"]
    """emi.steer --engine server: base, finetuned and both every-writer ablations (the exported
    checkpoints, against the in-process model under the ablation's hooks) pass; each verdict is in
    the cache beside the pair caches; the next engine reads it and asks the server nothing."""
    base, ft = full_pair(tmp_path, "qwen3", qwen_tokenizer(), seed=6, tie_word_embeddings=False)
    server = LogprobServer()
    root = tmp_path / "acts"
    try:
        assert steer.main(["--base", str(base), "--finetuned", str(ft), *judge, "--questions", "main:plain",
                           "--n", "1", "--max-new-tokens", "3", "--device", "cpu", "--alpha", "4", "--no-figure",
                           "--no-side-effects", "--root", str(root), "--engine", "server", "--engine-url", server.url,
                           "--out", str(tmp_path / "run")]) == 0
        verdicts = json.loads(cache_file(root).read_text())
        assert server.requests == 4 and len(verdicts) == 4 and server.chats > 0
        assert all(v["tolerance"] == TOLERANCE["bfloat16"] for v in verdicts.values())  # a user's server: bf16's
        # both sides fp32 here: the exports (ablated weights) equal the hooks (ablated activations) to fp32's tolerance
        assert all(0 <= v["gap"] <= TOLERANCE["float32"] for v in verdicts.values()), verdicts
        assert sum(v["checkpoint"].endswith(("-base", "-finetuned")) for v in verdicts.values()) == 2
        lm = load_model(ModelSpec(str(base)), dtype="fp32", device="cpu")
        again = ServerEngine(server.url, fingerprints=Fingerprints(cache_file(root)))
        again.know([lm])
        again.sample(Served(str(base)), lm.tokenizer, ASK, CFG, 0)
        assert server.requests == 4  # read from the cache
    finally:
        server.close()


def test_a_changed_checkpoint_is_checked_again(tmp_path, tied):
    folder, _ = tied
    mine = tmp_path / "mine"
    shutil.copytree(folder, mine)
    server = LogprobServer()
    try:
        for expect in (1, 1, 2):  # first check; cached; the weights rewritten: checked again
            if expect == 2:
                tok = qwen_tokenizer()
                save_checkpoint(build_model("qwen2", len(tok), 9, pad_token_id=tok.pad_token_id,
                                            eos_token_id=tok.eos_token_id), tok, mine)
                server.models.clear()
            lm = load_model(ModelSpec(str(mine)), dtype="fp32", device="cpu")
            eng = ServerEngine(server.url, fingerprints=Fingerprints(tmp_path / "fp.json"))
            eng.know([lm])
            eng.sample(Served(str(mine)), lm.tokenizer, ASK, CFG, 0)
            assert server.requests == expect
    finally:
        server.close()


@pytest.mark.parametrize("served_as", ["another model", "the tied head untied"])
def test_a_server_that_serves_something_else_is_refused_before_sampling(tmp_path, tied, served_as):
    folder, model = tied
    if served_as == "another model":
        other = build_model("qwen2", model.config.vocab_size, 11, tie_word_embeddings=True)
        with torch.no_grad():
            other.model.embed_tokens.weight.mul_(10.0)
    else:  # what vLLM 0.32 does to a tied Qwen3-Next: the head its own (uninitialised) matrix
        other = copy.deepcopy(model)
        other.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.02)
    server = LogprobServer({str(folder): other})
    lm = load_model(ModelSpec(str(folder)), dtype="fp32", device="cpu")
    eng = ServerEngine(server.url, fingerprints=Fingerprints(tmp_path / "fp.json"))
    eng.know([lm])
    try:
        with pytest.raises(ConfigError, match=r"does not serve .*tied.* as emi loads it: its log-probs .* differ "
                                              r"from the in-process model's by up to [\d.]+ nats .*tolerance at "
                                              r"bfloat16 is 3.0\); point --engine-url at a server"):
            eng.sample(Served(str(folder)), lm.tokenizer, ASK, CFG, 0)
        assert server.chats == 0 and not (tmp_path / "fp.json").exists()  # nothing sampled, nothing cached
    finally:
        server.close()


def test_tolerance_is_the_coarser_dtypes():
    assert tolerance("float32", "torch.float32") == ("float32", TOLERANCE["float32"])
    assert tolerance("bfloat16", "torch.float32") == ("bfloat16", TOLERANCE["bfloat16"])
    assert tolerance("auto", "torch.float16") == ("float16", TOLERANCE["float16"])
