"""The orchestration behind `main.py`: flags (`args`), configs from flags (`configs`), one
version's training (`runners`), its results folder (`artifacts`), the cross-version comparison
(`compare`), and the run itself (`app`).  Framework-free at import time: jax, torch and
transformers are imported only for the versions a command asks for.
"""
