"""Collection: teacher runs on training tasks written as verified, resumable dataset shards."""
