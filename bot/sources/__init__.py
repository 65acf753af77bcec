"""Upstream sources: one module per way of reading Hugging Face papers."""
