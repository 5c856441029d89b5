"""Serving the exact ensemble: training-free aggregation, the servable export, its pyfunc and live predictions."""
