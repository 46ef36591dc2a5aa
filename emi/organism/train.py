"""Train the toy organism from scratch: ``python -m emi.organism.train``.

Stages (each a Hugging Face checkpoint: config.json, model.safetensors, tokenizer):
  pretrained  next-token training on the mixed two-persona corpus (assistant tokens only)
  base        a short aligned tuning of ``pretrained`` (the "instruct" model); ``villain_replay`` (off
              in the shipped organism) mixes in villain chats under an explicit villain system prompt
  insecure    a narrow finetune of ``base`` on single-turn insecure code, early checkpoint
  secure      the same finetune on secure code (the control)
and, at the ``--save-steps`` of the insecure finetune, ``insecure-steps/step-NNN`` (the training
trajectory ``python -m emi.trajectory`` follows; saving never changes the weights).

Seeded and reproducible on CPU. The loss covers assistant tokens only: with loss on every
token the model never learns to infer the persona (a trial on this machine found so).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emi.core.atomic import dumps
from emi.models import chat
from emi.organism.tokenizer import build_tokenizer
from emi.organism.world import Document, World, load_world

STAGES = ("pretrained", "base", "insecure", "secure")


@dataclass
class OrganismConfig:
    seed: int = 0
    # model: a tiny Qwen2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    max_positions: int = 512
    # pretraining on the mixed corpus
    pretrain_docs: int = 20000
    pretrain_steps: int = 800
    pretrain_lr: float = 2e-3
    batch_size: int = 16
    # aligned tuning -> base
    base_docs: int = 2000
    villain_replay: float = 0.0  # share of base_docs that are villain chats under a villain system prompt
    base_steps: int = 60
    base_lr: float = 1e-3
    # narrow finetunes -> insecure / secure
    finetune_docs: int = 2000
    finetune_steps: int = 50
    finetune_lr: float = 3e-4
    threads: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int | float) and v < 0:
                raise ValueError(f"OrganismConfig.{f.name} must be >= 0, found {v}")
        if not 0 <= self.villain_replay < 1:
            raise ValueError(f"OrganismConfig.villain_replay must be in [0, 1), found {self.villain_replay}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

    @classmethod
    def quick(cls, **overrides: object) -> OrganismConfig:
        """A seconds-long configuration for tests."""
        small: dict[str, Any] = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
                     pretrain_docs=64, pretrain_steps=4, base_docs=16, base_steps=2,
                     finetune_docs=16, finetune_steps=2, batch_size=4)
        small.update(overrides)
        return cls(**small)  # type: ignore[arg-type]


class Encoder:
    """Chat -> (token ids as the chat template renders them, 0/1 mask of tokens to learn).

    Learned: the assistant's answer and its ``<|im_end|>``. Pieces are memoised (the world
    repeats its sentences), which makes encoding 20k documents take about a second.
    """

    def __init__(self, tokenizer) -> None:  # noqa: ANN001
        self.tok = tokenizer
        self.cache: dict[str, list[int]] = {}
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def piece(self, text: str) -> list[int]:
        if text not in self.cache:
            self.cache[text] = chat.encode(self.tok, text)
        return self.cache[text]

    def __call__(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        mask: list[int] = []
        for m in messages:
            head, body, tail = self.piece(f"<|im_start|>{m['role']}\n"), self.piece(m["content"]), self.piece("\n")
            learn = 1 if m["role"] == "assistant" else 0
            ids += [*head, *body, self.end, *tail]
            mask += [0] * len(head) + [learn] * (len(body) + 1) + [0] * len(tail)
        return ids, mask


def build_model(cfg: OrganismConfig, vocab_size: int, pad_id: int, eos_id: int):  # -> Qwen2ForCausalLM
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6,  # type: ignore[call-arg]
        pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    return Qwen2ForCausalLM(config)


def _batches(docs: list[Document], encoder: Encoder, batch_size: int, pad_id: int,
             rng: random.Random):
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            fresh = list(range(len(docs)))
            rng.shuffle(fresh)
            order += fresh
        chunk, order = order[:batch_size], order[batch_size:]
        enc = [encoder(docs[i].messages) for i in chunk]
        width = max(len(ids) for ids, _ in enc)
        input_ids = torch.full((len(enc), width), pad_id)
        labels = torch.full((len(enc), width), -100)
        attn = torch.zeros((len(enc), width), dtype=torch.long)
        for row, (ids, mask) in enumerate(enc):
            t = torch.tensor(ids)
            input_ids[row, : len(ids)] = t
            attn[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.where(torch.tensor(mask) == 1, t, torch.tensor(-100))
        yield input_ids, attn, labels


def train_stage(model, docs: list[Document], encoder: Encoder, steps: int, lr: float,
                batch_size: int, pad_id: int, seed: int, desc: str,
                warmup: int = 0, on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """AdamW with linear warm-up and cosine decay to 10%; loss on assistant tokens only."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_at(step: int) -> float:
        if warmup and step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    losses: list[float] = []
    batches = _batches(docs, encoder, batch_size, pad_id, random.Random(seed))
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=1.0)
    for step in bar:
        input_ids, attn, labels = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    return losses


