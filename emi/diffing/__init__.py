"""Model diffing: what a finetune changed, found without labels, beside the persona direction.

``adl`` (activation difference lens: mean differences on the first tokens of unrelated text, read
through the logit lens and a Patchscope, steered at the largest coherent strength), ``crosscoder``
(a BatchTopK crosscoder on paired activations, with latent scaling), ``kl`` (the tokens where the
two next-token distributions differ most), and ``loop`` (the EM table and cosine table of every
direction found). Every method writes emi directions that emi.steer, emi.export and the figures take.
"""
