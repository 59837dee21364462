"""Build-time half of tr0n-rt (needs torch): model adapters, TR0N training, the Langevin step, export.

Installed as ``tr0n_rt.export``; the runtime core in ``tr0n_rt`` never imports it.
"""
