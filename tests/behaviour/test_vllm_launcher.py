"""How emi starts and stops vLLM, and what it says when that goes wrong, without vLLM: a stand-in
interpreter plays the failing server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emi.behaviour.sampling import SamplingConfig
from emi.core.errors import ConfigError
from emi.engines.served import Ablation, Served, Steering
from emi.engines.vllm.engine import VllmEngine
from emi.engines.vllm.hooks import project_out_fn, steer_positions_fn
from emi.engines.vllm.launcher import (
    EngineError,
    EngineInfo,
    Launcher,
    Server,
    check_port,
    check_servable,
    lora_rank,
)
from emi.engines.vllm.lens import lens_xargs, steering_xarg
from emi.interventions.hooks import project_out

INFO = EngineInfo(tuple(sys.version_info[:2]), "0.32.0", "1.3.0", True)  # type: ignore[arg-type]


def fake_python(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "python"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return exe


def test_a_missing_or_broken_engine_environment_names_make_vllm(tmp_path):
    with pytest.raises(EngineError, match="missing.*make vllm"):
        Launcher(tmp_path / "nope").checked()
    broken = fake_python(tmp_path, "echo 'ModuleNotFoundError: No module named vllm' >&2; exit 1")
    with pytest.raises(EngineError, match="broken.*No module named vllm.*make vllm"):
        Launcher(broken).checked()


def test_a_server_that_exits_while_starting_quotes_the_cause_from_its_log(tmp_path):
    exe = fake_python(tmp_path, "echo starting; echo 'ValueError: the model has 3 heads, which is odd'; exit 1")
    launcher = Launcher(exe, log_dir=tmp_path / "logs", startup_timeout=60, info=INFO)
    with pytest.raises(EngineError, match="exited while starting: ValueError: the model has 3 heads"):
        launcher.start(str(tmp_path / "model"))


def test_a_port_in_use_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EngineError, match=f"port {port} .* in use"):
            check_port(port)
        with pytest.raises(EngineError, match="in use"):
            Launcher(Path(sys.executable), port=port, info=INFO).start(str(tmp_path))


def test_architectures_and_head_sizes_vllm_cannot_serve_are_refused_before_starting(tmp_path):
    def cfg(**kw):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64,
                                                          "num_attention_heads": 4, **kw}))
        return str(tmp_path)

    with pytest.raises(EngineError, match="size 16.*CPU attention"):
        check_servable(cfg(), cpu=True)
    check_servable(cfg(), cpu=False)  # on a GPU vLLM decides
    check_servable(cfg(head_dim=32), cpu=True)
    with pytest.raises(EngineError, match="'llama'.*in-process"):
        check_servable(cfg(model_type="llama", head_dim=64), cpu=True)


def test_the_newest_qwen_is_refused_in_one_sentence_where_vllm_cpu_cannot_serve_it(tmp_path):
    """Gated DeltaNet hybrids: on vLLM's CPU build bf16 only, linear heads of a multiple of 32, Qwen3.5
    with torchvision in the engine environment (whether vLLM serves them as transformers runs them is
    the fingerprint's to say, when the server starts). Qwen4-Exp is never run on vLLM."""
    def cfg(model_type, **kw):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 64,
                                                          "num_attention_heads": 4, "head_dim": 32,
                                                          "linear_key_head_dim": 32, "linear_value_head_dim": 32,
                                                          **kw}))
        return str(tmp_path)

    check_servable(cfg("qwen3_next"), cpu=True, dtype="bfloat16")
    check_servable(cfg("qwen3_next"), cpu=False, dtype="float32")  # on a GPU vLLM decides
    with pytest.raises(EngineError, match="bf16 only, asked for float32; pass --dtype bf16"):
        check_servable(cfg("qwen3_next"), cpu=True, dtype="float32")
    with pytest.raises(EngineError, match=r"linear-attention heads of size \[16, 32\].*multiples of 32"):
        check_servable(cfg("qwen3_next", linear_key_head_dim=16), cpu=True, dtype="bfloat16")
    with pytest.raises(EngineError, match="imports torchvision, which the engine environment lacks"):
        check_servable(cfg("qwen3_5_text"), cpu=True, dtype="bfloat16", torchvision=False)
    check_servable(cfg("qwen3_5_text"), cpu=True, dtype="bfloat16", torchvision=True)
    for mt in ("qwen4_exp", "qwen4_exp_text"):
        with pytest.raises(EngineError, match="several residual streams.*--engine in-process") as e:
            check_servable(cfg(mt), cpu=False)
        assert str(e.value).count(". ") == 0  # one sentence


