"""Finetune a base into an organism folder (:mod:`emi.models.organism_folder`) with transformers'
``Trainer`` and peft: LoRA of any rank on chosen modules and layers, or full; loss on assistant
tokens only; checkpoints every N steps; an interrupted run resumes from its last checkpoint
(Trainer restores weights, optimiser, scheduler, RNG and data position, so the result equals an
uninterrupted run's); the in-training defences of :mod:`emi.training.defences`.

Why not TRL's ``SFTTrainer``: it installs cleanly beside the pinned transformers (trl 1.16, measured
with ``pip install --dry-run trl``), but its assistant-only loss needs ``{% generation %}`` markers in
the chat template, which neither Qwen's templates nor the embedded organism's carry, and its completion-only loss
learns the last turn only; masking by the rendered template (:func:`emi.training.data.encode`) works
for every template, and the KL penalty needs a ``compute_loss`` of its own either way.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emi.core.atomic import write_json
from emi.core.errors import ConfigError, EmiError
from emi.core.settings import differences
from emi.models.loading import LoadedModel, load_model
from emi.models.organism_folder import FORMAT, ORGANISM_FILE, Organism, read_organism
from emi.models.specs import ModelSpec
from emi.training import defences as D
from emi.training.config import DefenceConfig, FinetuneConfig
from emi.training.data import ChatDataset, ChatRecord, Encoded, encode


@dataclass(frozen=True)
class Job:
    """One organism to make: base, data, hyperparameters, defence, seed, folder."""

    base: ModelSpec
    data: ChatDataset
    config: FinetuneConfig
    defence: DefenceConfig
    seed: int
    out: Path
    kit: str | None = None  # the registered pair whose kit evaluates the organism
    aligned: tuple[ChatRecord, ...] = ()  # aligned chats for the kl and interleave defences
    device: str | None = None
    threads: int | None = None  # torch CPU threads (None: torch's default)

    def key(self) -> dict[str, Any]:
        """What determines the result: a folder holding a run with another key is refused."""
        return {"base": self.base.label(), "data_sha256": self.data.sha256, "n_examples": len(self.data),
                "config": asdict(self.config), "defence": self.defence.record(), "seed": self.seed,
                "aligned": len(self.aligned)}


def _targets(model: nn.Module, modules: Sequence[str]) -> list[str]:
    """The requested module names every one of whose modules is an nn.Linear (peft adapts those;
    fused MoE experts are not)."""
    kinds: dict[str, set[bool]] = {}
    for name, m in model.named_modules():
        kinds.setdefault(name.rsplit(".", 1)[-1], set()).add(isinstance(m, nn.Linear))
    found = [m for m in modules if kinds.get(m) == {True}]
    if not found:
        linear = sorted(k for k, v in kinds.items() if v == {True})
        raise ConfigError(f"none of the modules {', '.join(modules)} is a linear layer of this model; pass "
                          f"--modules from {', '.join(linear)}")
    return found


def with_lora(model: nn.Module, cfg: FinetuneConfig, n_layers: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if cfg.layers and (max(cfg.layers) >= n_layers or min(cfg.layers) < 0):
        raise ConfigError(f"--lora-layers {list(cfg.layers)} is out of range: the model has layers 0-{n_layers - 1}")
    lc = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0,  # type: ignore[arg-type]
                    target_modules=_targets(model, cfg.modules), layers_to_transform=list(cfg.layers) if cfg.layers else None, task_type="CAUSAL_LM")
    return get_peft_model(model, lc)  # type: ignore[arg-type]


class _Chats(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Encoded]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.items[i].input_ids, "labels": self.items[i].labels}


def collate(pad_id: int, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def encode_all(tok: Any, records: Sequence[ChatRecord], max_len: int, what: str) -> list[Encoded]:
    """Encoded chats that keep at least one assistant token within ``max_len``."""
    out = [e for e in (encode(tok, r.chat(), max_len) for r in records) if any(x != -100 for x in e.labels)]
    if not out:
        raise ConfigError(f"no chat of the {what} keeps an assistant token within --max-len {max_len}; raise it")
    return out


def _trainer_class() -> type:
    from transformers import Trainer

    class EmiTrainer(Trainer):
        kl: D.KLPenalty | None = None

        def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            if self.kl is not None:
                loss = loss + self.kl.term(model, self.state.global_step)
            return (loss, outputs) if return_outputs else loss

    return EmiTrainer


def _arguments(job: Job, device: str) -> Any:
    from transformers import TrainingArguments

    c = job.config
    return TrainingArguments(
        output_dir=str(job.out / "checkpoints"), max_steps=c.steps, per_device_train_batch_size=c.batch_size,
        gradient_accumulation_steps=c.grad_accum, learning_rate=c.lr, warmup_steps=c.warmup_steps,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": c.min_lr_ratio},
        weight_decay=c.weight_decay, adam_beta2=c.adam_beta2, max_grad_norm=c.max_grad_norm,
        save_strategy="steps" if c.save_every else "no", save_steps=c.save_every or c.steps,
        seed=job.seed, data_seed=job.seed, logging_steps=max(1, c.steps // 10), report_to="none",
        use_cpu=device == "cpu", bf16=device.startswith("cuda") and c.dtype in ("auto", "bf16"),
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=False)


def check_folder(job: Job, restart: bool = False) -> Organism | None:
    """None for a fresh folder (or one ``restart`` will empty); the organism of the same job
    (unfinished: to resume; finished: to keep); one sentence, saying what differs, old -> new, for
    another job's organism or run. Reads only: nothing is created."""
    org = read_organism(job.out)
    if org is None:
        if job.out.is_dir() and any(not f.name.startswith(".") for f in job.out.iterdir()) and not restart:
            raise ConfigError(f"{str(job.out)!r} is not empty and holds no organism; give --out a new or empty "
                              f"folder, or add --restart to empty it")
        return None
    ours = json.loads(json.dumps(job.key()))  # as the record stores it (tuples become lists)
    if org.record.get("key") == ours:
        return org
    if restart:
        return None
    diff = differences(org.record.get("key", {}), ours)
    state = "already holds a finished organism made" if org.done else "holds an unfinished finetune"
    raise ConfigError(f"{str(job.out)!r} {state} with other settings ({diff}); re-run its own command to "
                      f"{'keep' if org.done else 'resume'} it, give another --out, or add --restart to start it "
                      f"over with these settings (the folder is emptied)")


