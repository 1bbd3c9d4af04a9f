"""`embdistill serve`: load the galleries, then run the page with uvicorn until Ctrl-C."""
from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from pathlib import Path

from embdistill.deploy.choices import DeployError

__all__ = ["LOCALHOST", "run_server"]

LOCALHOST = "127.0.0.1"


def run_server(
    gallery: str | Path,
    compare: str | Path | None = None,
    *,
    host: str = LOCALHOST,
    port: int = 8000,
    k: int = 8,
    max_k: int = 50,
    max_upload_mb: float = 10.0,
    model: str | Path | None = None,
    compare_model: str | Path | None = None,
    name: str | None = None,
    compare_name: str | None = None,
    threads: int | None = None,
    log_level: str = "warning",
    allow_other_space: bool = False,
    query_model: str | Path | None = None,
) -> int:
    """Serve until interrupted. Uploads are parsed in a private temporary folder, removed on exit.

    ``model`` / ``compare_model`` must embed into their gallery's space unless ``allow_other_space``.
    ``query_model`` (instead of ``compare``): a second column that searches ``gallery`` itself with
    that model, e.g. a student trained into the space of the teacher that embedded it, beside the
    teacher's own query.
    """
    try:
        import uvicorn

        from embdistill.serve.app import create_app, load_side
    except ImportError as err:
        raise DeployError(f"`embdistill serve` needs the web extra ({err.name} is missing): pip install 'embdistill[serve]'") from err
    if not 0 < port < 65536:
        raise DeployError(f"--port must be in 1..65535, got {port}")
    if max_upload_mb <= 0:
        raise DeployError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    if compare is not None and query_model is not None:
        raise DeployError("--compare and --query-model each add the page's second column: give one of them")
    sides = [load_side(gallery, name, model, threads, allow_other_space=allow_other_space)]
    if query_model is not None:
        sides.append(load_side(sides[0].gallery, compare_name, query_model, threads, allow_other_space=allow_other_space))
        if compare_name is None:
            sides[1].name = f"{sides[1].name} on {sides[0].name}'s gallery"
    if compare is not None:
        sides.append(load_side(compare, compare_name, compare_model, threads, allow_other_space=allow_other_space))
        if sides[0].name == sides[1].name:
            sides[1].name += " (compare)"
    app = create_app(sides, max_upload_bytes=round(max_upload_mb * 1e6), default_k=k, max_k=max_k)
    # Multipart parsing spools uploads over 1 MB to a temporary file: keep those in a
    # folder of this server's own, removed when it stops.
    private = Path(tempfile.mkdtemp(prefix="embdistill-serve-"))
    tempfile.tempdir = str(private)
    if host != LOCALHOST:
        print(f"embdistill serve: listening on {host}, not only this machine: anyone who reaches it can search", file=sys.stderr)
    for side in sides:
        print(f"{side.name}: {side.gallery.size} images in {side.gallery.path}, model {side.encoder.source}", flush=True)
        if side.pairing:
            print(side.pairing, flush=True)
    print(f"search page: http://{host}:{port}/  (Ctrl-C stops it)", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: with
    # these handlers that ends here, not by the signal's default action, so the folder goes.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(private, ignore_errors=True)
    print("search page stopped", flush=True)
    return 0


class _Stopped(Exception):
    """SIGINT or SIGTERM after uvicorn's graceful shutdown."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)
