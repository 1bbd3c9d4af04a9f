"""`embdistill serve`: a local web page to search an embedded gallery with a photo.

:mod:`.app` is the FastAPI app, :mod:`.uploads` turns uploads into images or 4xx
messages, :mod:`.server` runs it with uvicorn; ``static/`` holds the page.
Needs the ``serve`` extra (fastapi, uvicorn, python-multipart); importing this
package does not, so the CLI lists the command without it.
"""
from __future__ import annotations

from embdistill.serve.server import LOCALHOST, run_server

__all__ = ["LOCALHOST", "run_server"]
