"""The benchmark harness that regenerates the papers' tables (``retouch bench paper``, ``make paper-tables``).

- :mod:`~retouch.bench.harness`: cached rows of per-scene values, tables with bootstrap intervals, claims.
- :mod:`~retouch.bench.context`: one run's models (loaded lazily), world, cache and size.
- :mod:`~retouch.bench.pix2pix_zero`: pix2pix-zero Table 2 (A–E) plus zeroCon.
- :mod:`~retouch.bench.distill`: pix2pix-zero §4.5, the distilled translator against the diffusion edit.
- :mod:`~retouch.bench.pixels`: PIXELS against latent surgery and scaled noise, the strength sweep, Fig. 1.
- :mod:`~retouch.bench.portrait`: the portrait paper's Table 1.
- :mod:`~retouch.bench.decoder_splices`: the shipped autoencoder on latent splices (our targets, no paper's).
- :mod:`~retouch.bench.multitask`: the multitask paper's Tables 2–4 and Fig. 4 on the compositing benchmark.
- :mod:`~retouch.bench.paper`: the command: every table, then ``docs/paper_claims.md``.
- :mod:`~retouch.bench.figures`: labelled contact sheets.

The statistics live in :mod:`retouch.metrics.claims`.
"""
