"""Reading and writing other libraries' policy formats."""
