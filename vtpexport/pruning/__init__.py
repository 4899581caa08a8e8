"""Visual-token pruning as tensor functions, usable eagerly and inside an exported graph.

Selectors (pre-LLM, in the vision stage): `fopru`, `prumerge`.
Schedules (inside the decoder, prefill only): `fitprune`, `pyramiddrop`, `fastv`.
Each returns indices of kept visual tokens; `ops.topk_ascending` is the one selection rule.
"""
