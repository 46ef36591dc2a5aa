"""Stage 2, behaviour: questions, sampling, judges, metrics with CIs, log-prob metrics, side effects (the engines that sample outside emi's process: emi.engines)."""
