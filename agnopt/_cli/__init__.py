"""The command-line tools behind ``python -m agnopt <command>``.

``tour``, ``bench``, ``fitbench``, ``nist`` and ``tall-bench`` (see
``agnopt/__main__.py``), and the plots of the documentation's gallery. Nothing
here is imported by ``import agnopt``.
"""
