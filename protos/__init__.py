"""The public wire contract: `nas/v1/*.proto` and the Python code generated from it."""
