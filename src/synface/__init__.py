"""synface: synthetic face-recognition data from an identity-conditioned latent diffusion model."""

__version__ = "0.1.0"
