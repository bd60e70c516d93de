"""Thin Hydra entry points (installed as embwalk.jobs): each turns a config into a call into embwalk."""
