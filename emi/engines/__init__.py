"""Stage 3, engines: where answers are sampled outside emi's process. One protocol for a backend
(emi.engines.base), the served-condition vocabulary (emi.engines.served), one module per backend:
in-process (the reference), an OpenAI-compatible server, vLLM that emi starts (emi.engines.vllm);
and the --engine flags made into a backend (emi.engines.select)."""
