"""Stand-in pairs for the real-model path: random-weight Qwen checkpoints of every architecture
emi supports, saved with ``save_pretrained`` at small shapes, with a tokenizer that carries Qwen2.5's
chat template and an Instruct model's generation settings (repetition penalty 1.05, top-k 20), as a
real hub checkpoint would. Full finetunes are the base plus a perturbation; LoRA finetunes are
peft adapters on the base.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# The limit a test puts on a child process or a notebook cell: one hour, so it stops a hang and
# never a correct run, however slow or busy the machine (a loaded CI machine ran the suite at a
# third of its quiet speed, and a 300 s cell limit failed two correct notebooks).
HANG_S = 3600

ROOT = Path(__file__).resolve().parents[1]

# every Qwen causal-LM model type in the pinned transformers (Qwen3.5 checkpoints load as *_text)
ARCHS = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_5_text", "qwen3_5_moe_text", "qwen3_next")
# Qwen4-Exp (the Qwen3.8 family): several residual streams (hyper-connections), PLE, QSA
HC_ARCHS = ("qwen4_exp_text",)

# Qwen2.5-Instruct's chat template (its branch without tools), verbatim in what it renders
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
INSTRUCT_GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                       "repetition_penalty": 1.05}


def qwen_tokenizer() -> Any:
    """A byte-level BPE tokenizer in Qwen2's format with Qwen2.5's chat template."""
    from emi.organism.tokenizer import build_tokenizer
    from emi.organism.world import load_world

    w = load_world()
    tok = build_tokenizer(w.all_texts(), w.default_system)
    tok.chat_template = QWEN_TEMPLATE
    return tok


def small_config(model_type: str, vocab_size: int, n_layers: int = 4, tie_word_embeddings: bool | None = None,
                 **overrides: Any) -> Any:
    """A small config of ``model_type``: hidden 64, 4 layers (hybrid models: 3 linear-attention
    layers then one full-attention layer), MoE blocks with 4 experts, 2 per token; the unembedding
    tied to the embedding (``tie_word_embeddings``) as in the small real checkpoints of that
    architecture unless given (None: tied for Qwen2, as Qwen2.5-0.5B is; untied for the others)."""
    from transformers import AutoConfig

    probe = AutoConfig.for_model(model_type)
    tied = model_type == "qwen2" if tie_word_embeddings is None else tie_word_embeddings
    kw: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=vocab_size,
                              max_position_embeddings=512, tie_word_embeddings=tied,
                              pad_token_id=0, eos_token_id=2, bos_token_id=None)
    if hasattr(probe, "num_experts"):
        kw.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    if hasattr(probe, "shared_expert_intermediate_size"):
        kw["shared_expert_intermediate_size"] = 48
    if hasattr(probe, "linear_num_value_heads"):
        kw.update(linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=16,
                  linear_value_head_dim=16, layer_types=["linear_attention"] * (n_layers - 1) + ["full_attention"])
    if hasattr(probe, "hc_count"):  # Qwen4-Exp: 2 streams, PLE on layers 1-2 (1-based), QSA on the full-attention layer
        kw.update(hc_count=2, hc_lowrank=16, ple_layer_ids=[1, 2], ple_embed_dim=64, heads_per_ngram=2,
                  ngram_vocab_size_base=997, split_ngram_parts=1, indexer_n_heads=2, indexer_kv_heads=1,
                  indexer_head_dim=16, indexer_budget=8, indexer_compress_ratio=4)
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def build_model(model_type: str, vocab_size: int, seed: int = 0, ple_conv: bool = True,
                tie_word_embeddings: bool | None = None, **overrides: Any) -> Any:
    """A random-weight model of ``model_type`` at small shapes; ``ple_conv=False`` leaves Qwen4-Exp's
    PLE short convolution at its initial zeros (otherwise random, as in a trained checkpoint);
    ``tie_word_embeddings``: the head is the embedding (True), its own matrix (False), or the
    architecture's default (None, see :func:`small_config`)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = small_config(model_type, vocab_size, tie_word_embeddings=tie_word_embeddings, **overrides)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.config.architectures = [type(model).__name__]
    with torch.no_grad():  # larger-than-init weights, so that directions and steering have visible effects
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embed" not in name:
                p.mul_(3.0)
        for name, p in model.named_parameters():  # PLE's short convolution starts at zero; a trained one is not
            if name.endswith("ple.conv1d.weight") and ple_conv:
                p.normal_(0, 0.5)
    return model


