"""Built-in plugins: filters, scorers, pickers, profile handlers and saturation detectors."""
