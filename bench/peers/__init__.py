"""Peer systems for `bench/bench_peers.py`: the same `probe` job run by
Celery, RQ, Dramatiq and a plain process pool, and the client that drives them."""
