"""OpenAI-compatible HTTP API over a swarm: ``create_app(SwarmEngine(model))``, served by uvicorn."""
