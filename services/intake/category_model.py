"""The category model of a node, loaded (or trained reproducibly on first start) in the background."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# One trained model per training file per process: every node of an embedded federation (and every
# node a test suite starts) would otherwise retrain the same model on its own data_dir.
_TRAINED: dict[Path, Any] = {}


_LOADED: dict[tuple[Path, int], Any] = {}


_TRAINING_LOCK = threading.Lock()


def load_or_train(data_dir: Path, shared_data: Path | None) -> Any:
    """``classifier.ensure_model`` with an in-process cache; None when there is neither model nor data."""
    from services.intake.classifier import default_model_path, ensure_model, load_current

    path = default_model_path(data_dir)
    try:
        key = (path.resolve(), path.stat().st_mtime_ns)
    except OSError:
        key = None
    with _TRAINING_LOCK:
        # The nodes of one host process (services/host.py) share one data folder: one copy in
        # memory, loaded once under the lock while the other nodes' loaders wait for it.
        model = _LOADED.get(key) if key is not None else None
        if model is None:
            model = load_current(path)
            if model is not None and key is not None:
                _LOADED[key] = model
    if model is not None:
        return model
    source = (Path(shared_data) / "messages.csv").resolve() if shared_data is not None else None
    with _TRAINING_LOCK:
        cached = _TRAINED.get(source) if source is not None else None
        if cached is not None:
            cached.save(path)
            return cached
        model = ensure_model(data_dir, shared_data)
        if model is not None and source is not None:
            _TRAINED[source] = model
        if model is not None and path.exists():
            _LOADED[(path.resolve(), path.stat().st_mtime_ns)] = model
        return model


class CategoryModel:
    """The category model, loaded (or trained on first start) in a background thread.

    Until it is ready, submissions without a category stay uncategorised and flagged for a clerk,
    so serving never waits for training. ``enabled=False`` (``LIANXIN_INTAKE_CLASSIFIER=off``) disables it.
    """

    def __init__(self, data_dir: Path, shared_data: Path | None, *, enabled: bool = True) -> None:
        self._data_dir = data_dir
        self._shared_data = shared_data
        self._enabled = enabled
        self.model: Any = None
        self.ready = threading.Event()

    def start(self) -> CategoryModel:
        if not self._enabled:
            self.ready.set()
            return self
        threading.Thread(target=self._load, name="intake-category-model", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            self.model = load_or_train(self._data_dir, self._shared_data)
            if self.model is None:
                log.info("no category model and no messages.csv; categories left for clerks")
        except Exception:
            log.warning("category model could not be loaded; categories left for clerks", exc_info=True)
        finally:
            self.ready.set()

    def categorise(self, text: str) -> str | None:
        model = self.model
        return None if model is None else str(model.predict([text])[0][0])

    def scored(self, text: str) -> tuple[str, float]:
        model = self.model
        if model is None:
            return "", 0.0
        category, confidence = model.predict([text])[0]
        return str(category), float(confidence)
