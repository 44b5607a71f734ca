"""Reproduction of the DQfD paper's claims on Gymnasium tasks, with peer implementations measured alongside.

Run it through ``benchmarks/paper.py``; see docs/paper_reproduction.md.
"""
