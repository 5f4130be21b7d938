"""Continual learning: a model learns tasks one after another, under several methods, task orders and
seeds (``fnapi continual RECIPE --output DIR``), and the accuracy matrix of each sequence measures what
it learned, kept and forgot."""
