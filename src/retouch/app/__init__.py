"""The web app of ``retouch serve``: one Gradio page with a tab per method.

:mod:`retouch.app.jobs` holds what runs (limits, model cache, output folder, one function per tab) and
imports no UI library; :mod:`retouch.app.server` lays out the page and starts the server.
"""
