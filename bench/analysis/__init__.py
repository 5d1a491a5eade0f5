"""What a stored result says and how two builds differ: compare, the sequential statistics, the sampler that
measures until sure, the gate, change points and bisect."""
