"""`kvroute bench overhead`: what the router costs: scheduling latency, proxy CPU per request, index memory."""
