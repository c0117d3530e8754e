"""Weight editors: they rewrite the model's parameters in place.

:mod:`.editor` keeps every edit's delta for rollback by replay (:class:`~.editor.WeightEditor`);
:mod:`.locate` holds ROME/MEMIT/AlphaEdit's shared keys and v* optimization; :mod:`.rome`,
:mod:`.memit`, :mod:`.alphaedit`, :mod:`.ft` (FT-L, FT-M), :mod:`.ultraedit` and :mod:`.unke`
the methods.
"""