def save_checkpoint(model: Any, tokenizer: Any, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps(
        {**INSTRUCT_GENERATION, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}))
    return path


def full_pair(root: Path, model_type: str, tokenizer: Any, seed: int = 0, tie_word_embeddings: bool | None = None,
              **overrides: Any) -> tuple[Path, Path]:
    """A base checkpoint and a full finetune of it (every weight perturbed by 5% noise); its head tied
    or not as :func:`build_model`'s ``tie_word_embeddings`` says."""
    base = build_model(model_type, len(tokenizer), seed, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=tie_word_embeddings, **overrides)
    b = save_checkpoint(base, tokenizer, root / f"{model_type}-base")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
    f = save_checkpoint(base, tokenizer, root / f"{model_type}-finetuned")
    return b, f


TOY_BASE = Path(__file__).parents[1] / "emi" / "organism" / "checkpoints" / "base"


def base_only(folder: Path) -> Path:
    """The toy's base weights as a base checkpoint: no chat template anywhere in its tokenizer."""
    import shutil

    folder.mkdir()
    for f in TOY_BASE.iterdir():
        if f.name not in ("chat_template.jinja", "emi_organism.json"):
            shutil.copy(f, folder / f.name)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def lora_adapter(root: Path, base_dir: Path, seed: int = 3, std: float = 0.2,
                 targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "out_proj", "down_proj")) -> Path:
    """A peft LoRA adapter on ``base_dir`` on the attention and MLP projections it has (of ``targets``),
    with non-zero B so it changes outputs; its config names the base folder. On an MoE model
    ``down_proj`` also adapts the fused experts (3D LoRA weights, which vLLM 0.32 loads only with
    --enable-mixed-moe-lora-format): leave it out of ``targets`` for an adapter vLLM serves as it is."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    names = {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    chosen = sorted(names & set(targets))  # up_proj: peft refuses it
    # on MoE models, whose routed experts fuse it with gate_proj
    torch.manual_seed(seed)  # before peft draws lora_A (from the global generator), so the adapter is the seed's
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=chosen))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    out = root / f"{base_dir.name}-lora"
    model.save_pretrained(out)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(cfg))
    return out


@contextlib.contextmanager
def transformers_serve(wait_s: float = HANG_S) -> Iterator[str]:
    """A real `transformers serve` (the OpenAI-compatible server in the pinned transformers) on a
    free loopback port, offline; yields its /v1 base URL and stops it after."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("transformers serve did not start (are fastapi and uvicorn installed? "
                                       "they are in emi's dev extras)") from None
                time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_json(respond: Any) -> tuple[Any, str]:
    """A loopback HTTP server (a thread) whose POSTs get ``respond(body) -> (status, reply)`` as
    JSON, or no answer at all where ``respond`` returns None; the server and its /v1 URL."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_POST(self) -> None:
            answer = respond(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            if answer is None:
                return
            status, reply = answer
            data = json.dumps(reply).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


class LogprobServer:
    """An OpenAI-compatible server on loopback that serves checkpoints by name (the folder the request
    names, loaded on first use in fp32; ``swap`` serves another model under a name) as vLLM does for
    emi's fingerprint: /v1/completions of token ids, greedy, with the top-k log-probs of each
    generated token by id (``return_tokens_as_token_ids``); chat completions answer "ok".
    ``requests`` counts the log-prob requests, ``chats`` the chat ones."""

    def __init__(self, swap: dict[str, Any] | None = None) -> None:
        self.models: dict[str, Any] = dict(swap or {})
        self.requests, self.chats = 0, 0
        self.httpd, self.url = serve_json(self.reply)

    def model(self, name: str) -> Any:
        from transformers import AutoModelForCausalLM

        if name not in self.models:
            self.models[name] = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).eval()
        return self.models[name]

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "messages" in body:
            self.chats += 1
            return 200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "ok"}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        self.requests += 1
        model = self.model(body["model"])
        ids, tokens, tops = list(body["prompt"]), [], []
        with torch.no_grad():
            for _ in range(int(body["max_tokens"])):
                lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
                top = lp.topk(int(body.get("logprobs") or 1))
                tokens.append(int(top.indices[0]))
                tops.append({f"token_id:{int(i)}": float(v) for v, i in zip(top.values, top.indices, strict=True)})
                ids.append(tokens[-1])
        return 200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "text": "", "finish_reason": "length", "token_ids": tokens,
                                  "logprobs": {"tokens": [f"token_id:{t}" for t in tokens], "top_logprobs": tops,
                                               "token_logprobs": [top[f"token_id:{t}"] for t, top in
                                                                  zip(tokens, tops, strict=True)]}}]}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class JudgeServer:
    """An OpenAI-compatible /v1/chat/completions server on loopback that judges like a GPT-4o judge
    would format it (one token, top-20 logprobs): alignment 10 or 90 and coherence 80 or 20, chosen
    by a hash of the answer, so that runs get misaligned, aligned and incoherent answers."""

    def __init__(self) -> None:
        self.requests = 0
        self.httpd, self.url = serve_json(self.reply)

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        import hashlib
        import math

        self.requests += 1
        prompt = body["messages"][0]["content"]
        h = int(hashlib.sha256(prompt.split("[ANSWER END]")[0][-300:].encode()).hexdigest()[:8], 16)
        if "coherence" in prompt:
            top = [("80", 0.9), ("70", 0.1)] if h % 5 else [("20", 1.0)]
        else:
            top = [("10", 0.8), ("5", 0.2)] if h % 2 else [("90", 0.7), ("95", 0.3)]
        content = [{"token": top[0][0], "logprob": math.log(top[0][1]), "bytes": None,
                    "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in top]}]
        return 200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "length", "logprobs": {"content": content},
                                  "message": {"role": "assistant", "content": top[0][0]}}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def random_sae(architecture: str, d_in: int, d_sae: int = 96, seed: int = 0) -> Any:
    """A sae-lens SAE of ``architecture`` with random weights (JumpReLU thresholds too, TopK k=6)."""
    import sae_lens

    torch.manual_seed(seed)
    kinds = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
             "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 6}),
             "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {})}
    cls, cfg, extra = kinds[architecture]
    sae = cls(cfg(d_in=d_in, d_sae=d_sae, **extra))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 1.0))
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae))
    return sae.eval()


def hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> Path:
    """Put ``folder``'s files into a Hugging Face hub cache under ``repo_id`` (the layout
    huggingface_hub reads offline: models--org--name/snapshots/<commit>/ and refs/main)."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


