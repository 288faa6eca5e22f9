"""The drop-in RSSM: the module (:class:`RSSM`), its state (:class:`RSSMState`), argument checks and backends.

- ``module.py``: :class:`RSSM`, its parameters and public methods (the boundary where arguments are checked);
- ``state.py``: :class:`RSSMState`;
- ``checks.py``: the argument checks of the public methods;
- ``backend.py``: the backend interface (observe, obs_step, img_step, imagine, sample, kl), the layers a backend is
  built from, and the rollout loop both share;
- ``fused.py`` / ``reference.py``: the two backends (fused kernels; plain PyTorch, the executable specification),
  objects built by the module from its layers; neither imports ``module.py``;
- ``sequence_linear.py``: a Linear layer whose weight gradient is one GEMM over a whole imagined sequence.
"""

from dreamer_fast.rssm.module import RSSM
from dreamer_fast.rssm.state import RSSMState

__all__ = ["RSSM", "RSSMState"]
