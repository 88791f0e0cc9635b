"""One module per fake kind, each defining `KIND = pipeline.fakes.registry.FakeKind(...)` (found automatically)."""
