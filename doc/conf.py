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
# custom.css: the sidebar title (the package name) stays whole and fits the sidebar.
html_static_path = ["_static"]
# A sidebar wide enough for that title in wide fonts too (Georgia, DejaVu Serif), where
# alabaster gives 220 px of a 940 px page (the title gets the width less 20 px).
html_theme_options = {"sidebar_width": "280px", "page_width": "1080px"}
exclude_patterns = ["_build"]
# No network at build time: intersphinx inventories are not fetched.
intersphinx_mapping: dict[str, tuple[str, None]] = {}
