"""Image operations as qemu-img does them, one module per operation.

Each works on an image opened with :func:`~qcow2view.engine.open_image`
(writable where it changes the image, which takes QEMU's locks) and is built on
the image's metadata store (``image.meta``: header fields by name, tables,
refcounts and the allocator, the snapshot table) and the helpers of
``metadata_ops``.  Long operations take ``progress(done, total)``, which
may raise :class:`~qcow2view.engine.errors.CancelledError` to stop; a stopped
operation leaves a valid image.
"""
