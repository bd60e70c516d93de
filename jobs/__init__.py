"""Thin Hydra entry points: each turns a config into a call into the pipeline package."""
