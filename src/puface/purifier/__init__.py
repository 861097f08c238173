"""The PuFace purifier: a RED-Net trained on amplified cloaked images to remove facial cloaks.

    >>> from puface.purifier import Purifier
    >>> p = Purifier.load()                 # default purifier shipped with the package   # doctest: +SKIP
    >>> clean = p.purify(images)            # (N, 3, H, W) in [0, 1] -> same shape          # doctest: +SKIP

Modules: `rednet` (architecture), `amplify` (training inputs), `losses` (image + feature loss),
`data` (pairs and the identity split), `config` (TOML config), `train` (DDP training),
`checkpoint` (file formats), `apply` (`Purifier`, folder purification).
"""

from __future__ import annotations

from .apply import Purifier, default_weights_path, purify_folder
from .rednet import RedNet, RedNetConfig

__all__ = ["Purifier", "RedNet", "RedNetConfig", "default_weights_path", "purify_folder", "purifier_identities"]


def purifier_identities(*args, **kwargs):
    """See `puface.purifier.data.purifier_identities` (imported lazily)."""
    from .data import purifier_identities as f

    return f(*args, **kwargs)
