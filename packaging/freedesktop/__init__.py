"""The desktop entry, AppStream metainfo and MIME XML (see qcow2view.desktop)."""
