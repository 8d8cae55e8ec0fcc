"""Predicting a request's time to first token on an endpoint: the step-time model, its online learner, and the
router-side view of the work each endpoint has in flight."""
