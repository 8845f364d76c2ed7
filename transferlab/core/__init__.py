"""What every layer uses: errors, the one atomic write, progress output, the cache home, registries."""
