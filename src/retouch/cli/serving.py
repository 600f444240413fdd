"""``retouch serve``: the web app."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind; 0.0.0.0 exposes it to the network")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/app"),
              show_default=True, help="the only folder the app writes to: results, directions, upload cache")
@click.option("--max-upload-mb", type=click.FloatRange(0.01, 1024), default=10.0, show_default=True,
              help="largest upload accepted")
@click.option("--max-side", type=click.IntRange(16, 16384), default=1024, show_default=True,
              help="longest image side accepted, in pixels")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True,
              help="jobs computed at once; the rest wait in the queue")
@click.option("--model", "models", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="also offer this local diffusers folder, .safetensors file or multitask model folder (repeatable)")
def serve(host, port, output_dir, max_upload_mb, max_side, concurrency, models) -> None:
    """Start the web app: a tab per method, the shipped mini models, a request queue. Offline."""
    from retouch.app.server import serve as run_server

    run_server(output_dir, host=host, port=port, max_upload_mb=max_upload_mb, max_side=max_side,
               concurrency=concurrency, models=tuple(str(m) for m in models))
