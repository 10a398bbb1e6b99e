"""Physics of blur: point-spread functions, convolution and Fourier helpers."""
