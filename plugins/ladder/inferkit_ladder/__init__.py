"""inferkit-ladder: the multi-layer top-down generator of Nijkamp et al. as the
``ladder`` model plugin (entry point ``inferkit.models: ladder``)."""

from inferkit_ladder.config import LadderConfig
from inferkit_ladder.model import LadderModel

__all__ = ["LadderConfig", "LadderModel"]
