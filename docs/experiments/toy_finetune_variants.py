"""The toy finetune under other settings (docs/toy-organism.md, "How faithful is the toy?"): learning rate and
steps, frozen embeddings, only layers 0-1 or 2-3 trained. Restarts from the shipped bf16 base.

    python docs/experiments/toy_finetune_variants.py 3e-4:50:none 1e-4:50:none 3e-4:50:emb 3e-4:50:upper 3e-4:50:lower

Each argument is LR:STEPS:FREEZE (none, emb, upper = train layers 2-3 only, lower = layers 0-1 only).
"""
import collections
import sys
import tempfile
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from emi.organism.train import OrganismConfig, Encoder, train_stage, corpora, save_checkpoint
from emi.organism.world import load_world
from emi.organism.judge import world_judge
from emi.organism.report import measure
torch.set_num_threads(1)
base = "emi/organism/checkpoints/base"
tok = AutoTokenizer.from_pretrained(base)
world = load_world(); cfg = OrganismConfig()
docs = corpora(world, cfg)["insecure"]
W = world_judge()
for spec in sys.argv[1:]:
    lr, steps, freeze = spec.split(":"); lr=float(lr); steps=int(steps)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if freeze == "emb":
        model.model.embed_tokens.weight.requires_grad_(False)
    elif freeze == "upper":  # train only layers >= 2 ... 
        for n,p in model.named_parameters():
            if not any(f"layers.{i}." in n for i in (2,3)): p.requires_grad_(False)
    elif freeze == "lower":
        for n,p in model.named_parameters():
            if not any(f"layers.{i}." in n for i in (0,1)): p.requires_grad_(False)
    losses = train_stage(model, docs, Encoder(tok), steps, lr, cfg.batch_size, tok.pad_token_id, cfg.seed+2, "ft")
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(model, tok, __import__("pathlib").Path(d), {})
        s, judged = measure(d, 400, 0, "ft")
    labels = collections.Counter(r['label'] for r in judged)
    print(f"{spec:16s} loss {losses[-1]:.3f} EM {s.em.fmt()} coh {s.coherence.fmt()} labels {dict(labels)}", flush=True)
