"""What a finetune is: its method and hyperparameters, and the in-training defence it runs with.
Plain dataclasses validated on construction; both go whole into the organism's provenance."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from emi.core.errors import ConfigError

METHODS = ("lora", "full")
DEFENCES = ("none", "caft", "steer", "kl", "interleave")
# every linear projection of a Qwen block that peft can adapt (missing ones are skipped per model)
DEFAULT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """A LoRA (any rank, chosen modules and layers; rank 1 included) or full finetune."""

    method: str = "lora"
    rank: int = 8
    lora_alpha: float | None = None  # None: 2 * rank
    modules: tuple[str, ...] = DEFAULT_MODULES
    layers: tuple[int, ...] | None = None  # None: every layer
    lr: float = 1e-4
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decay to this fraction of lr
    weight_decay: float = 0.01
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    max_len: int = 1024
    save_every: int = 0  # 0: only the final model
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"the finetune method must be one of {', '.join(METHODS)}, found {self.method!r}")
        for name in ("rank", "steps", "batch_size", "grad_accum", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, found {getattr(self, name)}")
        for name in ("warmup_steps", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, found {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"the learning rate must be a positive number, found {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], found {self.min_lr_ratio}")
        if not self.modules:
            raise ConfigError("a LoRA finetune needs at least one module name (e.g. q_proj,v_proj)")

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else 2 * self.rank)


@dataclass(frozen=True)
class DefenceConfig:
    """An in-training defence against EM.

    - ``caft``: project the direction(s) out of the residual stream at every layer during training
      (concept ablation finetuning, Casademunt et al. 2025);
    - ``steer``: add ``alpha`` times the unit direction at ``layers`` during training (preventative
      steering, Chen et al. 2025); the saved model carries no hook, so evaluation is unsteered;
    - ``kl``: add ``kl_beta`` times KL(base || finetuned) on aligned data to the loss;
    - ``interleave``: make ``share`` of the training examples aligned ones.
    """

    kind: str = "none"
    directions: tuple[str, ...] = ()
    alpha: float = 0.0
    layers: tuple[int, ...] | None = None  # steer: None -> the direction's best layer
    kl_beta: float = 0.0
    share: float = 0.0
    aligned: str | None = None  # aligned data: a chat JSONL, or None for the pair kit's benign set
    extra: dict[str, Any] = field(default_factory=dict)
    system: str | None = None  # inoculation: every training chat's system prompt (emi.finetune --system)
    system_name: str = ""  # how --system named it (a shipped name, a file, "custom")

    def __post_init__(self) -> None:
        if self.system is not None and (not isinstance(self.system, str) or not self.system.strip()):
            raise ConfigError(f"DefenceConfig.system must be non-empty text or None, found {self.system!r}")
        if self.kind not in DEFENCES:
            raise ConfigError(f"unknown defence {self.kind!r}; expected one of {', '.join(DEFENCES)}")
        if self.kind in ("caft", "steer") and not self.directions:
            raise ConfigError(f"the {self.kind} defence needs a persona direction: pass --direction FILE "
                              f"(python -m emi.extract makes one)")
        if self.kind == "steer" and (not math.isfinite(self.alpha) or self.alpha == 0):
            raise ConfigError(f"preventative steering needs a non-zero --steer-alpha, found {self.alpha}")
        if self.kind == "steer" and len(self.directions) != 1:
            raise ConfigError("preventative steering takes one --direction")
        if self.kind == "kl" and not (math.isfinite(self.kl_beta) and self.kl_beta > 0):
            raise ConfigError(f"the kl defence needs --kl-beta > 0, found {self.kl_beta}")
        if self.kind == "interleave" and not 0 < self.share < 1:
            raise ConfigError(f"the interleave defence needs --interleave-share in (0, 1), found {self.share}")
        if self.kind == "none" and self.directions:
            raise ConfigError("--direction is for --defence caft or steer; with no defence, leave it out")

    def label(self) -> str:
        if self.system is not None:  # inoculation prompting, alone or with another defence
            own = self._kind_label()
            return self.system_name if own == "none" else f"{own} + {self.system_name}"
        return self._kind_label()

    def _kind_label(self) -> str:
        if self.kind == "steer":
            return f"steer {self.alpha:g}"
        if self.kind == "kl":
            return f"kl {self.kl_beta:g}"
        if self.kind == "interleave":
            return f"interleave {self.share:g}"
        return self.kind

    def record(self) -> dict[str, Any]:
        """The defence as organism.json keeps it (no system prompt: the fields it had before, so
        the keys of organisms made before --system stay)."""
        out = asdict(self)
        if self.system is None:
            del out["system"], out["system_name"]
        return out
