"""First-stage retrieval of candidates and negative sampling (config group ``mining/``)."""