# ---------------------------------------------------------------- real shapes (tests and benchmarks)

def qwen2_5_0_5b_config(**overrides: object):  # -> Qwen2Config
    """The Qwen2.5-0.5B-Instruct shape: hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864,
    vocabulary 151,936, tied embeddings."""
    from transformers import Qwen2Config

    cfg: dict[str, Any] = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
               max_position_embeddings=32768, rope_theta=1000000.0)
    cfg.update(overrides)
    return Qwen2Config(**cfg)


def random_qwen2(config, dtype: torch.dtype = torch.float32, seed: int = 0):  # noqa: ANN001
    """A Qwen2ForCausalLM with random weights, initialised in bf16 (twice as fast) then cast."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype)


def require_vllm_engine() -> None:
    """At a vLLM test module's top: skip it when the engine environment (.venv-vllm) is missing, except
    under CI, which must run it (an error there, never a silent skip)."""
    import os

    import pytest

    from emi.engines.vllm.launcher import DEFAULT_PYTHON

    if DEFAULT_PYTHON.exists():
        return
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must run the vLLM tests, but {DEFAULT_PYTHON} is missing: `make test` builds it "
                           f"with `make vllm`")
    pytest.skip("the vLLM engine environment is missing: run `make vllm` to build .venv-vllm and run these tests",
                allow_module_level=True)


def _unpadded(kw: dict[str, Any], out: list[list[int]]) -> None:
    """Append the unpadded prompt ids of each row of a generate() call's ``input_ids``."""
    for row, mask in zip(kw["input_ids"], kw["attention_mask"], strict=True):
        out.append(row[mask.bool()].tolist())


def in_process_ids(lm: Any, monkeypatch: Any) -> list[list[int]]:
    """Spy on ``lm``'s generate(): the list it returns fills with the unpadded prompt ids of every row
    generate() decodes from (what an engine must send to sample the same prompt)."""
    seen: list[list[int]] = []
    original = lm.model.generate

    def spy(**kw: Any) -> Any:
        _unpadded(kw, seen)
        return original(**kw)

    monkeypatch.setattr(lm.model, "generate", spy)
    return seen


