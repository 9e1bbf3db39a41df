"""End-to-end tests across stages: bad inputs through the CLI, users' envs and MJCF, Ray, kill and resume."""
