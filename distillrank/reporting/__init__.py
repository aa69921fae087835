"""Reports over a workspace: metrics tables and matplotlib plots (``distillrank report``).

``collect`` finds experiments and reads their artifacts; ``deltas`` computes per-query differences;
``scorers`` scores sampled training pairs with the trained student (any student kind); ``plots`` draws
the PNGs; ``document`` renders Markdown and HTML; ``report.run`` writes the whole report.
"""
