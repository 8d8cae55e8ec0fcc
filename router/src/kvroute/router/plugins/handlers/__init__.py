"""Profile handlers: which scheduling profiles run for a request and which result is primary."""
