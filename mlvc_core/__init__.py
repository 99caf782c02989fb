"""mlvc_core: the plumbing of mlvc.

Content-addressed store, objects, refs, ingest/restore, gc, fsck and transfer. It never imports
``mlvc`` (the porcelain) and does no I/O at import.
"""
