"""The OpenAI-compatible gateway: routes by model, holds cold starts, drives KEDA, meters usage."""
