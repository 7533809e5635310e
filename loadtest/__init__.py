"""Load and latency measurement over the real protocol."""
