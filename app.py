"""Hugging Face Spaces entry point: build the studio and launch it (offline, embedded models)."""

from components import launch

if __name__ == "__main__":
    launch()
