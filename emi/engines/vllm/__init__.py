"""vLLM that emi starts itself: the launcher (engine environment, server processes), vllm-lens's
wire format, the hook functions that run in the server, the engine, and the capture reader."""
