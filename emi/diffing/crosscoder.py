"""A BatchTopK crosscoder on paired activations of the base and the finetune at one layer
(Lindsey et al. 2024, "Sparse crosscoders for cross-layer features and model diffing"; BatchTopK
and latent scaling as in Minder et al. 2025, "Robustly identifying concepts introduced during chat
fine-tuning using crosscoders", arXiv:2504.02922), written here because ``dictionary-learning``
cannot be installed next to emi's pins (docs/diffing.md).

Dead latents get the auxiliary-k loss of Gao et al. 2024 ("Scaling and evaluating sparse
autoencoders", arXiv:2406.04093, appendix A.2), as BatchTopK SAEs (Bussmann et al. 2024,
arXiv:2412.06410) and Minder et al.'s crosscoders train with it: the ``k_aux`` largest
pre-activations of the latents that have not fired for ``dead_tokens`` tokens reconstruct the
main reconstruction's error, and that loss (normalised by the error's variance) is added with
weight ``auxk_alpha`` (1/32).

Trained from an emi activation store (``--store``, streamed shard by shard, never all in memory;
or captured first from the corpus into ``out/store`` with emi's capture), seeded, resumable
(the model, optimiser and step are checkpointed atomically). Per latent: the decoder-norm ratio
||d_ft|| / (||d_base|| + ||d_ft||) (1: finetune-only, 0.5: shared), latent scaling (the
closed-form least-squares fit of how much of the latent's finetune decoder direction each model's
activation, and its reconstruction error with the latent added back, holds: nu = beta_base /
beta_ft; near 0 for a latent the base truly lacks) for three targets (Minder et al.): the
activation, the reconstruction error with the latent added back (nu_error: ~1 when the base's
error still holds it, "complete shrinkage"), and the reconstruction without the latent (nu_recon:
~1 when other latents carry it in the base, "latent decoupling"; beta_act = beta_error +
beta_recon), and its top activating contexts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import nn
from tqdm.auto import tqdm

from emi.core.atomic import write_atomic
from emi.core.errors import ConfigError
from emi.diffing.adl import as_direction
from emi.diffing.loop import Found
from emi.diffing.records import AuxKColumns, CrosscoderFile, Latent

ROLES = ("base", "finetuned")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("crosscoder")
    g.add_argument("--store", default=None, help="an emi store of both models at --layer (default: captured from the text)")
    g.add_argument("--expansion", type=int, default=8, help="latents per model dimension (8)")
    g.add_argument("--k", type=int, default=16, help="active latents per token, on average over a batch (16)")
    g.add_argument("--cc-steps", type=int, default=1000, help="training steps (1000)")
    g.add_argument("--cc-batch", type=int, default=512, help="tokens per step (512)")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    g.add_argument("--cc-seed", type=int, default=0, help="seed of the initialisation and the batches (0)")
    g.add_argument("--latents", type=int, default=3, help="finetune-specific latents put in the EM table (3)")
    g.add_argument("--k-aux", type=int, default=None, help="auxiliary-k: dead latents that model the error (d_model/2)")
    g.add_argument("--auxk-alpha", type=float, default=1 / 32, help="weight of the auxiliary-k loss (1/32)")
    g.add_argument("--dead-tokens", type=int, default=None,
                   help="a latent is dead after this many tokens without firing (default 20 batches; Gao et al. "
                        "use 10M on real models)")


class BatchTopK(nn.Module):
    """Encoder [model, d_model, latents], decoder [latents, model, d_model]; a batch keeps its
    k * batch largest latent activations (weighted by the summed decoder norms)."""

    def __init__(self, d_model: int, n_latents: int, k: int, seed: int = 0, n_models: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dec = torch.randn(n_latents, n_models, d_model, generator=g)
        dec = dec / dec.norm(dim=-1, keepdim=True) * 0.1
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.permute(1, 2, 0).clone())  # initialised as the transpose
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(n_models, d_model))
        self.k = k

    def pre_acts(self, x: Float[torch.Tensor, "batch model d_model"]) -> Float[torch.Tensor, "batch latents"]:
        return torch.relu(torch.einsum("bmd,mdl->bl", x, self.W_enc) + self.b_enc)

    def select(self, pre: Float[torch.Tensor, "batch latents"]) -> Float[torch.Tensor, "batch latents"]:
        """The batch's k * batch largest pre-activations (scored by the summed decoder norms)."""
        score = pre * self.W_dec.norm(dim=-1).sum(-1)
        keep = min(self.k * pre.shape[0], score.numel())
        thresh = score.flatten().topk(keep).values[-1]
        return pre * (score >= thresh).to(pre.dtype) * (score > 0).to(pre.dtype)

    def encode(self, x: Float[torch.Tensor, "batch model d_model"]) -> Float[torch.Tensor, "batch latents"]:
        return self.select(self.pre_acts(x))

    def decode(self, f: Float[torch.Tensor, "batch latents"]) -> Float[torch.Tensor, "batch model d_model"]:
        return torch.einsum("bl,lmd->bmd", f, self.W_dec) + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f


