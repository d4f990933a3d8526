"""The HTTP surface: the Starlette app (app.py) and its routes (ingest.py, shelly.py, ops.py)."""
