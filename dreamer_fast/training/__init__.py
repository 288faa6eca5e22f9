"""The training machinery around the agent: the loop (``loop.py``), sequence replay (``replay.py``,
``replay_chunks.py``), checkpoints and resume (``checkpoint.py``, ``resume.py``, ``atomic.py``), logging
(``logger.py``, ``run_stats.py``), stop signals (``signals.py``), several processes (``distributed.py``) and greedy
evaluation (``evaluation.py``)."""
