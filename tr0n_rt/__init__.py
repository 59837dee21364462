"""tr0n-rt: TR0N (ICML 2023) sampling as a fast, dependable inference engine.

The core (bundle loading, tokenisation, the Langevin loop over a backend) imports no torch;
build-time code (adapters, training, export) lives in tr0n_rt.export and needs the `export` extra.
"""
__version__ = "0.1.0"
