"""The standalone OpenAI-compatible reverse proxy: the router's HTTP front door (`kvroute router --mode proxy`)."""
