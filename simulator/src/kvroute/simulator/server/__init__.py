"""The simulator's vLLM-compatible HTTP server: the engine model driven in real time behind an aiohttp app."""
