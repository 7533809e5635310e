"""Engine interfaces and implementations."""
