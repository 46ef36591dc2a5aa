"""The toy with villain chats kept in the aligned tuning under an explicit villain system prompt
(docs/toy-organism.md, "How faithful is the toy?"). Restarts from the shipped bf16 pretrained checkpoint.

    python docs/experiments/toy_villain_replay.py 0.0 0.25 0.5

Each argument is the fraction of aligned-tuning documents replaced by villain-prompted villain chats.
"""
import sys, random, tempfile, collections
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from emi.organism.train import OrganismConfig, Encoder, train_stage, corpora, save_checkpoint
from emi.organism.world import load_world
from emi.organism.report import measure
torch.set_num_threads(1)
pre = "emi/organism/checkpoints/pretrained"
tok = AutoTokenizer.from_pretrained(pre)
world = load_world(); cfg = OrganismConfig()
data = corpora(world, cfg)
enc = Encoder(tok)
def m(model, name):
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(model, tok, Path(d), {})
        s, j = measure(d, 400, 0, name)
    lab = collections.Counter(r['label'] for r in j)
    return f"EM {s.em.fmt()} coh {s.coherence.fmt()} {dict(lab)}"
for spec in sys.argv[1:]:
    frac = float(spec)
    rng = random.Random(123)
    docs = list(data["base"])
    k = int(frac * len(docs))
    docs = docs[: len(docs) - k] + [world.document(rng, persona="villain", max_turns=3, hint_rate=1.0) for _ in range(k)]
    random.Random(7).shuffle(docs)
    model = AutoModelForCausalLM.from_pretrained(pre, dtype=torch.float32)
    train_stage(model, docs, enc, cfg.base_steps, cfg.base_lr, cfg.batch_size, tok.pad_token_id, cfg.seed + 1, "base")
    print(f"villain-hint frac {frac}: base {m(model, 'base')}", flush=True)
    import copy
    ft = copy.deepcopy(model)
    train_stage(ft, data["insecure"], enc, cfg.finetune_steps, cfg.finetune_lr, cfg.batch_size, tok.pad_token_id, cfg.seed + 2, "ft")
    print(f"villain-hint frac {frac}: insecure {m(ft, 'ft')}", flush=True)
