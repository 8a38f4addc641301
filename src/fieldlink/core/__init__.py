"""The pure core: values in, values out. No asyncio, no sockets, no clock reads
(``now`` is passed in).

An import-boundary test (tests/unit/test_boundaries.py) keeps it that way.
"""
