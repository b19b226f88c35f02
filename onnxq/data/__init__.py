"""Inputs for the model: samples from files, and synthetic ones that run it."""
