"""DreamerV2's agent on top of the RSSM: networks (``nets.py``), world model (``world_model.py``), actor-critic
(``behavior.py``) and the agent that acts and trains (``agent.py``)."""
