"""corolla.assistant: a coding assistant over any OpenAI-compatible endpoint."""