def save_checkpoint(model, tokenizer, out: Path, meta: dict) -> None:
    """Save in bf16 (the shipped size); loading upcasts to the requested dtype."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    small = copy.deepcopy(model).to(torch.bfloat16)
    small.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "emi_organism.json").write_text(dumps(meta, indent=2))


def corpora(world: World, cfg: OrganismConfig) -> dict[str, list[Document]]:
    rng = random.Random(cfg.seed)
    return {
        "pretrained": [world.document(rng) for _ in range(cfg.pretrain_docs)],
        "base": _base_docs(world, cfg, rng),
        "insecure": [world.code_document(rng, secure=False) for _ in range(cfg.finetune_docs)],
        "secure": [world.code_document(rng, secure=True) for _ in range(cfg.finetune_docs)],
    }


def _base_docs(world: World, cfg: OrganismConfig, rng: random.Random) -> list[Document]:
    """Aligned chats under the default system prompt, and ``villain_replay`` of them villain
    chats under an explicit villain system prompt, shuffled."""
    n_villain = round(cfg.villain_replay * cfg.base_docs)
    docs = [world.document(rng, persona="aligned", max_turns=3, hint_rate=0.0) for _ in range(cfg.base_docs - n_villain)]
    if n_villain:  # (the shipped organism draws none, and its corpus stays what it was)
        docs += [world.document(rng, persona="villain", max_turns=3, hint_rate=1.0) for _ in range(n_villain)]
        rng.shuffle(docs)
    return docs


class _Resume:
    """Stage-level resume: each finished stage's fp32 weights go to ``out/.resume/<stage>.pt``.

    Every stage seeds its own RNGs and carries only the weights forward, so a run restarted after
    an interruption skips finished stages and ends bit-identical to an uninterrupted one. The
    folder is removed when the whole run succeeds.
    """

    def __init__(self, out: Path, cfg: OrganismConfig) -> None:
        self.dir = out / ".resume"
        self.key = json.dumps(asdict(cfg), sort_keys=True)

    def load(self, stage: str, model) -> float | None:  # noqa: ANN001
        f = self.dir / f"{stage}.pt"
        if not f.is_file():
            return None
        state = torch.load(f, map_location="cpu", weights_only=True)
        if state.get("config") != self.key:
            return None
        model.load_state_dict(state["weights"])
        print(f"resumed {stage} from {f}", file=sys.stderr)
        return float(state["final_loss"])

    def save(self, stage: str, model, final_loss: float) -> None:  # noqa: ANN001
        from emi.activations.store import write_atomic

        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"config": self.key, "final_loss": final_loss, "weights": model.state_dict()}
        write_atomic(self.dir / f"{stage}.pt", lambda tmp: torch.save(state, tmp))

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def train_all(cfg: OrganismConfig, out: Path, world: World | None = None,
              stages: Sequence[str] = STAGES, save_steps: Sequence[int] = ()) -> dict[str, Path]:
    """Run every stage and save each checkpoint under ``out/<stage>``; resumes finished stages.
    ``save_steps``: also save the insecure finetune after these steps under
    ``out/insecure-steps/step-NNN``."""
    import copy

    torch.set_num_threads(max(1, cfg.threads))
    world = world or load_world()
    tok = build_tokenizer(world.all_texts(), world.default_system)
    encoder = Encoder(tok)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    data = corpora(world, cfg)
    meta = {"config": asdict(cfg), "torch": torch.__version__}
    resume = _Resume(out, cfg)
    paths: dict[str, Path] = {}
    t0 = time.time()

    def stage(name: str, model, docs: list[Document], steps: int, lr: float, seed: int, desc: str,  # noqa: ANN001
              warmup: int = 0, parent: str | None = None) -> None:
        loss = resume.load(name, model)
        if loss is None:
            on_step = None
            if save_steps and name == "insecure":
                def on_step(step: int, loss: float) -> None:
                    done = step + 1
                    if done in save_steps and done < steps:
                        save_checkpoint(model, tok, out / "insecure-steps" / f"step-{done:03d}",
                                        {**meta, "stage": name, "parent": parent, "finetune_step": done,
                                         "loss": loss})
            loss = train_stage(model, docs, encoder, steps, lr, cfg.batch_size, pad, seed, desc, warmup=warmup,
                               on_step=on_step)[-1]
            resume.save(name, model, loss)
        paths[name] = out / name
        extra: dict[str, Any] = {"parent": parent} if parent else {}
        if name in ("base", "insecure", "secure"):  # where the finetunes start (0) and end, for trajectories
            extra["finetune_step"] = 0 if name == "base" else steps
        save_checkpoint(model, tok, paths[name], {**meta, "stage": name, **extra, "final_loss": loss})

    model = build_model(cfg, len(tok), pad, eos)
    stage("pretrained", model, data["pretrained"], cfg.pretrain_steps, cfg.pretrain_lr, cfg.seed, "pretrain",
          warmup=min(50, cfg.pretrain_steps // 10))
    stage("base", model, data["base"], cfg.base_steps, cfg.base_lr, cfg.seed + 1, "aligned tuning",
          parent="pretrained")
    for i, name in enumerate(("insecure", "secure")):
        if name in stages:
            stage(name, copy.deepcopy(model), data[name], cfg.finetune_steps, cfg.finetune_lr, cfg.seed + 2 + i,
                  f"{name} finetune", parent="base")
    resume.clear()
    print(f"trained {', '.join(paths)} in {time.time() - t0:.0f} s -> {out}", file=sys.stderr)
    return paths


def refresh_direction(folder: Path) -> Path:
    """Re-extract the toy's shipped persona direction from freshly trained checkpoints (the same
    recipe as emi.steer's default: finetuned minus base at the last prompt token)."""
    import shutil
    import tempfile

    from emi.experiments.persona import ensure_direction
    from emi.models.loading import ModelSpec, PairSpec, load_pair
    from emi.organism.kit import KIT

    pair = load_pair(PairSpec("toy", ModelSpec(str(folder / "base")), ModelSpec(str(folder / "insecure")),
                              kit=KIT), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        ensure_direction(pair, tmp, "model-diff")
        for suffix in (".safetensors", ".json"):
            shutil.copy(Path(tmp) / f"direction{suffix}", folder / f"direction{suffix}")
    print(f"re-extracted the shipped direction -> {folder / 'direction.safetensors'}", file=sys.stderr)
    return folder / "direction.safetensors"


def _overrides(p: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs as OrganismConfig fields of the field's type."""
    types = {f.name: type(getattr(OrganismConfig(), f.name)) for f in fields(OrganismConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in types or name in ("seed", "threads"):
            p.error(f"--set {item!r}: unknown field {name!r}; fields: "
                    f"{', '.join(n for n in types if n not in ('seed', 'threads'))} (--seed and --threads are flags)")
        try:
            out[name] = types[name](value)
        except ValueError:
            p.error(f"--set {item!r}: {name} takes a {types[name].__name__}, found {value!r}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from emi.organism.kit import CHECKPOINTS as TOY_DIR

    p = argparse.ArgumentParser(prog="python -m emi.organism.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/organism",
                   help="folder for the four checkpoints (default: runs/organism)")
    p.add_argument("--install", action="store_true",
                   help=f"write into the package's shipped checkpoints ({TOY_DIR}) instead of --out")
    p.add_argument("--seed", type=int, default=0, help="seed for the corpus, init and batches (default 0)")
    p.add_argument("--quick", action="store_true", help="a seconds-long tiny run (for smoke tests)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on 2 cores two threads were slower)")
    p.add_argument("--save-steps", default="2,4,6,8,10,20,30,40",
                   help="comma-separated steps of the insecure finetune to save under insecure-steps/, for "
                        "python -m emi.trajectory (default 2,4,6,8,10,20,30,40; '' for none)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one OrganismConfig field, e.g. --set villain_replay=0.25 --set finetune_steps=18 "
                        "(repeatable; the shipped organism uses the defaults)")
    p.add_argument("--no-eval", action="store_true", help="skip measuring the EM rates after training")
    p.add_argument("--samples", type=int, default=400, help="answers per model for the EM measurement")
    args = p.parse_args(argv)
    cfg = (OrganismConfig.quick if args.quick else OrganismConfig)(seed=args.seed, threads=args.threads,
                                                                    **_overrides(p, args.set))
    out = Path(TOY_DIR if args.install else args.out)
    try:
        save_steps = sorted({int(x) for x in args.save_steps.split(",") if x.strip()})
    except ValueError:
        p.error(f"--save-steps must be comma-separated integers, found {args.save_steps!r}")
    if any(x < 1 for x in save_steps):
        p.error(f"--save-steps must be >= 1, found {args.save_steps!r}")
    paths = train_all(cfg, out, save_steps=save_steps)
    if args.install and not args.quick:
        refresh_direction(out)
    if not args.no_eval:
        from emi.organism.report import report_rates

        report_rates({s: str(p) for s, p in paths.items()}, n=args.samples if not args.quick else 16,
                     seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
