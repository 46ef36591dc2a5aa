"""Shared test builders: tiny local models only; nothing touches the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per process, children too (command subprocesses, notebook kernels, `make demo`,
# the vLLM server): `make test` runs two pytest workers on two cores, and OpenMP threads that
# outnumber the cores spin against each other (a notebook took 313 s instead of 20).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def judge_server():
    """An OpenAI-compatible stand-in judge on loopback (tests.standins.JudgeServer), one per module."""
    from tests.standins import JudgeServer

    s = JudgeServer()
    yield s
    s.close()


@pytest.fixture(scope="session")
def fork_server(tmp_path_factory):
    """tests.faults' fork server (torch, transformers and the rest imported once, emi not at all),
    for the fault tests that run a command tens of times; one per pytest process."""
    from tests.faults import ForkServer, command_env

    s = ForkServer(command_env(), Path(__file__).resolve().parents[1], tmp_path_factory.mktemp("forks"))
    yield s
    s.close()


def qwen2_config(**overrides):
    from transformers import Qwen2Config

    from emi.organism.tokenizer import SPECIALS  # noqa: F401

    cfg = dict(vocab_size=1500, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               tie_word_embeddings=True, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    cfg.update(overrides)
    return Qwen2Config(**cfg)


@pytest.fixture(scope="session")
def toy_tokenizer():
    from emi.organism.tokenizer import build_tokenizer
    from emi.organism.world import load_world

    w = load_world()
    return build_tokenizer(w.all_texts(), w.default_system)


def build_tiny_qwen(path: Path, tokenizer, seed: int = 0, **overrides) -> Path:
    """A random tiny Qwen2 saved as a Hugging Face checkpoint with the toy tokenizer."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = qwen2_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, **overrides)
    model = Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, toy_tokenizer) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny") / "base", toy_tokenizer)


@pytest.fixture(scope="session")
def tiny_finetuned_dir(tmp_path_factory, toy_tokenizer) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny") / "ft", toy_tokenizer, seed=1)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory, tiny_dir) -> Path:
    """A LoRA adapter on the tiny base, built with peft, with non-zero B so it changes outputs."""
    from tests.standins import lora_adapter

    return lora_adapter(tmp_path_factory.mktemp("adapter"), tiny_dir, seed=3, std=0.5)


@pytest.fixture(scope="session")
def toy_pair():
    """The shipped toy organism (base, insecure finetune, secure control), loaded once."""
    from emi.models.loading import load_pair

    return load_pair("toy", roles=("base", "finetuned", "control"), device="cpu")


def pytest_collection_finish(session):
    """Move what is alive once the tests are collected (the modules imported, and transformers'
    model and training code, which every pytest process loads anyway) out of the cyclic garbage
    collector's sight for the session. Each ``gc.collect()`` (emi's ``ModelPair.release``,
    transformers' and accelerate's own, Python's automatic full collections) then walks only the
    objects the tests make, not the hundreds of thousands the imports leave, which took about 0.3 s
    a collection. Nothing a test makes is frozen: its models are freed as before."""
    import gc

    import transformers.generation.utils  # noqa: F401
    import transformers.modeling_utils  # noqa: F401
    import transformers.trainer  # noqa: F401

    gc.collect()
    gc.freeze()
