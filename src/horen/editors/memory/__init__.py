"""Side-memory editors: the base model stays frozen; a layer swapped in for W adds edits
from memories kept beside it (:mod:`.wise` WISE, :mod:`.memoir` MEMOIR,
:mod:`.repair` REPAIR)."""
