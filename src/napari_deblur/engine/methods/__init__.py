"""The restoration and analysis methods, one module per method."""
