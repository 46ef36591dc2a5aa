"""Stage 2, behaviour: questions, sampling, judges, metrics with CIs, log-prob metrics, side effects, sampling engines."""