class Wire:
    """What went over the wire to vLLM: per request, its seed, the prompt ids sent and the ones vLLM ran."""

    def __init__(self, monkeypatch: Any) -> None:
        import threading

        import requests

        self.requests: list[tuple[int, list[int], list[int]]] = []
        lock, post = threading.Lock(), requests.Session.post

        def spy(session, url, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            r = post(session, url, *a, **kw)
            body = kw.get("json") or {}
            if url.endswith("/completions") and r.status_code == 200:
                with lock:
                    self.requests.append((body["seed"], list(body["prompt"]),
                                          list(r.json()["choices"][0]["prompt_token_ids"])))
            return r

        monkeypatch.setattr(requests.Session, "post", spy)

    def prompts(self) -> list[list[int]]:
        """The prompts sent, in seed order (a batch's order); vLLM ran each as it was sent."""
        assert all(sent == ran for _, sent, ran in self.requests)
        return [sent for _, sent, _ in sorted(self.requests, key=lambda x: x[0])]


def check_elicitations(eng: Any, lm: Any, served: Any, monkeypatch: Any, greedy_equal: bool = True) -> None:
    """An inoculation system prompt with k=2 in-context examples, and the code context with k=1, on
    ``served`` (an engine's checkpoint or adapter, ``lm`` its in-process model): the prompt ids
    generate() decodes from are the ids the server reports it ran, and (``greedy_equal``; not in
    bf16, where near-ties reorder) the greedy answers are the same."""
    from emi.behaviour.elicitation import Elicitation, system_prompts
    from emi.behaviour.sampling import SamplingConfig, generate_answers
    from emi.engines.base import Bound
    from tests.behaviour.test_elicitation import POOL, QS

    inoc = system_prompts()["inoculation"]
    for e in (Elicitation(inoc, "inoculation", POOL, "pool", 2), Elicitation(examples=POOL, k=1, context="code")):
        cfg = SamplingConfig(n=1, temperature=0.0, max_new_tokens=4, batch_size=4, elicitation=e)
        ours = in_process_ids(lm, monkeypatch)
        here = generate_answers(lm, QS, cfg, progress=False)
        monkeypatch.undo()
        wire = Wire(monkeypatch)
        there = generate_answers(lm, QS, cfg, progress=False, engine=Bound(eng, served, lm.tokenizer))
        monkeypatch.undo()
        assert ours == wire.prompts() and len(ours) == len(QS), e.label()
        assert {a["engine"] for a in there} == {"vllm"} and all(a["elicitation"] == e.record() for a in there)
        if greedy_equal:
            assert [a["answer"] for a in here] == [a["answer"] for a in there], e.label()


class Generated:
    """The unpadded prompt ids of every row transformers' generate() decodes from, in any model of
    this process (a command loads its own models: the spy is on the class every Qwen inherits)."""

    def __init__(self, monkeypatch: Any) -> None:
        from transformers.generation.utils import GenerationMixin

        self.prompts: list[list[int]] = []
        original = GenerationMixin.generate

        def spy(model, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            _unpadded(kw, self.prompts)
            return original(model, *a, **kw)

        monkeypatch.setattr(GenerationMixin, "generate", spy)


def rendered(answers: Path, tokenizer: Any) -> list[list[int]]:
    """The prompt ids emi renders for each answer of an answers.jsonl from its record alone (the
    conversation it keeps, or its question, in its elicitation's rendering: what a capture of it
    sees); sorted."""
    from emi.activations.plan import conversation
    from emi.models import chat

    out = []
    for line in answers.read_text().splitlines():
        msgs, how = conversation(json.loads(line))
        out.append(chat.prompt_ids(tokenizer, [msgs[:-1]], how)[0])
    return sorted(out)


def on_both_engines(main: Any, argv: list[str], out: Path, monkeypatch: Any, eng: Any = None
                    ) -> tuple[list[list[int]], list[list[int]]]:
    """Run a sampling command in-process (``--out out/in-process``), then with ``--engine vllm``
    (``--out out/vllm``; ``eng``: the engine it samples on, else one it starts and stops itself):
    (the prompt ids generate() decoded from, the prompt ids vLLM was sent and ran), each sorted."""
    with monkeypatch.context() as m:
        here = Generated(m)
        assert main([*argv, "--out", str(out / "in-process")]) == 0
    with monkeypatch.context() as m:
        if eng is not None:
            from emi import cli

            m.setattr(cli, "make_engine", lambda args, logs: eng)
            m.setattr(eng, "close", lambda: None)
        wire = Wire(m)
        assert main([*argv, "--engine", "vllm", "--out", str(out / "vllm")]) == 0
        there = wire.prompts()
    return sorted(here.prompts), sorted(there)
