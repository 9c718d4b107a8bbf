"""inferkit-ladder: the multi-layer top-down generator of Nijkamp et al. as the
``ladder`` model plugin (entry point ``inferkit.models: ladder``), and its energy-based-prior
variant ``ladder-ebm``."""

from inferkit_ladder.config import LadderConfig
from inferkit_ladder.ebm import LadderEBM
from inferkit_ladder.model import LadderModel

__all__ = ["LadderConfig", "LadderEBM", "LadderModel"]
