"""featurelm's HTTP service: feature endpoints, health and errors over FastAPI."""
