"""Stage 5, judging: judges (OpenAI-compatible, local Hugging Face, plugins) and their cache, scores read off
logprobs, labels and judges compared, re-judging a run, and evaluate (sample, judge, summarise)."""
