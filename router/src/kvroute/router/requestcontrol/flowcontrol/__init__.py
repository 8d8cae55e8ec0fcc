"""Flow control: requests wait in the router, in priority bands and fair queues, while the pool is saturated."""
