"""The container image every component runs in (built from docker/Dockerfile)."""

BASE_IMAGE = "ghcr.io/medrobust/medrobust:0.1.0"
