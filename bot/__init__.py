"""paperbot: alerts for trending ML papers from Hugging Face, by email, Slack and webhooks."""

__version__ = "0.1.0"
