"""Visual-token pruning as tensor functions, usable eagerly and inside an exported graph.

One module per method family, each declaring its methods in the registry (`registry.py`):
selectors before the LLM (`fopru.py`: fopru-rank, fopru-row; `prumerge.py`: prumerge,
prumerge+; `recover.py`: recover; `baselines.py`: random, pool) and schedules inside the
decoder's prefill (`fitprune.py`, `pyramiddrop.py`, `fastv.py`, through the hook points of
`prefill.py`). `ops.py` holds the
selection primitives they share; `ops.topk_ascending` is the one selection rule.
"""
