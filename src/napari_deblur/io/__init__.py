"""Files: PSF and kernel files (readers, writers), image stacks on disk."""
