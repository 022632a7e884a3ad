"""raynas: distributed, asynchronous neural architecture search on PyTorch and Ray.

Its packages live in the repository's top-level folders and install under this root:
`raynas.common`, `raynas.search_spaces`, `raynas.param_server`, `raynas.workers`,
`raynas.controller` and `raynas.protos` (docs/architecture.md says what each owns).
"""

__version__ = "0.2.0"
