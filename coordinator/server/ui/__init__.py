"""The web UI's building blocks: pure functions from stored data to safe HTML and SVG."""