def test_a_server_killed_mid_run_says_to_rerun(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    (tmp_path / "log").write_text("INFO serving\nRuntimeError: killed by the OOM killer\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    eng = VllmEngine(Launcher(Path(sys.executable), info=INFO))
    eng.server = Server("/m", f"http://127.0.0.1:{port}", proc, tmp_path / "log", {})
    eng.launcher = Launcher(Path(sys.executable), info=INFO)
    eng.server_for = lambda checkpoint: eng.server  # type: ignore[method-assign]
    tok = _Tok()
    with pytest.raises(EngineError, match="stopped mid-run.*OOM killer.*re-run the same command"):
        eng.sample(Served("/m"), tok, [[{"role": "user", "content": "hi"}]], SamplingConfig(max_new_tokens=2), 0)


def test_a_failed_request_on_a_live_server_quotes_the_servers_log(tmp_path):
    """The API process lives on while its engine core died (vLLM answers 500): the error names the cause
    from the log, not only the HTTP status."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "log").write_text("INFO ok\nRuntimeError: CPU Generator does not use offset\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        eng = VllmEngine(Launcher(Path(sys.executable), info=INFO))
        eng.server = Server("/m", f"http://127.0.0.1:{port}", proc, tmp_path / "log", {})
        eng.server_for = lambda checkpoint: eng.server  # type: ignore[method-assign]
        with pytest.raises(EngineError, match="failed a request.*log says: RuntimeError: CPU Generator.*re-run"):
            eng.sample(Served("/m"), _Tok(), [[{"role": "user", "content": "hi"}]], SamplingConfig(max_new_tokens=2), 0)
    finally:
        proc.kill()
        proc.wait()


class _Tok:
    eos_token_id = 2

    def apply_chat_template(self, m, tokenize=False, add_generation_prompt=True):  # noqa: ANN001
        return m[0]["content"]

    def __call__(self, text, add_special_tokens=False):  # noqa: ANN001
        return {"input_ids": [5, 6, 7]}


def test_the_hook_functions_do_what_emi_hooks_do():
    g = torch.Generator().manual_seed(0)
    h, u = torch.randn(5, 8, generator=g), torch.randn(8, generator=g)
    u = u / u.norm()
    assert torch.allclose(project_out_fn(u)(None, h), project_out(h, u), atol=1e-6)

    class Ctx:
        layer_idx, saved = 1, {}

    v = torch.ones(8)
    prompt = steer_positions_fn({1: v}, prompt_len=3, positions="prompt")
    gen = steer_positions_fn({1: v}, prompt_len=3, positions="generated")
    a, b = Ctx(), Ctx()
    a.saved, b.saved = {}, {}
    out_p, out_g = prompt(a, h[:2]), gen(b, h[:2])  # a chunk of the prompt
    assert torch.equal(out_p, h[:2] + v) and out_g is None
    out_p, out_g = prompt(a, h[2:4]), gen(b, h[2:4])  # the prompt's last token and the first generated one
    assert torch.equal(out_p[0], h[2] + v) and torch.equal(out_p[1], h[3])
    assert torch.equal(out_g[0], h[2]) and torch.equal(out_g[1], h[3] + v)
    assert prompt(a, h[4:5]) is None and torch.equal(gen(b, h[4:5]), h[4:5] + v)  # decode steps
    assert torch.equal(prompt(a, h[:5]), h[:5] + torch.tensor([1, 1, 1, 0, 0.])[:, None] * v)  # recomputed


def test_what_each_server_is_sent():
    d = torch.randn(1, 8)
    st = Steering((1,), d, "prompt")
    with pytest.raises(ConfigError, match="hooks.*--engine vllm"):
        lens_xargs(Served("/m", steering=st), 4, hooks_ok=False)
    with pytest.raises(ConfigError, match="hooks.*--engine vllm"):
        lens_xargs(Served("/m", ablation=Ablation((1,), d[0])), 4, hooks_ok=False)
    wire = json.loads(steering_xarg(Steering((1,), d, "all")))[0]
    assert wire["layer_indices"] == [1] and wire["activations"]["shape"] == [1, 8] and wire["position_indices"] is None
    x = lens_xargs(Served("/m", steering=st, ablation=Ablation((2,), d[0])), 4, hooks_ok=True)
    assert [h["layer_indices"] for h in json.loads(x["apply_hooks"])] == [[1], [2]]


def test_lora_ranks_are_rounded_up_to_what_vllm_accepts(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 12}))
    assert lora_rank([str(tmp_path)]) == 16 and lora_rank([]) == 8


def test_a_server_dies_with_the_command_that_started_it_even_by_sigkill(tmp_path):
    """A command killed -9 while its server starts (or runs) leaves no server behind."""
    import os
    import signal
    import time

    pidfile = tmp_path / "server.pid"
    exe = fake_python(tmp_path, f"echo $$ > {pidfile}; exec sleep 600")
    code = ("import sys; from pathlib import Path; from emi.engines.vllm.launcher import Launcher, EngineInfo; "
            f"info = EngineInfo(tuple(sys.version_info[:2]), '0.32.0', '1.3.0', True); "
            f"Launcher(Path({str(exe)!r}), log_dir=Path({str(tmp_path / 'logs')!r}), startup_timeout=3600, "
            f"info=info).start({str(tmp_path / 'model')!r})")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(600):
            if pidfile.is_file() and pidfile.read_text().strip():
                break
            time.sleep(0.5)
        server = int(pidfile.read_text())
        os.kill(server, 0)  # running
        parent.kill()
        parent.wait()
        for _ in range(600):
            try:
                os.kill(server, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(server, signal.SIGKILL)
            pytest.fail("the server outlived the command that started it")
    finally:
        parent.kill()


def test_a_server_started_from_a_short_lived_thread_outlives_the_thread(tmp_path):
    """The parent-death signal fires when the *thread* that forked a server ends: emi forks every
    server from one long-lived thread, so a server first needed by a pool thread (batches sampled
    several at once) survives the pool, and the next condition finds it running."""
    import threading
    import time

    site = tmp_path / "site"
    site.mkdir()
    (site / "health").write_text("ok")  # GET /health -> 200, as vLLM answers when ready
    exe = fake_python(tmp_path, 'while [ $# -gt 0 ]; do [ "$1" = --port ] && P=$2; shift; done; '
                                f"exec {sys.executable} -m http.server $P --bind 127.0.0.1 --directory {site}")
    info = EngineInfo(tuple(sys.version_info[:2]), "0.32.0", "1.3.0", True)
    launcher = Launcher(exe, log_dir=tmp_path / "logs", startup_timeout=600, info=info)
    started: list[Server] = []
    t = threading.Thread(target=lambda: started.append(launcher.start(str(tmp_path / "model"))))
    t.start()
    t.join()
    assert started, "the server did not start (see the exception above)"
    try:
        time.sleep(2.0)  # the signal, had it been armed on that thread, is delivered within milliseconds
        assert started[0].alive(), "the server died with the thread that started it"
    finally:
        for s in started:
            s.stop()
