"""I/O layer: shard specs, storage, tar files, reading, decoding, mask encoding, writers, records, schemas."""
