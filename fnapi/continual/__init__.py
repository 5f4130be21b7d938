"""Continual learning: methods learn tasks one after another; the accuracy matrix and its measures."""