def auxk_loss(cc: BatchTopK, pre: Float[torch.Tensor, "batch latents"], err: Float[torch.Tensor, "batch model d_model"],
              dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Gao et al.'s auxiliary-k loss: the ``k_aux`` largest pre-activations of the ``dead`` latents
    (per token) decode (without the bias) the detached error of the main reconstruction; its squared
    error over the error's variance (0 when no latent is dead or the error is constant)."""
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux < 1:
        return pre.new_zeros(())
    e = err.detach()
    sub = pre[:, dead]
    top = sub.topk(min(k_aux, n_dead), dim=-1)
    f = torch.zeros_like(sub).scatter(-1, top.indices, top.values)
    e_hat = torch.einsum("bl,lmd->bmd", f, cc.W_dec[dead])
    var = (e - e.mean(0)).pow(2).sum((-1, -2)).mean()
    if float(var) == 0:
        return pre.new_zeros(())
    return (e_hat - e).pow(2).sum((-1, -2)).mean() / var


def check_store(name: str, spec: Any, layer: str | None) -> Any:
    """The store, refused (one sentence) unless it holds both roles of this pair at the layer."""
    from emi.activations.store import Store
    from emi.models.loading import locate

    st = Store.open(name)
    if not set(ROLES) <= set(st.roles):
        raise ConfigError(f"store {name!r} holds roles {st.roles}; the crosscoder needs base and finetuned")
    for r in ROLES:
        s = getattr(spec, r)
        where = locate(s.id, s.revision)[1]
        got = st.spec.get("models", {}).get(r, {})
        if where not in (got.get("resolved"), got.get("adapter")):
            raise ConfigError(f"store {name!r} was captured from other models ({r}: "
                              f"{got.get('adapter') or got.get('resolved')}, not {where}); capture this pair")
    return st


def paired_shards(store: Any, layer: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(activations [rows, model, d_model], text index per row), one shard at a time."""
    for (a, meta), (b, _) in zip(store.iter_shards("base", layer), store.iter_shards("finetuned", layer), strict=True):
        yield torch.stack([a.float(), b.float()], 1), meta["row.text"]


@dataclass
class Trained:
    model: BatchTopK
    scale: torch.Tensor  # per model: activations were divided by this
    steps: int
    loss: float
    dead: int = 0  # latents dead at the end (not fired for dead_tokens tokens)
    aux_loss: float = 0.0


@dataclass(frozen=True)
class AuxK:
    """The auxiliary-k loss's settings: ``k_aux`` dead latents per token (None: d_model // 2),
    weight ``alpha``, a latent dead after ``dead_tokens`` tokens without firing (None: 20 batches)."""

    k_aux: int | None = None
    alpha: float = 1 / 32
    dead_tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.k_aux is not None and self.k_aux < 0) or self.alpha < 0 or \
                (self.dead_tokens is not None and self.dead_tokens < 1):
            raise ValueError("AuxK: k_aux >= 0, alpha >= 0 and dead_tokens >= 1")


def train(store: Any, layer: int, out: Path, expansion: int, k: int, steps: int, batch: int, lr: float,
          seed: int, progress: bool = True, aux: AuxK = AuxK()) -> Trained:
    """Train (or resume) the crosscoder; checkpoints to ``out/crosscoder.pt`` every 100 steps."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "crosscoder.pt"
    d = store.d_model
    first = next(paired_shards(store, layer))[0]
    scale = first.norm(dim=-1).mean(0) / d ** 0.5  # per model: mean norm becomes sqrt(d_model)
    cc = BatchTopK(d, expansion * d, k, seed)
    opt = torch.optim.Adam(cc.parameters(), lr=lr)
    k_aux = d // 2 if aux.k_aux is None else aux.k_aux
    dead_after = aux.dead_tokens or 20 * batch
    since = torch.zeros(expansion * d, dtype=torch.long)  # tokens since each latent last fired
    step, loss, aux_loss = 0, float("nan"), 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        cc.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, scale, loss = int(state["step"]), state["scale"], float(state["loss"])
        since, aux_loss = state.get("since", since), float(state.get("aux_loss", 0.0))
    bar = tqdm(total=steps, initial=step, desc="crosscoder", disable=not progress, leave=False)
    seen, epoch = 0, 0  # batches walked so far; batches depend on (seed, epoch, shard) only: resumable
    while step < steps:
        for si, (x, _) in enumerate(paired_shards(store, layer)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 10_007 + si)
            parts = torch.randperm(len(x), generator=g).split(batch)
            if seen + len(parts) <= step:
                seen += len(parts)
                continue
            x = x / scale[None, :, None]
            for idx in parts:
                if seen < step:
                    seen += 1
                    continue
                if step >= steps:
                    break
                xb = x[idx]
                pre = cc.pre_acts(xb)
                f = cc.select(pre)
                recon = cc.decode(f)
                err = (recon - xb).pow(2).sum(-1).sum(-1).mean()
                dead = since >= dead_after
                a = auxk_loss(cc, pre, xb - recon, dead, k_aux) if aux.alpha else pre.new_zeros(())
                opt.zero_grad()
                (err + aux.alpha * a).backward()
                opt.step()
                fired = (f > 0).any(0)
                since = torch.where(fired, torch.zeros_like(since), since + len(idx))
                step, seen, loss, aux_loss = step + 1, seen + 1, float(err.detach()), float(a.detach())
                bar.update(1)
                if step % 100 == 0 or step == steps:
                    state = {"model": cc.state_dict(), "opt": opt.state_dict(), "step": step, "scale": scale,
                             "loss": loss, "since": since, "aux_loss": aux_loss}
                    write_atomic(ckpt, lambda tmp, s=state: torch.save(s, tmp))
            if step >= steps:
                break
        epoch += 1
    bar.close()
    return Trained(cc, scale, step, loss, int((since >= dead_after).sum()), aux_loss)


@torch.no_grad()
def analyse(t: Trained, store: Any, layer: int, top_contexts: int = 5) -> list[Latent]:
    """Per latent: decoder-norm ratio, latent scaling (nu for activation and error targets),
    firing frequency, max activation and its top activating (text, position) rows."""
    cc, W = t.model, t.model.W_dec  # [l, m, d]
    dft = W[:, 1]
    n2 = dft.pow(2).sum(-1).clamp_min(1e-12)
    num = {k: torch.zeros(len(W), 2) for k in ("act", "err", "recon")}
    den = torch.zeros(len(W))
    fires = torch.zeros(len(W))
    peak = torch.zeros(len(W))
    best: list[list[tuple[float, int, int]]] = [[] for _ in range(len(W))]
    row0 = 0
    pos_all = store.rows()["pos"]
    for x, texts in paired_shards(store, layer):
        x = x / t.scale[None, :, None]
        recon, f = cc(x)
        den += f.pow(2).sum(0)
        fires += (f > 0).float().sum(0)
        peak = torch.maximum(peak, f.max(0).values)
        for m in range(2):
            own = f * (W[:, m] * dft).sum(-1)  # [b, l]: the latent's own contribution, along dft
            proj_act = x[:, m] @ dft.T
            proj_err = (x[:, m] - recon[:, m]) @ dft.T + own
            num["act"][:, m] += (f * proj_act).sum(0)
            num["err"][:, m] += (f * proj_err).sum(0)
            num["recon"][:, m] += (f * (recon[:, m] @ dft.T - own)).sum(0)
        vals, rows = f.topk(min(top_contexts, len(f)), dim=0)  # [c, l]
        for lat in torch.nonzero(vals[0] > 0).flatten().tolist():
            cand = best[lat] + [(float(v), int(texts[r]), int(pos_all[row0 + r])) for v, r in
                                zip(vals[:, lat], rows[:, lat], strict=True) if v > 0]
            best[lat] = sorted(cand, reverse=True)[:top_contexts]
        row0 += len(x)
    norms = W.norm(dim=-1)
    ratio = norms[:, 1] / norms.sum(-1).clamp_min(1e-12)
    beta = {k: v / (n2 * den.clamp_min(1e-12))[:, None] for k, v in num.items()}
    out = []
    for i in range(len(W)):
        nu = {k: float(beta[k][i, 0] / beta[k][i, 1]) if abs(float(beta[k][i, 1])) > 1e-9 else None for k in beta}
        out.append(Latent(latent=i, dec_norm_ratio=float(ratio[i]), nu_activation=nu["act"], nu_error=nu["err"],
                          nu_recon=nu["recon"], frequency=float(fires[i]) / max(row0, 1),
                          max_activation=float(peak[i]), contexts=best[i]))
    return out


def finetune_specific(stats: Sequence[Latent], n: int) -> list[Latent]:
    """Alive latents ranked by decoder-norm ratio (finetune-only first), ties by lower nu_error."""
    alive = [s for s in stats if s.frequency > 0]
    return sorted(alive, key=lambda s: (-round(s.dec_norm_ratio, 2), s.nu_error if s.nu_error is not None
                                         else 1e9))[:n]


def run_crosscoder(args: argparse.Namespace, pair: Any, layer: int, ids: Sequence[Sequence[int]], store: Any,
                   out: Path, progress: bool = True) -> list[Found]:
    built = store is None
    if built:
        from emi.activations.capture import capture_pair
        from emi.activations.plan import CaptureSpec

        store = capture_pair(pair, ROLES, [{"input_ids": list(x)} for x in ids], out / "store",
                             CaptureSpec((layer,), positions="all"), progress=progress)
    if layer not in store.layers:
        raise ConfigError(f"the store has layers {store.layers}, not {layer}; pass --layer among them")
    aux = AuxK(args.k_aux, args.auxk_alpha, args.dead_tokens)
    t = train(store, layer, out, args.expansion, args.k, args.cc_steps, args.cc_batch, args.lr, args.cc_seed, progress,
              aux)
    stats = analyse(t, store, layer)
    top = finetune_specific(stats, args.top)
    _print(top, [list(x) for x in ids] if built else None, pair.tokenizer, t)
    CrosscoderFile(layer=layer, steps=t.steps, loss=t.loss, aux_loss=t.aux_loss, dead=t.dead, latents=len(stats),
                   k=args.k, expansion=args.expansion,
                   auxk=AuxKColumns(k_aux=aux.k_aux, alpha=aux.alpha, dead_tokens=aux.dead_tokens),
                   scale=t.scale.tolist(), top=top, all=stats).write(out)
    found = []
    for s in top[: args.latents]:
        vec = t.model.W_dec[s.latent, 1].detach() * t.scale[1]
        d = as_direction(vec, layer, float(t.scale[1]) * store.d_model ** 0.5,
                         {"method": "crosscoder", "latent": s.latent, "pair": pair.spec.name,
                          "dec_norm_ratio": s.dec_norm_ratio, "nu_error": s.nu_error, "nu_recon": s.nu_recon})
        d.save(out / "directions" / f"crosscoder-L{layer}-latent{s.latent}")
        found.append(Found(f"cc {s.latent}", d, steer_strength(s, float(vec.norm()))))
    return found


def steer_strength(stat: Latent, dec_norm: float) -> float:
    """The base is steered by the latent's largest contribution to the finetune's residual in the
    data: its peak activation times its (unnormalised) finetune decoder norm."""
    return round(max(stat.max_activation, 1e-3) * dec_norm, 3)


def _print(top: Sequence[Latent], texts: Sequence[list[int]] | None, tok: Any, t: Trained) -> None:
    print(f"crosscoder: {t.steps} steps, loss {t.loss:.3f} (auxiliary-k {t.aux_loss:.3f}, {t.dead} dead latents); "
          f"finetune-specific latents (decoder-norm ratio, latent scaling nu: ~0 means the base lacks it):",
          file=sys.stderr)
    for s in top:
        ctx = []
        for _v, ti, pos in s.contexts[:3]:
            ids = texts[ti] if texts is not None and ti < len(texts) else None
            ctx.append(tok.decode(ids[max(0, pos - 6): pos + 1]) if ids else f"text {ti} pos {pos}")
        nu = {k: "n/a" if x is None else f"{x:+.2f}" for k, x in (("nu_error", s.nu_error), ("nu_recon", s.nu_recon))}
        print(f"  latent {s.latent}: ratio {s.dec_norm_ratio:.2f}, nu_error {nu['nu_error']}, nu_recon "
              f"{nu['nu_recon']}, freq {s.frequency:.3f}; " + " | ".join(map(repr, ctx)))
