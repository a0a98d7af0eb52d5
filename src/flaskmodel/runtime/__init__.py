"""Model runtimes: a small protocol with swappable backends and a shipped fake."""
