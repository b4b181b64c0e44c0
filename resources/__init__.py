"""Icons and other data files, loaded with importlib.resources (see qcow2view.desktop)."""
