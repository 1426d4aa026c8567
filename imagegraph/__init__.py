"""imagegraph: `make` for diskless boot images.

The core is importable: load a directory with `load_project`, make a plan with
`make_plan`, and run it with `run_plan`. The CLI only parses and renders.
"""

__version__ = "0.1.0"
