"""Synthetic training queries made from the corpus (the ``queries`` stage): title, ICT, generator."""
