"""metaimprove's tests, one module per package module (tests/<subpackage>/test_<module>.py)."""