def _record(job: Job, status: str, **extra: Any) -> dict[str, Any]:
    import peft
    import transformers

    return {"format": FORMAT, "status": status, "base": job.base.id, "base_revision": job.base.revision,
            "kit": job.kit, "method": job.config.method, "seed": job.seed, "defence_label": job.defence.label(),
            "data": {"path": job.data.path, "sha256": job.data.sha256, "n_examples": len(job.data)},
            "config": asdict(job.config), "defence": job.defence.record(), "key": job.key(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__}, **extra}


def finetune(job: Job, callbacks: Sequence[Any] = ()) -> Organism:
    """Make (or resume) the organism ``job`` describes; returns it finished."""
    resumed = check_folder(job)
    if resumed is not None and resumed.done:  # the same job, finished before (a re-run of a multi-seed command)
        print(f"{job.out} already holds this organism (finished {resumed.record.get('finished')}); kept", file=sys.stderr)
        return resumed
    if job.threads:
        torch.set_num_threads(job.threads)
    job.out.mkdir(parents=True, exist_ok=True)
    started = resumed.record.get("started") if resumed else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(job.out / ORGANISM_FILE, _record(job, "training", started=started))
    lm = load_model(job.base, role="base", dtype=job.config.dtype if job.config.dtype != "auto" else "fp32",
                    device=job.device)
    try:
        trainer, directions = _build(job, lm, callbacks)
    except EmiError:
        if resumed is None:  # refused before training: leave no half-made organism behind
            (job.out / ORGANISM_FILE).unlink(missing_ok=True)
        raise
    last = Organism(job.out, {}).checkpoints()
    if last:
        print(f"resuming {job.out} from {last[-1].name}", file=sys.stderr)
    if last and _step(last[-1]) >= job.config.steps:  # killed after the last step: Trainer would not reload it
        trainer._load_from_checkpoint(str(last[-1]))
        trainer.state = trainer.state.load_from_json(str(last[-1] / "trainer_state.json"))
        loss: float | None = None  # (the training loss of the killed run is in its log history)
    else:
        with D.training_hooks(trainer.model, job.defence, directions):
            loss = trainer.train(resume_from_checkpoint=str(last[-1]) if last else None).training_loss
    final = job.out / "final"
    if final.exists():
        shutil.rmtree(final)
    trainer.save_model(str(final))
    trainer.state.save_to_json(str(final / "trainer_state.json"))  # its step, for python -m emi.trajectory
    history = [h for h in trainer.state.log_history if "loss" in h]
    write_json(job.out / ORGANISM_FILE, _record(
        job, "done", started=started, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        final_loss=history[-1]["loss"] if history else None, train_loss=loss,
        steps=trainer.state.global_step, log_history=history))
    org = read_organism(job.out)
    assert org is not None
    return org


def _step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0))


def _build(job: Job, lm: LoadedModel, callbacks: Sequence[Any]) -> tuple[Any, list[Any]]:
    model, tok = lm.model, lm.tokenizer
    directions = D.load_directions(job.defence, model)
    records = list(job.data.records)
    if job.defence.kind == "interleave":
        records = D.interleave(records, job.aligned, job.defence.share, job.seed)
    items = encode_all(tok, records, job.config.max_len, "dataset")
    frozen = copy.deepcopy(model).eval().requires_grad_(False) if (
        job.defence.kind == "kl" and job.config.method == "full") else None
    from transformers import set_seed

    set_seed(job.seed)  # the LoRA initialisation
    if job.config.method == "lora":
        model = with_lora(model, job.config, lm.n_layers)
    model.train()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    trainer = _trainer_class()(model=model, args=_arguments(job, str(lm.device)), train_dataset=_Chats(items),
                               data_collator=lambda rows: collate(pad, rows), processing_class=tok,
                               callbacks=list(callbacks))
    if job.defence.kind == "kl":
        if not job.aligned:
            raise ConfigError("the kl defence needs aligned chats, and the aligned set is empty")
        aligned = encode_all(tok, job.aligned, job.config.max_len, "aligned set")
        bs = job.config.batch_size
        batches = [collate(pad, [{"input_ids": e.input_ids, "labels": e.labels} for e in aligned[i: i + bs]])
                   for i in range(0, len(aligned), bs)]
        trainer.kl = D.KLPenalty(job.defence.kl_beta, batches, frozen)
    return trainer, directions

