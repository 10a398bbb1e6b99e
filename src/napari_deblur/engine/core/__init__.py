"""Core of the engine: input checks, planes and stacks, jobs, tiling, devices, memory."""
