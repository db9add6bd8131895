"""C++ and CUDA sources of sciml's operators (kernels/ in a source checkout), shipped as package data."""
