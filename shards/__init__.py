"""What one shard owns: its slices, checkpoint history, training loop and Ray actor."""
