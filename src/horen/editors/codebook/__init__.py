"""Codebook editors: the base model stays frozen; a codebook layer swapped in for W adds a
trained value when a prompt's query matches a stored key.

:mod:`.editor` holds the shared machinery (:class:`~.editor.CodebookEditor`), :mod:`.training`
the value training; :mod:`.horen` is HoReN and its ablations, :mod:`.entity` horen-entity,
:mod:`.grace` GRACE.
"""
