//! stylus-diffusion
