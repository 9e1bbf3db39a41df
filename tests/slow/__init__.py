"""The long reliability checks, marked ``slow``: ``pytest -m slow`` runs them; the default run leaves them out."""
