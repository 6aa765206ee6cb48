"""The identity-conditioned latent diffusion model: first stage, latents, training, sampling."""
