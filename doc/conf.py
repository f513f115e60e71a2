"""Sphinx configuration for twisted_event_dispatcher."""

project = "twisted_event_dispatcher"
author = "twisted_event_dispatcher developers"
copyright = "public domain (Unlicense)"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
# No network at build time: intersphinx inventories are not fetched.
intersphinx_mapping: dict[str, tuple[str, None]] = {}
