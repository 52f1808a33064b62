"""Matcher modules that :func:`asmamba_hloc.register` puts on ``hloc.matchers.__path__``.

Each module here is imported by hloc as ``hloc.matchers.<name>`` (never import it directly: it needs hloc).
"""
