"""Frozen backbones behind one interface: registry, preprocessing, views, multi-layer pooling."""
