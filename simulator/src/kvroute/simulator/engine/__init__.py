"""Clock-agnostic engine model: batching, KV blocks with prefix caching, step time."""
