"""Simulated scenarios built on the planners, AWAS and the simulator (pure).

* :mod:`.dynamic_load`: a shared cluster under Poisson requests and bursty
  background load, AWAS re-bidding per request against static-capacity baselines
  (``edgeci bench sim --scenario dynamic-load``, ``benchmarks/awas.py``).
"""
