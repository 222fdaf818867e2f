"""Second-order unconstrained minimization (Newton, Newton-CG).

Layout: :mod:`.driver` (``minimize``: argument checks, method dispatch, the
result; the mathematics in its docstring), :mod:`.problem` (objective and
derivatives), :mod:`.newton`, :mod:`.newton_cg` (line-search truncated CG),
:mod:`.trust_region` (Steihaug-Toint CG), :mod:`.line_search`, and
:mod:`.common` (bookkeeping shared by the methods).
"""

from .driver import minimize

__all__ = ["minimize"]
