"""Package data: shipped inside the installed package (see pyproject.toml)."""
