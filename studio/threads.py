"""Building networks beside model loads, in an app that serves many requests at once.

diffusers' and transformers' ``from_pretrained`` build their model with ``torch.nn.init``'s
functions swapped for no-ops (``no_init_weights``), and the swap is process-wide: a network built
in another thread meanwhile keeps whatever memory it was given. Seen here: Tune's LoRA factor B,
which must start at zero, held garbage, and training "diverged at step 1 (loss nan)", when every
tab's first action came at once and Compose loaded its models while Tune built its adapter. And a
seeded build (``torch.manual_seed(s)``, then draw the weights from the global generator) is only
reproducible if no other thread draws in between.

So every ``from_pretrained`` of the studio and every network a running app builds with fresh
weights (LoRA adapters, a series model or cells trained from a tab) goes through
:func:`building`, one re-entrant lock; a seeded build seeds inside it. A network built only to
receive a full ``load_state_dict`` does not need it. This module sits outside the engine's layers
(like :mod:`studio.errors`) because the lowest of them, ``data``, loads the text encoder.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_LOCK = threading.RLock()


@contextlib.contextmanager
def building(seed: int | None = None) -> Iterator[None]:
    """Hold the one build lock for the block (a model load, or a network's fresh weights); with
    ``seed``, seed torch's global generator first, so the block's draws are the seed's alone."""
    with _LOCK:
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        yield
