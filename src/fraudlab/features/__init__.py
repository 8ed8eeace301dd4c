"""Point-in-time features: their names, the kernels, the whole-frame (batch), online and
partitioned paths that all run the same kernels."""
