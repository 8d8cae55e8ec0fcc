"""kopf handlers, one module per kind: each finds the pools an event concerns and reconciles them."""
