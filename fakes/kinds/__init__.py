"""One module per fake kind, each registering a `FakeKind` with `aigi.fakes.registry.register_kind` (found
automatically: the registry imports every public module of this package on its first lookup)."""
