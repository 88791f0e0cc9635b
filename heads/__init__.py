"""Small detection heads on cached features: registry, configs, the fit loop, save/load."""
