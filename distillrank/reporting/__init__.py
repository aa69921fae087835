"""Reports over a workspace: metrics tables and matplotlib plots (``distillrank report``)."""
