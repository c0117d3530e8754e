"""An edit set on disk, opened with its model: what ``horen edit``, ``generate`` and ``serve``
share, and what API users call to go on from a saved directory.

Example:
    >>> editor = open_edit_set("my-edits")            # doctest: +SKIP
    >>> editor.edit("Who leads Zorblat Industries?", "Mira Quell")
    >>> editor.save("my-edits")
"""

from __future__ import annotations

import os

from .editors.base import Editor, get_method, read_meta, refuse_foreign


def open_edit_set(
    path: str | os.PathLike,
    model: str | None = None,
    method: str | None = None,
    settings: dict | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Editor:
    """Load the model and the edit set saved at ``path``, or start an empty one there.

    Args:
        path: the edit-set directory. A save interrupted between its two renames is
            recovered (:func:`horen.editors.base.saved_dir`).
        model: the model (default: the one the edit set was made on, else the embedded one).
        method: the method of a new edit set (default ``horen``); for a saved one it must
            match (or be None).
        settings: the method's settings for a new edit set. A saved set keeps its own: any
            given here is an error, never silently dropped.
        device, dtype: where and how the model is loaded (:func:`horen.load_model`).

    Raises:
        ValueError: ``path`` holds another method's edits, settings were given for a saved
            set, ``path`` is unreadable, or the save comes from another model.
    """
    from .models import load_model

    meta = read_meta(path)
    if meta is not None:
        if method and method != meta["method"]:
            raise ValueError(f"{path} holds '{meta['method']}' edits, not '{method}'")
        if settings:
            raise ValueError(
                f"{path} is a saved edit set; its settings are fixed when it is made (it has "
                f"{sorted(k for k in meta['config'])}); start a new edit set to change "
                f"{sorted(settings)}"
            )
    if meta is None:
        refuse_foreign(path)  # before the model loads: the save would refuse it anyway
        cls = get_method(method or "horen")
        cls.config_class().replaced(settings or {}, cls.method)  # a misspelt setting: now
    name = model or (meta["model"]["name"] if meta else None)
    loaded, tokenizer = load_model(name, device=device, dtype=dtype)
    if meta is not None:
        return Editor.load(loaded, tokenizer, path)
    return cls(loaded, tokenizer, **(settings or {}))
