"""fraudlab: reproducible, data-versioned payment-fraud detection."""

__version__ = "0.1.0"
