"""Image operations as qemu-img does them, one module per operation.

Each works on an image opened with :func:`~qcow2view.engine.open_image`
(writable where it changes the image, which takes QEMU's locks) and is built on
the engine's write primitives (``metadata_ops``, the writer's allocator, the
snapshot table writer).  Long operations take ``progress(done, total)``, which
may raise :class:`~qcow2view.engine.errors.CancelledError` to stop; a stopped
operation leaves a valid image.
"""
