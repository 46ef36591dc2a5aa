"""Stage 4, behaviour: questions, elicitation, sampling, metrics with CIs, typed result records, log-prob metrics,
side effects (judging them: emi.judging; the engines that sample outside emi's process: emi.engines)."""
