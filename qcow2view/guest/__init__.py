"""The guest disk's contents: partitions, filesystems and files, tied to guest bytes.

Qt-free, like the engine, and reads only through :meth:`Image.read`.  Layers
stack as dfVFS stacks them: image -> :mod:`source` (a file-like object) ->
:mod:`partitions` (our MBR/GPT parser) -> :mod:`probe` (blkid-style TYPE) ->
the filesystem readers (:mod:`fs_ext`, :mod:`fs_fat`, :mod:`fs_ntfs`,
:mod:`fs_xfs`, on the libyal bindings) and :mod:`lvm` -> :mod:`index` (guest
byte -> owner, host cluster -> owners), :mod:`changed` (changed files) and
:mod:`fields` (named fields of the tables and superblocks, for labelling bytes).
"""
