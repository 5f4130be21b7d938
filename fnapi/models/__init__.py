"""Models: architecture adapters (:mod:`.registry`), loading (:mod:`.loading`), tiny test models (:mod:`.tiny`)."""
