"""Request control: what happens to a request around scheduling (admission, hooks, the request lifecycle)."""
