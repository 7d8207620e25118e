import pipeline  # noqa: F401  (torch's allocator options, set before torch loads)
