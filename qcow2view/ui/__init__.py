"""Widgets: the main window and its panels.  Views use qcow2view.model, never the engine."""
