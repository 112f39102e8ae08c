"""The measuring tools: ``harness bench`` (bench.py), its timing primitives (measure.py) and the diffusers
peer it is compared with (peer.py). Nothing here produces a result that a report reads."""
